"""Reading PNG/JPEG/DICOM/NIfTI images and the bundle's image preprocessing.

Expected values come from pydicom's own pixel array and tags, nibabel/Pillow writing the
file, numpy arithmetic by hand, and torch's interpolate as the reference for resizing.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from medfl.data import image_formats
from medfl.data.images import (
    ImagePreprocessing,
    load_image,
    load_image_bytes,
    load_mask,
    read_pixels,
)
from medfl.errors import ConfigError, DataError

CT = get_testdata_file("CT_small.dcm", download=False)  # 128x128, slope 1, intercept -1024
MR = get_testdata_file("MR_small.dcm", download=False)  # 64x64, window 600/1600
RTDOSE = get_testdata_file("rtdose.dcm", download=False)  # 15 frames
RGB_DICOM = get_testdata_file("SC_rgb_small_odd.dcm", download=False)


def _png(path, array):
    Image.fromarray(array).save(path, format="PNG")
    return path


def _assert_private(message: str, tmp_path) -> None:
    assert str(tmp_path) not in message
    assert "tmp" not in message.lower()


# --------------------------------------------------------------------------- DICOM


def test_dicom_ct_is_read_in_hounsfield_units():
    ds = pydicom.dcmread(CT)
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
    expected = ds.pixel_array.astype(np.float64) * 1.0 - 1024.0
    pixels, meta = read_pixels(CT)
    assert pixels.dtype == np.float64
    np.testing.assert_array_equal(pixels, expected)
    assert meta["format"] == "dicom" and meta["window_center"] is None


def test_dicom_window_from_the_files_tags():
    # WindowCenter 600, WindowWidth 1600, LINEAR (the default VOI LUT Function): PS3.3
    # C.11.2.1.2.1 by hand, onto the output range of 16 signed bits, scaled to [0, 1].
    arr = pydicom.dcmread(MR).pixel_array.astype(np.float64)
    center, width = 600 - 0.5, 1600 - 1
    expected = np.clip((arr - center) / width + 0.5, 0.0, 1.0)
    out = load_image(MR, ImagePreprocessing(size=64, intensity="window"))
    assert out.shape == (1, 64, 64) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], expected, atol=1e-6)


def test_dicom_explicit_window_is_in_hounsfield_units():
    hu = pydicom.dcmread(CT).pixel_array.astype(np.float64) - 1024.0
    expected = (np.clip(hu, -160.0, 240.0) + 160.0) / 400.0  # soft tissue: 40 / 400 HU
    prep = ImagePreprocessing(size=128, intensity="window", window_center=40, window_width=400)
    np.testing.assert_allclose(load_image(CT, prep)[0], expected, atol=1e-6)


def test_file_window_needs_the_tags():
    with pytest.raises(DataError, match="WindowCenter/WindowWidth tags, which this file lacks"):
        load_image(CT, ImagePreprocessing(size=64, intensity="window"))


def test_monochrome1_is_inverted_after_scaling(tmp_path):
    ds = pydicom.dcmread(CT)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "inverted.dcm")
    prep = ImagePreprocessing(size=128, intensity="minmax")
    hu = ds.pixel_array.astype(np.float64) - 1024.0
    expected = 1.0 - (hu - hu.min()) / (hu.max() - hu.min())
    np.testing.assert_allclose(load_image(tmp_path / "inverted.dcm", prep)[0], expected,
                               atol=1e-6)


def test_multiframe_dicom_is_refused():
    with pytest.raises(DataError, match="has 15 frames; MedFL reads 2-D single-frame images; "
                                        "export one frame per file"):
        read_pixels(RTDOSE)


def test_colour_dicom_is_refused():
    with pytest.raises(DataError, match="3 colour channels"):
        read_pixels(RGB_DICOM)


def test_truncated_dicom_is_refused_without_its_path(tmp_path):
    path = tmp_path / "patient_1234.dcm"
    with open(CT, "rb") as f:
        path.write_bytes(f.read()[:600])
    with pytest.raises(DataError, match="not a readable DICOM") as err:
        load_image(path, ImagePreprocessing(size=32, intensity="minmax"))
    _assert_private(str(err.value), tmp_path)
    assert "patient_1234" not in str(err.value)


@pytest.mark.parametrize("dicm", [False, True])
def test_random_bytes_are_refused_without_their_path(tmp_path, dicm):
    data = bytearray(np.random.default_rng(0).bytes(2000))
    if dicm:  # a DICOM preamble followed by garbage reaches pydicom, whose error is wrapped
        data[128:132] = b"DICM"
    path = tmp_path / "scan.dcm"
    path.write_bytes(bytes(data))
    match = "not a readable DICOM" if dicm else "unrecognised image format"
    with pytest.raises(DataError, match=match) as err:
        read_pixels(path)
    _assert_private(str(err.value), tmp_path)


def test_missing_file_is_refused_without_its_path(tmp_path):
    with pytest.raises(DataError, match=r"cannot read image file \(FileNotFoundError\)") as err:
        read_pixels(tmp_path / "absent.png")
    _assert_private(str(err.value), tmp_path)


# --------------------------------------------------------------------------- NIfTI


@pytest.mark.parametrize("name", ["slice.nii", "slice.nii.gz"])
def test_nifti_2d_round_trip(tmp_path, name):
    arr = np.random.default_rng(1).normal(size=(20, 30))
    nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / name)
    pixels, meta = read_pixels(tmp_path / name)
    assert meta["format"] == "nifti"
    np.testing.assert_array_equal(pixels, arr)


def test_nifti_single_slice_volume_is_a_2d_image(tmp_path):
    arr = np.arange(12.0).reshape(3, 4, 1)
    nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / "slice.nii.gz")
    np.testing.assert_array_equal(read_pixels(tmp_path / "slice.nii.gz")[0], arr[:, :, 0])


def test_nifti_volume_is_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 5)), np.eye(4)), tmp_path / "vol.nii.gz")
    with pytest.raises(DataError, match=r"shape \(8, 8, 5\); MedFL reads 2-D images"):
        read_pixels(tmp_path / "vol.nii.gz")


def test_nifti_with_nan_is_refused(tmp_path):
    arr = np.zeros((6, 6))
    arr[2, 3] = np.nan
    nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / "nan.nii")
    with pytest.raises(DataError, match=r"NIfTI image contains non-finite values"):
        load_image(tmp_path / "nan.nii", ImagePreprocessing(size=8, intensity="minmax"))


def test_gzip_inflation_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(image_formats, "_MAX_NIFTI_BYTES", 1000)  # stands in for 512 MiB
    nib.save(nib.Nifti1Image(np.zeros((40, 40)), np.eye(4)), tmp_path / "big.nii.gz")
    with pytest.raises(DataError, match="decompresses to more than"):
        read_pixels(tmp_path / "big.nii.gz")


# --------------------------------------------------------------------------- PNG / JPEG


def test_png_8bit_and_minmax(tmp_path):
    arr = np.random.default_rng(2).integers(0, 256, size=(16, 16), dtype=np.uint8)
    _png(tmp_path / "a.png", arr)
    pixels, meta = read_pixels(tmp_path / "a.png")
    np.testing.assert_array_equal(pixels, arr)
    assert meta == {"format": "png", "invert": False, "window_center": None,
                    "window_width": None, "voi": None}
    a = arr.astype(np.float64)
    expected = (a - a.min()) / (a.max() - a.min())
    out = load_image(tmp_path / "a.png", ImagePreprocessing(size=16, intensity="minmax"))
    np.testing.assert_allclose(out[0], expected, atol=1e-6)


def test_non_square_image_becomes_square(tmp_path):
    _png(tmp_path / "wide.png", np.arange(16 * 24, dtype=np.uint16).reshape(16, 24))
    out = load_image(tmp_path / "wide.png", ImagePreprocessing(size=12, intensity="minmax"))
    assert out.shape == (1, 12, 12) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_png_16bit_keeps_its_range(tmp_path):
    arr = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    _png(tmp_path / "a.png", arr)
    pixels, _ = read_pixels(tmp_path / "a.png")
    np.testing.assert_array_equal(pixels, arr)
    assert pixels.max() == 63000


def test_png_detected_by_content_not_extension(tmp_path):
    arr = np.full((8, 8), 9, dtype=np.uint8)
    _png(tmp_path / "image.dcm", arr)
    pixels, meta = read_pixels(tmp_path / "image.dcm")
    assert meta["format"] == "png"
    np.testing.assert_array_equal(pixels, arr)


def test_rgb_png_with_equal_channels_is_grayscale(tmp_path):
    gray = np.random.default_rng(3).integers(0, 256, size=(10, 10), dtype=np.uint8)
    _png(tmp_path / "rgba.png", np.stack([gray, gray, gray, np.full_like(gray, 255)], axis=-1))
    np.testing.assert_array_equal(read_pixels(tmp_path / "rgba.png")[0], gray)


def test_colour_png_is_refused(tmp_path):
    rgb = np.zeros((10, 10, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    _png(tmp_path / "colour.png", rgb)
    with pytest.raises(DataError, match="has 3 colour channels; the model expects 1 grayscale "
                                        "channel") as err:
        read_pixels(tmp_path / "colour.png")
    _assert_private(str(err.value), tmp_path)


def test_grayscale_jpeg_is_read(tmp_path):
    Image.fromarray(np.full((12, 20), 100, dtype=np.uint8)).save(tmp_path / "a.jpg", "JPEG")
    pixels, meta = read_pixels(tmp_path / "a.jpg")
    assert meta["format"] == "jpeg" and pixels.shape == (12, 20)
    np.testing.assert_allclose(pixels, 100, atol=2)  # lossy, but a flat image stays flat


# --------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("intensity", ["minmax", "zscore"])
def test_constant_image_gives_zeros_not_nan(tmp_path, intensity):
    _png(tmp_path / "flat.png", np.full((20, 20), 77, dtype=np.uint8))
    out = load_image(tmp_path / "flat.png", ImagePreprocessing(size=8, intensity=intensity))
    np.testing.assert_array_equal(out, np.zeros((1, 8, 8), dtype=np.float32))


def test_zscore_has_zero_mean_unit_variance(tmp_path):
    arr = np.random.default_rng(4).integers(0, 256, size=(16, 16), dtype=np.uint8)
    _png(tmp_path / "a.png", arr)
    out = load_image(tmp_path / "a.png", ImagePreprocessing(size=16, intensity="zscore"))
    a = arr.astype(np.float64)
    np.testing.assert_allclose(out[0], (a - a.mean()) / a.std(), atol=1e-5)


def test_upsampling_is_bilinear_with_half_pixel_centres(tmp_path):
    arr = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    _png(tmp_path / "tiny.png", arr)
    out = load_image(tmp_path / "tiny.png", ImagePreprocessing(size=8, intensity="minmax"))
    reference = torch.nn.functional.interpolate(
        torch.tensor(arr / 255.0, dtype=torch.float32)[None, None], size=(8, 8),
        mode="bilinear", align_corners=False,
    )[0].numpy()
    np.testing.assert_allclose(out, reference, atol=1e-6)


def test_downsampling_matches_pillows_bilinear_resize(tmp_path):
    arr = np.random.default_rng(5).integers(0, 65536, size=(100, 60), dtype=np.uint16)
    _png(tmp_path / "a.png", arr)
    a = arr.astype(np.float64)
    scaled = ((a - a.min()) / (a.max() - a.min())).astype(np.float32)
    reference = Image.fromarray(scaled, mode="F").resize((32, 32), Image.Resampling.BILINEAR)
    out = load_image(tmp_path / "a.png", ImagePreprocessing(size=32, intensity="minmax"))
    np.testing.assert_allclose(out[0], np.asarray(reference), atol=1e-5)


def test_downsampling_is_anti_aliased(tmp_path):
    # A one-pixel checkerboard sampled without a low-pass filter aliases to a pattern;
    # filtered, it averages towards mid-grey.
    checker = ((np.indices((96, 96)).sum(axis=0) % 2) * 255).astype(np.uint8)
    _png(tmp_path / "checker.png", checker)
    out = load_image(tmp_path / "checker.png", ImagePreprocessing(size=20, intensity="minmax"))
    assert out.shape == (1, 20, 20) and out.dtype == np.float32
    assert abs(out.mean() - 0.5) < 0.05 and out.std() < 0.1


@pytest.mark.parametrize("kind", ["png", "dicom", "nifti"])
def test_bytes_and_path_give_the_same_array(tmp_path, kind):
    if kind == "png":
        path = _png(tmp_path / "a.png", np.arange(100, dtype=np.uint8).reshape(10, 10))
    elif kind == "nifti":
        path = tmp_path / "a.nii.gz"
        nib.save(nib.Nifti1Image(np.arange(100.0).reshape(10, 10), np.eye(4)), path)
    else:
        path = CT
    prep = ImagePreprocessing(size=32, intensity="zscore")
    with open(path, "rb") as f:
        from_bytes = load_image_bytes(f.read(), prep)
    np.testing.assert_array_equal(from_bytes, load_image(path, prep))


# --------------------------------------------------------------------------- masks


def test_mask_0_255_is_binarised_and_resized_by_nearest(tmp_path):
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[4:12, 2:10] = 255
    _png(tmp_path / "m.png", mask)
    same = load_mask(tmp_path / "m.png", 16)
    np.testing.assert_array_equal(same, (mask[None] / 255).astype(np.float32))
    small = load_mask(tmp_path / "m.png", 8)
    assert small.shape == (1, 8, 8) and small.dtype == np.float32
    np.testing.assert_array_equal(small[0], mask[::2, ::2] / 255)  # nearest: pixel centres


def test_nifti_mask_0_1(tmp_path):
    mask = np.eye(12)
    nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / "m.nii.gz")
    np.testing.assert_array_equal(load_mask(tmp_path / "m.nii.gz", 12)[0], mask)


def test_mask_with_other_values_is_refused(tmp_path):
    _png(tmp_path / "m.png", np.array([[0, 7], [7, 0]], dtype=np.uint8))
    with pytest.raises(DataError, match=r"only \{0, 1\} or only \{0, 255\}") as err:
        load_mask(tmp_path / "m.png", 8)
    _assert_private(str(err.value), tmp_path)


def test_jpeg_mask_is_refused(tmp_path):
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "m.jpg", "JPEG")
    with pytest.raises(DataError, match="mask must be a PNG or NIfTI"):
        load_mask(tmp_path / "m.jpg", 8)


# --------------------------------------------------------------------------- config


def test_preprocessing_round_trips_through_json():
    prep = ImagePreprocessing(size=64, intensity="window", window_center=40, window_width=400)
    again = ImagePreprocessing.from_dict(json.loads(json.dumps(prep.to_dict())))
    assert again == prep
    assert prep.to_dict() == {"size": 64, "intensity": "window", "window_center": 40.0,
                              "window_width": 400.0, "window_preset": 0}


def test_a_bundle_written_before_window_presets_still_loads():
    old = {"size": 64, "intensity": "window", "window_center": 0.0, "window_width": 0.0}
    assert ImagePreprocessing.from_dict(old).window_preset == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": 0, "intensity": "minmax"}, r"size must be an integer in \[8, 2048\]"),
        ({"size": 64.0, "intensity": "minmax"}, "size must be an integer"),
        ({"size": 64, "intensity": "zscor"}, "did you mean 'zscore'"),
        ({"size": 64, "intensity": "window", "window_width": -1.0}, "window_width must be >= 0"),
        ({"size": 64, "intensity": "minmax", "window_center": 40.0}, "apply only to intensity"),
        ({"size": 64, "intensity": "window", "window_center": 40.0}, "window_width must be > 0"),
    ],
)
def test_invalid_preprocessing_is_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ImagePreprocessing(**kwargs)


def test_from_dict_rejects_unknown_and_missing_keys():
    with pytest.raises(ConfigError, match=r"unknown keys \['resize'\]; valid keys are"):
        ImagePreprocessing.from_dict({"size": 64, "intensity": "minmax", "resize": 1})
    with pytest.raises(ConfigError, match=r"missing keys \['intensity'\]"):
        ImagePreprocessing.from_dict({"size": 64})


def test_an_image_too_large_is_refused_from_its_header_before_decoding():
    # 4100 x 4100 zeros compress to a few kB but would be 134 MB as float64
    import io

    from PIL import Image as PILImage

    from medfl.data.images import MAX_PIXELS, ImagePreprocessing, load_image_bytes

    buf = io.BytesIO()
    PILImage.new("L", (4100, 4100)).save(buf, format="PNG")
    assert len(buf.getvalue()) < 100_000 and 4100 * 4100 > MAX_PIXELS
    with pytest.raises(DataError, match="4100 x 4100 pixels"):
        load_image_bytes(buf.getvalue(), ImagePreprocessing(size=32, intensity="minmax"))
