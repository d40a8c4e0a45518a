"""Decode one 2-D medical image (PNG, JPEG, DICOM, NIfTI) into its pixels, per format.

The format is detected from the file's magic bytes, never from its name. Every reader
checks the image's size from its header before decoding the pixels.

Privacy: a ``DataError`` message may leave the hospital, so none of them quotes a file
path, a file name, a DICOM tag value about the patient or a pixel value. Third-party
exceptions are replaced (``from None``) because pydicom, Pillow and nibabel messages can
quote paths. Callers prefix the manifest line.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut

from medfl.data.dicom import DicomVoi, check_decodable, syntax_label
from medfl.errors import DataError

__all__ = ["FORMAT_NAMES", "MAX_PIXELS", "VALID_FORMATS", "decode", "detect_format",
           "read_bytes", "read_pixels"]

VALID_FORMATS = "PNG, JPEG, DICOM (Part 10, with 'DICM' at byte 128) or NIfTI (.nii/.nii.gz)"
#: A detected format's display name.
FORMAT_NAMES = {"png": "PNG", "jpeg": "JPEG", "dicom": "DICOM", "nifti": "NIfTI"}

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8"
_GZIP_MAGIC = b"\x1f\x8b"
_GRAY_MODES = ("1", "L", "I;16", "I;16L", "I;16B", "I", "F")
_NIFTI_HEADER_SIZES = (348, 540)
_GRAY_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")
_KNOWN_PHOTOMETRIC = ("PALETTE COLOR", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT",
                      "YBR_PARTIAL_420", "XYB")
_MAX_NIFTI_BYTES = 512 << 20  # a 2-D slice is far smaller: 8192 x 8192 float64
#: Largest image read (checked from the header, before the pixels are decoded): a small
#: compressed upload can otherwise expand to gigabytes once converted to float64.
MAX_PIXELS = 4096 * 4096


def _check_size(kind: str, height: int, width: int) -> None:
    if height * width > MAX_PIXELS:
        raise DataError(f"{kind} image is {height} x {width} pixels; MedFL reads images of at "
                        f"most {MAX_PIXELS} pixels (e.g. 4096 x 4096): downsample it first")


@contextmanager
def _decoding(kind: str) -> Iterator[None]:
    """Replace a library's exception (whose text may quote a path) by a plain DataError."""
    try:
        yield
    except DataError:
        raise
    except Exception as exc:  # any decoder failure means an unreadable file
        raise DataError(f"not a readable {kind} file (truncated or corrupt; "
                        f"{type(exc).__name__})") from None


def detect_format(data: bytes) -> str:
    """``png``, ``jpeg``, ``dicom`` or ``nifti``, from the magic bytes; else ``DataError``."""
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    if data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(_GZIP_MAGIC) or _nifti_header_size(data) in _NIFTI_HEADER_SIZES:
        return "nifti"
    raise DataError(f"unrecognised image format; valid formats are {VALID_FORMATS}")


def _nifti_header_size(data: bytes) -> int:
    if len(data) < 4:
        return 0
    little, big = int.from_bytes(data[:4], "little"), int.from_bytes(data[:4], "big")
    return little if little in _NIFTI_HEADER_SIZES else big


