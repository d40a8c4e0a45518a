"""DICOM as archives hold it: every compressed transfer syntax, the photometric pipeline
(modality LUT, VOI LUT, window presets, MONOCHROME1) and the errors for a missing codec.

Files are real ones from pydicom's test data and pydicom-data (``download=False``: both
ship installed). Expected pixels come from pydicom itself (``ds.pixel_array``,
``apply_modality_lut``, ``apply_voi_lut``) or from the same image stored uncompressed; the
display range a VOI output is scaled from is computed by hand from the file's tags.
"""

from __future__ import annotations

import io
import shutil

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from conftest import run_config
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.pixels.decoders import JPEGLosslessSV1Decoder
from pydicom.uid import (
    UID,
    JPEGBaseline8Bit,
    JPEGLossless,
    SecondaryCaptureImageStorage,
)
from pydicom.uid import UncompressedTransferSyntaxes as NATIVE_SYNTAXES

from medfl.config import parse_run_config
from medfl.data.image_formats import decode
from medfl.data.images import ImagePreprocessing, load_image, load_image_bytes, read_pixels
from medfl.data.manifest import load_manifest_site, read_manifest
from medfl.errors import ConfigError, DataError
from medfl.tasks.imaging import image_preprocessing


def _file(name: str) -> str:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not installed (pydicom-data is a test dependency)"
    return str(path)


def _reference(ds: Dataset) -> np.ndarray:
    """pydicom's own decoding and modality LUT: what MedFL must read."""
    return apply_modality_lut(ds.pixel_array, ds).astype(np.float64)


def _dicom(frame: bytes, *, syntax: str, rows: int, columns: int, bits: int = 8) -> bytes:
    """A minimal single-frame MONOCHROME2 file holding ``frame`` under ``syntax``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.826.0.1.3680043.8.498.1")
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = frame if UID(syntax) in NATIVE_SYNTAXES else encapsulate([frame])
    out = io.BytesIO()
    # A private syntax's encoding is the writer's choice: explicit VR little endian.
    encoding = {} if UID(syntax).is_transfer_syntax else {"implicit_vr": False,
                                                          "little_endian": True}
    ds.save_as(out, enforce_file_format=True, **encoding)
    return out.getvalue()


def _jpeg_baseline() -> bytes:
    """8-bit greyscale JPEG baseline, encoded by Pillow (no real greyscale one ships)."""
    gradient = (np.add.outer(np.arange(40), np.arange(48)) * 3 % 256).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(gradient, mode="L").save(buf, format="JPEG", quality=90)
    return _dicom(buf.getvalue(), syntax=JPEGBaseline8Bit, rows=40, columns=48)


def _jpeg_lossless_process14() -> bytes:
    """JPEG-LL.dcm's bit stream under the general process-14 UID (.57): selection value 1
    is one of process 14's predictors, so the same stream is valid there."""
    ds = pydicom.dcmread(_file("JPEG-LL.dcm"))
    ds.file_meta.TransferSyntaxUID = JPEGLossless
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


# (file or builder, expected transfer syntax UID)
SYNTAXES = [
    (_jpeg_baseline, "1.2.840.10008.1.2.4.50"),                 # JPEG baseline (process 1)
    ("JPGExtended.dcm", "1.2.840.10008.1.2.4.51"),               # JPEG extended, 12-bit
    (_jpeg_lossless_process14, "1.2.840.10008.1.2.4.57"),       # JPEG lossless, process 14
    ("JPEG-LL.dcm", "1.2.840.10008.1.2.4.70"),                   # process 14 SV1 (pydicom-data)
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", "1.2.840.10008.1.2.4.70"),
    ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80"),  # JPEG-LS lossless
    ("JPEGLSNearLossless_16.dcm", "1.2.840.10008.1.2.4.81"),     # JPEG-LS near-lossless
    ("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90"),     # JPEG 2000 lossless
    ("693_J2KR.dcm", "1.2.840.10008.1.2.4.90"),                  # ... with a rescale (CT)
    ("JPEG2000.dcm", "1.2.840.10008.1.2.4.91"),                  # JPEG 2000 lossy
    ("693_J2KI.dcm", "1.2.840.10008.1.2.4.91"),
    ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5"),                 # RLE lossless
    ("image_dfl.dcm", "1.2.840.10008.1.2.1.99"),                 # deflated explicit VR
    ("MR_small_bigendian.dcm", "1.2.840.10008.1.2.2"),           # explicit VR big endian
]


