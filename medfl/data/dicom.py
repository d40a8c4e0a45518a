"""DICOM as archives hold it: which codec decodes a file's pixel data, and its display presets.

Codecs. pydicom 3 decodes pixel data through one ``pydicom.pixels.decoders`` decoder per
transfer syntax; compressed syntaxes need a plugin package, and the first available one is
used (in pydicom's order, pylibjpeg before Pillow). MedFL installs pylibjpeg and its three
plugins, which cover every syntax below; Pillow, also installed, is a fallback for JPEG
baseline/extended (8-bit) and JPEG 2000; GDCM (``python-gdcm``) would be another and is not
needed. UIDs are 1.2.840.10008.1.2.x:

- JPEG baseline (.4.50), extended (.4.51), lossless process 14 (.4.57) and its selection
  value 1 (.4.70), JPEG-LS lossless (.4.80) and near-lossless (.4.81): pylibjpeg-libjpeg
  (else gdcm; pyjpegls for JPEG-LS).
- JPEG 2000 lossless (.4.90) and lossy (.4.91), HTJ2K (.4.201-.4.203): pylibjpeg-openjpeg
  (else pillow or gdcm, not for HTJ2K).
- RLE lossless (.5): pylibjpeg-rle (else pydicom's own numpy decoder).
- Native and deflated syntaxes: pydicom itself.

A syntax with no decoder, or whose plugins are missing, is refused before any pixel is
read, naming the syntax and what would decode it: such a file is not corrupt.

Display presets. A file's VOI LUT module (PS3.3 C.11.2) holds zero or more presets: the
items of its VOI LUT Sequence, then its Window Center/Width pairs (with their VOI LUT
Function: LINEAR, LINEAR_EXACT or SIGMOID). :class:`DicomVoi` keeps only that module and
applies one preset with pydicom's own ``apply_voi`` / ``apply_windowing``.

Privacy: no message quotes a patient tag, a path or a pixel value; the transfer syntax UID
is quoted only when it is a well-formed UID (a standard or vendor identifier, never a
patient's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_voi, apply_windowing, get_decoder
from pydicom.uid import UID

from medfl.errors import DataError

__all__ = ["DicomVoi", "check_decodable", "syntax_label"]

#: The tags pydicom's VOI LUT and windowing functions read, and nothing else.
_VOI_TAGS = ("PhotometricInterpretation", "BitsStored", "PixelRepresentation",
             "RescaleSlope", "RescaleIntercept", "ModalityLUTSequence", "WindowCenter",
             "WindowWidth", "VOILUTFunction", "VOILUTSequence")
_CONVERT = ("convert it to an uncompressed transfer syntax first (e.g. dcmtk's `dcmdjpeg` "
            "or `dcmdrle`, or `gdcmconv --raw`)")


def syntax_label(syntax: UID | None) -> str:
    """``"<name> (<UID>)"`` for a message; the UID only when it is well formed."""
    if syntax is None:
        return "an unstated transfer syntax"
    if not syntax.is_valid:
        return "a malformed Transfer Syntax UID"
    name = syntax.name if syntax.name != str(syntax) else "an unknown transfer syntax"
    return f"{name} ({syntax})"


def check_decodable(syntax: UID | None) -> None:
    """Raise ``DataError`` when pydicom cannot decode pixel data of transfer syntax ``syntax``.

    The message names the syntax and what would decode it (the plugin packages pydicom
    knows for it, or a conversion when pydicom has no decoder at all). ``None`` (no
    Transfer Syntax UID in the file meta) passes: pydicom then infers the encoding, and a
    failure to decode reads as a corrupt file.
    """
    if syntax is None:
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise DataError(f"DICOM pixel data in {syntax_label(syntax)} cannot be decoded: "
                        f"pydicom has no decoder for this transfer syntax; {_CONVERT}") from None
    if decoder.is_available:
        return
    needed = decoder.missing_dependencies
    hint = _pylibjpeg_hint(syntax)
    if hint and not any(item.startswith("pylibjpeg") for item in needed):
        needed.append(hint)
    packages = "; ".join(needed) or "no plugin known"
    raise DataError(f"DICOM pixel data in {syntax_label(syntax)} needs a pydicom decoder plugin "
                    f"that is not installed here ({packages}); MedFL's own install (`make`, or "
                    f"`pip install medfl`) brings pylibjpeg and its plugins, or {_CONVERT}")


def _pylibjpeg_hint(syntax: UID) -> str | None:
    """pydicom's own requirement line for its pylibjpeg plugin, e.g. after it was removed."""
    from pydicom.pixels.decoders.pylibjpeg import DECODER_DEPENDENCIES

    deps = DECODER_DEPENDENCIES.get(syntax)
    return f"pylibjpeg - requires {' and '.join(deps)}" if deps else None


