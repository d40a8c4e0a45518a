"""Read one 2-D medical image (PNG, JPEG, DICOM, NIfTI) and apply a bundle's preprocessing.

Training, evaluation and serving all go through :func:`load_image_bytes`, so a model sees
exactly the same intensity scaling and resizing wherever it runs. The format is detected
from the file's magic bytes, never from its name.

Privacy: a ``DataError`` message may leave the hospital, so none of them quotes a file
path, a file name, a DICOM tag value about the patient or a pixel value. Third-party
exceptions are replaced (``from None``) because pydicom, Pillow and nibabel messages can
quote paths. Callers prefix the manifest line.
"""

from __future__ import annotations

import difflib
import gzip
import io
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from PIL import Image
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut

from medfl.errors import ConfigError, DataError

__all__ = [
    "INTENSITY_MODES",
    "ImagePreprocessing",
    "load_image",
    "load_image_bytes",
    "load_mask",
    "read_pixels",
]

INTENSITY_MODES = ("minmax", "window", "zscore")
MIN_SIZE, MAX_SIZE = 8, 2048
VALID_FORMATS = "PNG, JPEG, DICOM (Part 10, with 'DICM' at byte 128) or NIfTI (.nii/.nii.gz)"

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8"
_GZIP_MAGIC = b"\x1f\x8b"
_GRAY_MODES = ("1", "L", "I;16", "I;16L", "I;16B", "I", "F")
_NIFTI_HEADER_SIZES = (348, 540)
_MAX_NIFTI_BYTES = 512 << 20  # a 2-D slice is far smaller: 8192 x 8192 float64
#: Largest image read (checked from the header, before the pixels are decoded): a small
#: compressed upload can otherwise expand to gigabytes once converted to float64.
MAX_PIXELS = 4096 * 4096


def _check_size(kind: str, height: int, width: int) -> None:
    if height * width > MAX_PIXELS:
        raise DataError(f"{kind} image is {height} x {width} pixels; MedFL reads images of at "
                        f"most {MAX_PIXELS} pixels (e.g. 4096 x 4096): downsample it first")
_DISPLAY = {"png": "PNG", "jpeg": "JPEG", "dicom": "DICOM", "nifti": "NIfTI"}


@dataclass(frozen=True)
class ImagePreprocessing:
    """How a model's input images are prepared; stored in the bundle manifest.

    Parameters
    ----------
    size : int
        Output side in pixels: every image becomes (1, size, size), aspect ratio not kept.
    intensity : str
        ``"minmax"``: per-image scale to [0, 1]. ``"window"``: clip to
        [center - width/2, center + width/2] in modality units (e.g. Hounsfield units),
        then scale to [0, 1]. ``"zscore"``: per-image zero mean, unit variance.
    window_center, window_width : float
        For ``"window"`` only, in modality units. Both 0: use each DICOM file's own
        WindowCenter/WindowWidth tags (first value when multi-valued).
    """

    size: int
    intensity: str
    window_center: float = 0.0
    window_width: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not (
            MIN_SIZE <= self.size <= MAX_SIZE
        ):
            raise ConfigError(f"image preprocessing: size must be an integer in "
                              f"[{MIN_SIZE}, {MAX_SIZE}], got {self.size!r}")
        if self.intensity not in INTENSITY_MODES:
            hint = difflib.get_close_matches(str(self.intensity), INTENSITY_MODES, n=1)
            did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"image preprocessing: intensity must be one of "
                              f"{list(INTENSITY_MODES)}, got {self.intensity!r}{did_you_mean}")
        for name in ("window_center", "window_width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(
                value
            ):
                raise ConfigError(f"image preprocessing: {name} must be a finite number, "
                                  f"got {value!r}")
            object.__setattr__(self, name, float(value))  # 600 and 600.0 round-trip alike
        if self.window_width < 0:
            raise ConfigError(f"image preprocessing: window_width must be >= 0, "
                              f"got {self.window_width!r}")
        explicit = self.window_center != 0 or self.window_width != 0
        if self.intensity != "window" and explicit:
            raise ConfigError("image preprocessing: window_center/window_width apply only to "
                              f"intensity 'window', not {self.intensity!r}; leave them at 0")
        if self.intensity == "window" and explicit and self.window_width == 0:
            raise ConfigError("image preprocessing: window_width must be > 0 when window_center "
                              "is set (set both to 0 to use each DICOM file's window tags)")

    @property
    def uses_file_window(self) -> bool:
        """True when the window comes from each DICOM file's WindowCenter/WindowWidth."""
        return self.intensity == "window" and self.window_width == 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the bundle manifest."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ImagePreprocessing:
        """Inverse of :meth:`to_dict`; unknown or missing keys raise ``ConfigError``."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"image preprocessing must be a mapping, got {type(d).__name__}")
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ConfigError(f"image preprocessing: unknown keys {unknown}; "
                              f"valid keys are {valid}")
        missing = [k for k in ("size", "intensity") if k not in d]
        if missing:
            raise ConfigError(f"image preprocessing: missing keys {missing}; required are "
                              "['size', 'intensity']")
        return cls(**d)


# --------------------------------------------------------------------------- decoding


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


def _read_dicom(data: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    with _decoding("DICOM"):
        # Only imaging tags are accessed: pydicom converts values lazily, so patient tags
        # are never decoded (and never show up in a validation warning).
        ds = pydicom.dcmread(io.BytesIO(data))
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        has_pixels = "PixelData" in ds or "FloatPixelData" in ds
    if frames > 1:
        raise DataError(f"DICOM file has {frames} frames; MedFL reads 2-D single-frame images; "
                        "export one frame per file")
    if samples > 1:
        raise DataError(f"DICOM file has {samples} colour channels (SamplesPerPixel); the model "
                        "expects 1 grayscale channel")
    if not has_pixels:
        raise DataError("not a readable DICOM image: it has no pixel data (truncated or corrupt, "
                        "or not an image object such as a report)")
    _check_size("DICOM", int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0))
    syntax = ds.file_meta.get("TransferSyntaxUID")
    kind = f"DICOM ({syntax.name})" if syntax is not None and syntax.is_compressed else "DICOM"
    with _decoding(kind):
        pixels = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
        center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    meta = {
        "format": "dicom",
        # MONOCHROME1 (low = bright) is inverted after windowing, because the window
        # tags are expressed in the un-inverted modality units.
        "invert": photometric == "MONOCHROME1",
        "window_center": _first_float(center),
        "window_width": _first_float(width),
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


def _decode(data: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    fmt = detect_format(data)
    meta: dict[str, Any] = {"format": fmt, "invert": False,
                            "window_center": None, "window_width": None}
    if fmt == "dicom":
        pixels, meta = _read_dicom(data)
    elif fmt == "nifti":
        pixels = _read_nifti(data)
    else:
        pixels = _read_pil(data, _DISPLAY[fmt])
    if pixels.ndim != 2 or min(pixels.shape) < 1:
        raise DataError(f"{_DISPLAY[fmt]} image has shape {pixels.shape}; expected a non-empty "
                        "2-D image")
    if not np.isfinite(pixels).all():
        raise DataError(f"{_DISPLAY[fmt]} image contains non-finite values (NaN or infinity)")
    return pixels, meta


def _read_bytes(path: str | Path) -> bytes:
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
        ``window_width`` (DICOM tags, else None). Never patient tags.
    """
    return _decode(_read_bytes(path))