def _check_dicom_header(ds: pydicom.Dataset) -> None:
    """Refuse what MedFL does not read, from the header alone (before decoding pixels)."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if frames > 1:
        raise DataError(f"DICOM file has {frames} frames; MedFL reads 2-D single-frame images; "
                        "export one frame per file")
    if samples > 1:
        raise DataError(f"DICOM file has {samples} colour channels (SamplesPerPixel); the model "
                        "expects 1 grayscale channel")
    if photometric not in _GRAY_PHOTOMETRIC:
        # PALETTE COLOR stores indices into a colour table: not intensities.
        shown = photometric if photometric in _KNOWN_PHOTOMETRIC else "a non-standard value"
        raise DataError(f"DICOM image's Photometric Interpretation is {shown}; MedFL reads "
                        f"grayscale images ({' or '.join(_GRAY_PHOTOMETRIC)}): export it as "
                        "grayscale")
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise DataError("not a readable DICOM image: it has no pixel data (truncated or corrupt, "
                        "or not an image object such as a report)")
    _check_size("DICOM", int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0))


def _read_dicom(data: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    with _decoding("DICOM"):
        # Only imaging tags are accessed: pydicom converts values lazily, so patient tags
        # are never decoded (and never show up in a validation warning).
        ds = pydicom.dcmread(io.BytesIO(data))
        _check_dicom_header(ds)
        syntax = ds.file_meta.get("TransferSyntaxUID")
    check_decodable(syntax)  # a missing codec is named, not reported as a corrupt file
    kind = f"DICOM ({syntax_label(syntax)})" if syntax is not None and syntax.is_compressed \
        else "DICOM"
    with _decoding(kind):
        # Modality LUT (Rescale Slope/Intercept or a Modality LUT Sequence): modality units.
        pixels = np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float64)
        center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
        voi = DicomVoi.from_dataset(ds)
    meta = {
        "format": "dicom",
        # MONOCHROME1 (low = bright) is inverted after windowing, because the window
        # tags are expressed in the un-inverted modality units.
        "invert": ds.get("PhotometricInterpretation") == "MONOCHROME1",
        "window_center": _first_float(center),
        "window_width": _first_float(width),
        "voi": voi,
    }
    return pixels, meta


def _first_float(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, MultiValue):
        value = value[0] if len(value) else None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _read_nifti(data: bytes) -> np.ndarray:
    raw = data
    if data.startswith(_GZIP_MAGIC):
        # Bounded, because a small upload can inflate to gigabytes before shape is known.
        with _decoding("NIfTI"), gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            raw = stream.read(_MAX_NIFTI_BYTES + 1)
        if len(raw) > _MAX_NIFTI_BYTES:
            raise DataError(f"NIfTI file decompresses to more than {_MAX_NIFTI_BYTES >> 20} MiB; "
                            "MedFL reads 2-D images; export one slice per file")
    header_size = _nifti_header_size(raw)
    if header_size not in _NIFTI_HEADER_SIZES:
        raise DataError("gzip-compressed file is not NIfTI; valid formats are " + VALID_FORMATS)
    image_class = nib.Nifti1Image if header_size == 348 else nib.Nifti2Image
    with _decoding("NIfTI"):
        image = image_class.from_bytes(raw)
        shape = tuple(int(s) for s in image.shape)
    # Checked before get_fdata so that a real volume is refused without loading it.
    kept = tuple(s for s in shape if s != 1)
    if len(shape) != 2 and (len(shape) > 4 or len(kept) > 2):
        raise DataError(f"NIfTI image has shape {shape}; MedFL reads 2-D images (a 3-D/4-D "
                        "file needs all but two dimensions of size 1); export one slice per file")
    if len(kept) == 2:
        _check_size("NIfTI", *kept)
    with _decoding("NIfTI"):
        pixels = np.asarray(image.get_fdata(dtype=np.float64))  # applies scl_slope/scl_inter
    if pixels.ndim != 2:
        # (H, W, 1[, 1]) is the usual 2-D export; otherwise keep the non-singleton axes.
        plane = shape[:2] if all(s == 1 for s in shape[2:]) else (1,) * (2 - len(kept)) + kept
        pixels = pixels.reshape(plane)
    return pixels


def _read_pil(data: bytes, kind: str) -> np.ndarray:
    with _decoding(kind), Image.open(io.BytesIO(data), formats=[kind]) as image:
        _check_size(kind, image.height, image.width)  # from the header, before decoding
        image.load()
        frames = int(getattr(image, "n_frames", 1))
        if frames > 1:
            raise DataError(f"{kind} file has {frames} frames; MedFL reads 2-D single-frame "
                            "images; export one frame per file")
        if image.mode in _GRAY_MODES:
            return np.asarray(image, dtype=np.float64)
        if image.mode == "LA":
            return np.asarray(image.getchannel("L"), dtype=np.float64)
        rgb = image.convert("RGB") if image.mode not in ("RGB", "RGBA") else image
        colour = np.asarray(rgb, dtype=np.float64)[..., :3]
    # Grayscale saved as RGB(A) is common (screenshots, exports); real colour is not.
    if not (np.array_equal(colour[..., 0], colour[..., 1])
            and np.array_equal(colour[..., 0], colour[..., 2])):
        raise DataError(f"{kind} image has 3 colour channels; the model expects 1 grayscale "
                        "channel (export it as grayscale)")
    return colour[..., 0]


def decode(data: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    """An image file's bytes -> (pixels, meta), as :func:`read_pixels` describes them."""
    fmt = detect_format(data)
    meta: dict[str, Any] = {"format": fmt, "invert": False,
                            "window_center": None, "window_width": None, "voi": None}
    if fmt == "dicom":
        pixels, meta = _read_dicom(data)
    elif fmt == "nifti":
        pixels = _read_nifti(data)
    else:
        pixels = _read_pil(data, FORMAT_NAMES[fmt])
    if pixels.ndim != 2 or min(pixels.shape) < 1:
        raise DataError(f"{FORMAT_NAMES[fmt]} image has shape {pixels.shape}; expected a non-empty "
                        "2-D image")
    if not np.isfinite(pixels).all():
        raise DataError(f"{FORMAT_NAMES[fmt]} image contains non-finite values (NaN or infinity)")
    return pixels, meta


def read_bytes(path: str | Path) -> bytes:
    """A file's bytes; ``DataError`` without the path (the OS message would quote it)."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:  # the OS message carries the path
        raise DataError(f"cannot read image file ({type(exc).__name__})") from None


def read_pixels(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read one 2-D image in modality units.

    Returns
    -------
    pixels : np.ndarray
        (H, W) float64: Hounsfield units etc. for DICOM (modality LUT applied), scaled
        values for NIfTI (``scl_slope``/``scl_inter`` applied), raw values for PNG/JPEG.
        NIfTI arrays keep nibabel's (i, j) axis order.
    meta : dict
        ``format`` (png, jpeg, dicom, nifti), ``invert`` (True for DICOM MONOCHROME1:
        low values display bright; applied after windowing), ``window_center`` and
        ``window_width`` (DICOM tags, first pair; else None), ``voi`` (DICOM: the file's
        display presets, a :class:`~medfl.data.dicom.DicomVoi`, or None). Never patient
        tags.
    """
    return decode(read_bytes(path))