@dataclass(frozen=True, eq=False)
class DicomVoi:
    """A DICOM file's display presets (its VOI LUT module), applied by pydicom.

    Parameters
    ----------
    module : pydicom.dataset.Dataset
        Only the VOI LUT module and the tags pydicom's windowing reads (bits stored,
        pixel representation, rescale, photometric interpretation): never a patient tag.
    luts, windows : int
        How many VOI LUT Sequence items and Window Center/Width pairs the file holds.
        Preset ``i`` is LUT item ``i`` for ``i < luts``, else window ``i - luts``; preset 0
        is what pydicom's ``apply_voi_lut`` applies by default (a LUT before a window).
    """

    module: Dataset
    luts: int
    windows: int

    @classmethod
    def from_dataset(cls, ds: Dataset) -> DicomVoi | None:
        """The VOI LUT module of ``ds``; ``None`` when it holds no preset."""
        luts = len(ds.get("VOILUTSequence") or ())
        windows = 0
        if "WindowCenter" in ds and "WindowWidth" in ds:
            windows = min(ds["WindowCenter"].VM, ds["WindowWidth"].VM)
        if luts + windows == 0:
            return None
        module = Dataset()
        for keyword in _VOI_TAGS:
            if keyword in ds:
                module[keyword] = ds[keyword]
        syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        if syntax is not None:  # the byte order of an OW LUT Data, read by apply_voi
            module.file_meta = FileMetaDataset()
            module.file_meta.TransferSyntaxUID = syntax
        else:
            module.set_original_encoding(*ds.original_encoding)
        return cls(module, luts, windows)

    @property
    def presets(self) -> int:
        """How many presets the file holds (LUTs, then windows)."""
        return self.luts + self.windows

    def apply(self, pixels: np.ndarray, *, preset: int = 0) -> np.ndarray:
        """Apply preset ``preset`` to modality-unit ``pixels`` and scale its output to [0, 1].

        The output range is the preset's own: its LUT's smallest and largest entries, or
        the window's outputs below and above the window (so 0 is the display's black and 1
        its white before any MONOCHROME1 inversion). Returns (H, W) float64.
        """
        if not 0 <= preset < self.presets:
            raise DataError(f"the DICOM file holds {self.presets} display preset(s) (VOI LUTs "
                            f"then windows); preset {preset} was asked for: choose one in "
                            f"[0, {self.presets - 1}] or set an explicit window")
        try:
            if preset < self.luts:
                out, low, high = self._lut(pixels, preset)
            else:
                out, low, high = self._window(pixels, preset - self.luts)
        except DataError:
            raise
        except Exception as exc:  # pydicom's message may quote tag values
            raise DataError(f"the DICOM file's display preset {preset} cannot be applied "
                            f"({type(exc).__name__}); valid are a VOI LUT of 8 or 10-16 bits "
                            "per entry, or a window of width >= 1 with VOI LUT Function "
                            "LINEAR, LINEAR_EXACT or SIGMOID; else set an explicit window"
                            ) from None
        if high == low:  # a LUT of one value shows no contrast: zeros, not 0/0
            return np.zeros(out.shape, dtype=np.float64)
        return (out - low) / (high - low)

    def _lut(self, pixels: np.ndarray, index: int) -> tuple[np.ndarray, float, float]:
        # A LUT indexes stored values: integers, as the modality LUT's output is for it.
        out = apply_voi(np.rint(pixels).astype(np.int64), self.module, index).astype(np.float64)
        descriptor = self.module.VOILUTSequence[index].LUTDescriptor
        first, entries = int(descriptor[1]), int(descriptor[0]) or 1 << 16
        table = apply_voi(np.arange(first, first + entries), self.module, index)
        return out, float(table.min()), float(table.max())

    def _window(self, pixels: np.ndarray, index: int) -> tuple[np.ndarray, float, float]:
        out = apply_windowing(pixels, self.module, index)
        # Every VOI function is monotone: its outputs at -inf and +inf bound its range.
        low, high = apply_windowing(np.array([-np.inf, np.inf]), self.module, index)
        return np.asarray(out, dtype=np.float64), float(low), float(high)