# --------------------------------------------------------------------------- preprocessing


def _normalise(pixels: np.ndarray, meta: Mapping[str, Any],
               prep: ImagePreprocessing) -> np.ndarray:
    if prep.intensity == "window":
        center, width = prep.window_center, prep.window_width
        if prep.uses_file_window:
            center, width = meta["window_center"], meta["window_width"]
            if center is None or width is None or width <= 0:
                raise DataError("intensity 'window' with window_center = window_width = 0 uses "
                                "the DICOM WindowCenter/WindowWidth tags, which this file lacks "
                                "(or holds a width <= 0); set window_center and window_width")
        low = center - width / 2
        out = (np.clip(pixels, low, center + width / 2) - low) / width
    else:
        # A constant image carries no contrast: zeros, not 0/0 = NaN.
        if np.ptp(pixels) == 0:
            return np.zeros_like(pixels)
        if prep.intensity == "minmax":
            out = (pixels - pixels.min()) / np.ptp(pixels)
        else:
            out = (pixels - pixels.mean()) / pixels.std()
    if meta["invert"]:
        out = -out if prep.intensity == "zscore" else 1.0 - out
    return out


def _resize(image: np.ndarray, size: int, *, mode: str) -> np.ndarray:
    # torch's anti-aliased bilinear is Pillow's BILINEAR resize: the triangle filter widens
    # with the reduction factor, so downsampling averages instead of aliasing. It is over
    # 20x faster here than MONAI's Resize (a Gaussian conv per image). Bilinear
    # (align_corners=False) and nearest-exact share half-pixel centres, so masks stay
    # aligned with their images.
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    if mode == "bilinear":
        out = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False,
                            antialias=True)
    else:
        out = F.interpolate(tensor, size=(size, size), mode="nearest-exact")
    return out[0].numpy()


def load_image_bytes(data: bytes, prep: ImagePreprocessing) -> np.ndarray:
    """Decode an image held in memory (e.g. an HTTP upload) and preprocess it.

    Intensity normalisation on the full-resolution image, then a resize to
    ``prep.size`` by ``torch.nn.functional.interpolate`` (bilinear, anti-aliased: the
    same filter as Pillow's BILINEAR resize).

    Returns
    -------
    np.ndarray
        (1, size, size) float32.
    """
    pixels, meta = _decode(bytes(data))
    return _resize(_normalise(pixels, meta, prep), prep.size, mode="bilinear")


def load_image(path: str | Path, prep: ImagePreprocessing) -> np.ndarray:
    """Read an image file and preprocess it exactly as :func:`load_image_bytes` does."""
    return load_image_bytes(_read_bytes(path), prep)


def load_mask(path: str | Path, size: int) -> np.ndarray:
    """Read a binary segmentation mask (PNG or NIfTI) and resize it by nearest neighbour.

    Values must be {0, 1} or {0, 255} (255 read as 1). JPEG is refused: lossy
    compression blurs the label edges into other values.

    Returns
    -------
    np.ndarray
        (1, size, size) float32 with values in {0, 1}.
    """
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"mask size must be an integer in [{MIN_SIZE}, {MAX_SIZE}], got {size!r}")
    pixels, meta = read_pixels(path)
    if meta["format"] not in ("png", "nifti"):
        raise DataError(f"a mask must be a PNG or NIfTI file, got {_DISPLAY[meta['format']]}; "
                        "save masks losslessly with values {0, 1} or {0, 255}")
    values = np.unique(pixels)
    if np.isin(values, (0.0, 1.0)).all():
        mask = pixels
    elif np.isin(values, (0.0, 255.0)).all():
        mask = pixels / 255.0
    else:  # the count, never the values: they are pixel data
        raise DataError(f"mask has {len(values)} distinct values; a mask must hold only "
                        "{0, 1} or only {0, 255}")
    return _resize(mask, size, mode="nearest-exact")