def _bytes(source) -> bytes:
    if callable(source):
        return source()
    with open(_file(source), "rb") as f:
        return f.read()


def _id(source) -> str:
    return source.__name__.strip("_") if callable(source) else source


@pytest.mark.parametrize("source, syntax", SYNTAXES, ids=[_id(s) for s, _ in SYNTAXES])
def test_every_transfer_syntax_decodes_as_pydicom_decodes_it(source, syntax):
    data = _bytes(source)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.file_meta.TransferSyntaxUID == syntax  # the file really is of this syntax
    pixels, meta = decode(data)
    assert pixels.shape == (ds.Rows, ds.Columns) and pixels.dtype == np.float64
    np.testing.assert_array_equal(pixels, _reference(ds))
    assert meta["format"] == "dicom"


@pytest.mark.parametrize("compressed, uncompressed", [
    ("MR_small_RLE.dcm", "MR_small.dcm"),
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
    ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
    ("693_J2KR.dcm", "693_UNCR.dcm"),
])
def test_lossless_syntaxes_equal_the_same_image_stored_uncompressed(compressed, uncompressed):
    np.testing.assert_array_equal(read_pixels(_file(compressed))[0],
                                  read_pixels(_file(uncompressed))[0])


def test_process_14_file_from_an_archive_is_no_longer_called_corrupt():
    # The file of the issue: 1024 x 256, 16-bit signed, no rescale.
    pixels, _ = read_pixels(_file("JPEG-LL.dcm"))
    assert pixels.shape == (1024, 256)
    np.testing.assert_array_equal(pixels, pydicom.dcmread(_file("JPEG-LL.dcm")).pixel_array)


# ------------------------------------------------------------------ codec errors


def test_a_syntax_pydicom_cannot_decode_is_named_not_called_corrupt():
    data = _dicom(bytes(16 * 16), syntax="1.2.840.10008.1.2.4.100", rows=16, columns=16)
    with pytest.raises(DataError) as err:
        decode(data)
    message = str(err.value)
    assert "MPEG2 Main Profile / Main Level (1.2.840.10008.1.2.4.100)" in message
    assert "pydicom has no decoder" in message and "dcmdjpeg" in message
    assert "corrupt" not in message


def test_an_unknown_private_syntax_is_named_by_its_uid():
    data = _dicom(bytes(16 * 16), syntax="1.2.826.0.1.3680043.2.1143.4", rows=16, columns=16)
    with pytest.raises(DataError, match=r"an unknown transfer syntax "
                                        r"\(1\.2\.826\.0\.1\.3680043\.2\.1143\.4\)") as err:
        decode(data)
    assert "corrupt" not in str(err.value)


@pytest.fixture
def without_pylibjpeg_for_sv1():
    """pydicom's SV1 decoder as on a machine without pylibjpeg (GDCM is absent here too)."""
    JPEGLosslessSV1Decoder.remove_plugin("pylibjpeg")
    try:
        yield
    finally:
        JPEGLosslessSV1Decoder.add_plugin(
            "pylibjpeg", ("pydicom.pixels.decoders.pylibjpeg", "_decode_frame"))


def test_a_missing_plugin_names_the_syntax_and_the_packages(without_pylibjpeg_for_sv1):
    with pytest.raises(DataError) as err:
        read_pixels(_file("JPEG-LL.dcm"))
    message = str(err.value)
    assert ("JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection "
            "Value 1]) (1.2.840.10008.1.2.4.70)") in message
    assert "pylibjpeg-libjpeg" in message and "gdcm" in message
    assert "corrupt" not in message


