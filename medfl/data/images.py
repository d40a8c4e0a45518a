"""Read one 2-D medical image (PNG, JPEG, DICOM, NIfTI) and apply a bundle's preprocessing.

Training, evaluation and serving all go through :func:`load_image_bytes`, so a model sees
exactly the same intensity scaling and resizing wherever it runs. Decoding, per format, is
:mod:`medfl.data.image_formats` (its public names are re-exported here).

Privacy: a ``DataError`` message may leave the hospital, so none of them quotes a file
path, a file name, a DICOM tag value about the patient or a pixel value.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medfl.data.image_formats import (
    FORMAT_NAMES,
    MAX_PIXELS,
    VALID_FORMATS,
    decode,
    detect_format,
    read_bytes,
    read_pixels,
)
from medfl.errors import ConfigError, DataError

__all__ = [
    "INTENSITY_MODES",
    "MAX_PIXELS",
    "VALID_FORMATS",
    "ImagePreprocessing",
    "detect_format",
    "load_image",
    "load_image_bytes",
    "load_mask",
    "read_pixels",
]

INTENSITY_MODES = ("minmax", "window", "zscore")
MIN_SIZE, MAX_SIZE = 8, 2048


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
        For ``"window"`` only, in modality units: clip to [center - width/2,
        center + width/2], then scale to [0, 1]. Both 0: each DICOM file's own display
        preset instead, applied as the standard says (PS3.3 C.11.2, by pydicom's
        ``apply_voi``/``apply_windowing``): its VOI LUT, or its Window Center/Width with
        its VOI LUT Function, the output scaled from the preset's range to [0, 1].
    window_preset : int
        Which of the file's presets (VOI LUT Sequence items, then Window Center/Width
        pairs, e.g. a vendor's WINDOW1/WINDOW2); 0, the first, is the file's default.
        Only with the file's own window.
    """

    size: int
    intensity: str
    window_center: float = 0.0
    window_width: float = 0.0
    window_preset: int = 0

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
        self._check_preset()

    def _check_preset(self) -> None:
        preset = self.window_preset
        if isinstance(preset, bool) or not isinstance(preset, int) or preset < 0:
            raise ConfigError(f"image preprocessing: window_preset must be an integer >= 0, "
                              f"got {preset!r}")
        if preset and not self.uses_file_window:
            raise ConfigError("image preprocessing: window_preset picks one of a DICOM file's "
                              "own display presets, so it needs intensity 'window' with "
                              "window_center = window_width = 0; leave it at 0")

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


def _file_window(pixels: np.ndarray, meta: Mapping[str, Any],
                 prep: ImagePreprocessing) -> np.ndarray:
    """The DICOM file's own display preset, applied by pydicom, in [0, 1]."""
    voi = meta.get("voi")
    if voi is None:
        raise DataError("intensity 'window' with window_center = window_width = 0 uses the "
                        "DICOM file's own VOI LUT or WindowCenter/WindowWidth tags, which this "
                        "file lacks; set window_center and window_width")
    return np.asarray(voi.apply(pixels, preset=prep.window_preset), dtype=np.float64)


def _normalise(pixels: np.ndarray, meta: Mapping[str, Any],
               prep: ImagePreprocessing) -> np.ndarray:
    if prep.uses_file_window:
        out = _file_window(pixels, meta, prep)
    elif prep.intensity == "window":
        center, width = prep.window_center, prep.window_width
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
    pixels, meta = decode(bytes(data))
    return _resize(_normalise(pixels, meta, prep), prep.size, mode="bilinear")


def load_image(path: str | Path, prep: ImagePreprocessing) -> np.ndarray:
    """Read an image file and preprocess it exactly as :func:`load_image_bytes` does."""
    return load_image_bytes(read_bytes(path), prep)


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
        raise DataError(f"a mask must be a PNG or NIfTI file, got {FORMAT_NAMES[meta['format']]}; "
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