def test_a_non_conformant_jpeg_stream_is_corrupt_and_names_its_syntax():
    # pydicom's JPEG-lossy.dcm: an invalid spectral-selection end in its scan header, which
    # libjpeg refuses (JPGExtended.dcm is its fixed version, decoded above).
    with pytest.raises(DataError, match=r"not a readable DICOM \(JPEG Extended \(Process 2 and "
                                        r"4\) \(1\.2\.840\.10008\.1\.2\.4\.51\)\) file "
                                        r"\(truncated or corrupt; RuntimeError\)"):
        read_pixels(_file("JPEG-lossy.dcm"))


def test_a_truncated_compressed_file_is_still_truncated_or_corrupt(tmp_path):
    path = tmp_path / "patient_1234.dcm"
    data = _bytes("JPEG-LL.dcm")
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DataError, match="truncated or corrupt") as err:
        read_pixels(path)
    assert "patient_1234" not in str(err.value) and str(tmp_path) not in str(err.value)


# ------------------------------------------------------------------ photometric pipeline

def _prep(ds, **kw) -> ImagePreprocessing:
    assert ds.Rows == ds.Columns  # a square image at its own size: the resize is the identity
    return ImagePreprocessing(size=int(ds.Rows), intensity="window", **kw)


def test_modality_lut_sequence_is_applied_as_pydicom_applies_it():
    path = _file("mlut_18.dcm")
    ds = pydicom.dcmread(path)
    assert "ModalityLUTSequence" in ds
    np.testing.assert_array_equal(read_pixels(path)[0], _reference(ds))


def test_voi_lut_sequence_is_applied_as_pydicom_applies_it():
    path = _file("vlut_04.dcm")
    ds = pydicom.dcmread(path)
    lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
    expected = (apply_voi_lut(ds.pixel_array, ds) - lut.min()) / (lut.max() - lut.min())
    out = load_image(path, _prep(ds))
    np.testing.assert_allclose(out[0], expected, atol=1e-6)


def test_the_files_window_follows_the_standard_linear_function():
    path = _file("MR_small.dcm")  # 600 / 1600, signed 16 bits stored, no rescale
    ds = pydicom.dcmread(path)
    low, high = -(2 ** 15), 2 ** 15 - 1  # PS3.3 C.11.2.1.2: the output range, by hand
    expected = (apply_voi_lut(ds.pixel_array, ds) - low) / (high - low)
    np.testing.assert_allclose(load_image(path, _prep(ds))[0], expected, atol=1e-6)


def test_a_sigmoid_voi_function_is_honoured():
    ds = pydicom.dcmread(_file("MR_small.dcm"))
    ds.VOILUTFunction = "SIGMOID"
    buf = io.BytesIO()
    ds.save_as(buf)
    low, high = -(2 ** 15), 2 ** 15 - 1
    expected = (apply_voi_lut(ds.pixel_array, ds) - low) / (high - low)
    out = load_image_bytes(buf.getvalue(), _prep(ds))
    np.testing.assert_allclose(out[0], expected, atol=1e-6)
    assert not np.allclose(out[0], load_image(_file("MR_small.dcm"), _prep(ds))[0], atol=1e-3)


@pytest.mark.parametrize("preset", [0, 1])
def test_window_presets_pick_the_files_window_by_index(preset):
    path = _file("MR-SIEMENS-DICOM-WithOverlays.dcm")  # WINDOW1 450/790, WINDOW2 200/443
    ds = pydicom.dcmread(path)
    assert list(ds.WindowCenterWidthExplanation) == ["WINDOW1", "WINDOW2"]
    low, high = 0, 2 ** int(ds.BitsStored) - 1  # unsigned, no rescale
    expected = (apply_voi_lut(ds.pixel_array, ds, index=preset) - low) / (high - low)
    out = load_image(path, _prep(ds, window_preset=preset))
    np.testing.assert_allclose(out[0], expected, atol=1e-6)


def test_a_preset_the_file_lacks_is_refused_with_the_count():
    with pytest.raises(DataError, match=r"holds 1 display preset\(s\).*preset 1 was asked"):
        load_image(_file("MR_small.dcm"), ImagePreprocessing(size=64, intensity="window",
                                                              window_preset=1))


@pytest.mark.parametrize("kw", [{"window_preset": -1}, {"window_preset": 1.5},
                                {"window_preset": 1, "window_center": 40, "window_width": 400}])
def test_a_bad_window_preset_is_a_config_error(kw):
    with pytest.raises(ConfigError, match="window_preset"):
        ImagePreprocessing(size=32, intensity="window", **kw)


def test_a_window_preset_needs_intensity_window():
    with pytest.raises(ConfigError, match="window_preset"):
        ImagePreprocessing(size=32, intensity="minmax", window_preset=1)


def test_monochrome1_radiograph_is_inverted_after_rescale_and_window():
    # A real CR: MONOCHROME1, slope 0.684 and intercept 200, window 1600 / 2800, 12 bits.
    path = _file("6154")  # pydicom's dicomdirtests/77654033/CR1/6154
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    low, high = intercept, (2 ** int(ds.BitsStored) - 1) * slope + intercept  # by hand
    displayed = (apply_voi_lut(_reference(ds), ds) - low) / (high - low)
    out = load_image(path, _prep(ds))
    np.testing.assert_allclose(out[0], 1.0 - displayed, atol=1e-6)


def test_monochrome1_jpeg2000_radiograph_is_inverted_in_minmax():
    path = _file("RG3_J2KI.dcm")  # a real CR, MONOCHROME1, JPEG 2000 lossy, 1760 x 1760
    ref = _reference(pydicom.dcmread(path))
    expected = 1.0 - (ref - ref.min()) / (ref.max() - ref.min())
    pixels, meta = read_pixels(path)
    np.testing.assert_array_equal(pixels, ref)
    assert meta["invert"] is True
    small = load_image(path, ImagePreprocessing(size=32, intensity="minmax"))
    resized = torch.nn.functional.interpolate(
        torch.from_numpy(expected.astype(np.float32))[None, None], size=(32, 32),
        mode="bilinear", align_corners=False, antialias=True)[0].numpy()
    np.testing.assert_allclose(small, resized, atol=1e-5)


def test_the_run_configs_window_preset_reaches_the_bundles_preprocessing():
    cfg = parse_run_config(run_config(task="image-classification", model__name="resnet",
                                      data__intensity="window", data__window_preset=1))
    assert image_preprocessing(cfg).to_dict()["window_preset"] == 1


def test_a_manifest_of_compressed_dicom_files_trains_on_pydicoms_pixels(tmp_path):
    # The same MR slice stored four ways (lossless), each row's file window applied.
    names = ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
             "MR_small_jp2klossless.dcm"]
    rows = []
    for i, name in enumerate(names * 2):
        shutil.copy(_file(name), tmp_path / f"{i}.dcm")
        rows.append({"path": f"{i}.dcm", "label": ("absent", "present")[i % 2], "site": "a",
                     "split": "train" if i < len(names) else "test"})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    manifest = read_manifest(tmp_path / "manifest.csv", task="image-classification")
    data = load_manifest_site(manifest, "a", prep=ImagePreprocessing(size=64, intensity="window"),
                              test_fraction=0.3, seed=0)

    ds = pydicom.dcmread(_file("MR_small.dcm"))
    low, high = -(2 ** 15), 2 ** 15 - 1  # 16 signed bits stored, no rescale
    expected = (apply_voi_lut(ds.pixel_array, ds) - low) / (high - low)
    assert data.x_train.shape == data.x_test.shape == (4, 1, 64, 64)
    for x in np.concatenate([data.x_train, data.x_test]):
        np.testing.assert_allclose(x[0], expected, atol=1e-6)


def test_a_palette_colour_image_is_refused_not_read_as_intensities():
    # One sample per pixel, but each is an index into a colour table (pydicom's test data).
    with pytest.raises(DataError, match="Photometric Interpretation is PALETTE COLOR; MedFL "
                                        "reads grayscale images"):
        read_pixels(_file("examples_palette.dcm"))
