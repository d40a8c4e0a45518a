"""Admit an uploaded image for decoding only if its header declares a size the request's
memory budget can hold.

A few kilobytes of PNG, JPEG, DICOM or gzip can declare (or inflate to) hundreds of
megabytes of pixels: decoding turns each pixel into float64 plus several working copies.
So the header is read first (PIL's lazy ``Image.open``, pydicom without the pixel data,
the NIfTI header after streaming only its first bytes out of the gzip), the declared pixel
count is checked against the budget, and only then is the image decoded. A ``.nii.gz`` is
decompressed here, as a stream with a hard byte cap (the header's declared data size, and
never more than the largest admissible image), and handed on as raw NIfTI, so the decoder
never inflates an unbounded gzip.

Nothing here quotes a pixel, a tag value or a file name: a message names the upload
(``files[i]``), the declared dimensions and the limit.
"""

from __future__ import annotations

import io
import math
import warnings
import zlib
from dataclasses import dataclass

import nibabel as nib
import pydicom
from PIL import Image

from medfl.data.dicom import check_decodable
from medfl.data.image_formats import FORMAT_NAMES, MAX_PIXELS, detect_format
from medfl.errors import DataError
from medfl.serving.tabular import InputError

__all__ = ["BYTES_PER_PIXEL", "DeclaredImage", "ImageTooLarge", "admit_images",
           "declared_image", "pixel_limit"]

#: Peak memory per decoded pixel, measured (RSS) on the serving path: about 21 bytes for a
#: greyscale PNG and 33 for RGB (the uint8 image, float64 pixels, normalisation copies).
BYTES_PER_PIXEL = 40
#: Largest NIfTI header plus extensions admitted before the voxel data (vox_offset).
_MAX_NIFTI_OFFSET = 1 << 20
_MAX_NIFTI_ITEMSIZE = 16  # complex128, the widest NIfTI voxel type
_GZIP_MAGIC = b"\x1f\x8b"

# PIL's own decompression-bomb guard, as a backstop behind the header check: warn above
# the largest image MedFL ever reads, refuse (DecompressionBombError) above twice that.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageTooLarge(InputError):
    """An upload declares more pixels than the request's decoding budget (HTTP 413)."""


@dataclass(frozen=True)
class DeclaredImage:
    """What an image file's header declares: its format and dimensions (pixels per axis)."""

    format: str
    dims: tuple[int, ...]

    @property
    def pixels(self) -> int:
        """The declared number of samples to decode (product of the dimensions)."""
        return math.prod(self.dims)


def pixel_limit(budget_bytes: int) -> int:
    """The most pixels one image may declare under a decoding budget of ``budget_bytes``
    (never above the decoder's own ceiling, 4096 x 4096)."""
    return min(budget_bytes // BYTES_PER_PIXEL, MAX_PIXELS)


def _nifti_header(head: bytes) -> nib.Nifti1Header:
    size = int.from_bytes(head[:4], "little")
    if size not in (348, 540):
        size = int.from_bytes(head[:4], "big")
    klass = nib.Nifti2Header if size == 540 else nib.Nifti1Header
    return klass.from_fileobj(io.BytesIO(head[:size]), check=False)


def declared_image(data: bytes) -> DeclaredImage:
    """Read only the header of an image file and return what it declares.

    Raises ``DataError`` for an unrecognised format or an unreadable header.
    """
    fmt = detect_format(data)
    kind = FORMAT_NAMES[fmt]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _declared(data, fmt)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"{kind} header declares more than {MAX_PIXELS} pixels") from None
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure means an unreadable header
        raise DataError(f"not a readable {kind} file: its header cannot be read "
                        f"({type(exc).__name__})") from None


def _declared(data: bytes, fmt: str) -> DeclaredImage:
    if fmt in ("png", "jpeg"):
        with Image.open(io.BytesIO(data), formats=[FORMAT_NAMES[fmt]]) as image:
            width, height = image.size  # the header only: nothing is decoded before load()
            return DeclaredImage(fmt, (height, width))
    if fmt == "dicom":
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        # A codec this service lacks is named now, before any upload is decoded. Colour
        # (SamplesPerPixel > 1) is refused by the decoder before any pixel is read.
        check_decodable(ds.file_meta.get("TransferSyntaxUID"))
        dims = (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0),
                int(ds.get("NumberOfFrames", 1) or 1))
        return DeclaredImage(fmt, dims)
    head = _gunzip_prefix(data, 540) if data.startswith(_GZIP_MAGIC) else data[:540]
    return DeclaredImage(fmt, tuple(int(d) for d in _nifti_header(head).get_data_shape()))


def _gunzip_prefix(data: bytes, n: int) -> bytes:
    """The first ``n`` bytes (at most) of a gzip stream, decompressed incrementally: never
    more than ``n`` bytes of output exist, whatever the stream would inflate to."""
    out, rest = bytearray(), data
    while rest and len(out) < n:  # one pass per gzip member
        stream = zlib.decompressobj(wbits=31)
        while len(out) < n and not stream.eof:
            chunk = stream.decompress(rest, min(n - len(out), 1 << 20))
            out += chunk
            if not chunk and stream.unconsumed_tail == rest:
                break  # no progress: the input is exhausted or stuck
            rest = stream.unconsumed_tail
        if not stream.eof:
            break
        rest = stream.unused_data
    return bytes(out)


def _raw_nifti(data: bytes, *, max_pixels: int) -> bytes:
    """A ``.nii.gz`` upload -> raw NIfTI bytes, decompressing no more than the header's
    declared size (``vox_offset`` + voxels x item size) and never more than the largest
    admissible image."""
    header = _nifti_header(_gunzip_prefix(data, 540))
    offset = int(header.get_data_offset())
    if offset > _MAX_NIFTI_OFFSET:
        raise DataError(f"NIfTI header places the voxel data at byte {offset}; at most "
                        f"{_MAX_NIFTI_OFFSET} bytes of header and extensions are read")
    needed = offset + math.prod(int(d) for d in header.get_data_shape()) * int(
        header.get_data_dtype().itemsize)
    cap = _MAX_NIFTI_OFFSET + max_pixels * _MAX_NIFTI_ITEMSIZE
    return _gunzip_prefix(data, min(needed, cap))


def admit_images(images: list[bytes], *, budget_bytes: int) -> list[bytes]:
    """Check every upload's declared size before any is decoded; return them ready to
    decode (a ``.nii.gz`` comes back decompressed, under the cap).

    Raises ``ImageTooLarge`` (naming ``files[i]``, the declared dimensions and the limit)
    when an image declares more pixels than ``pixel_limit(budget_bytes)``, and
    ``InputError`` when a header cannot be read. Images are decoded one at a time, so the
    request's peak is its largest image.
    """
    limit = pixel_limit(budget_bytes)
    for i, data in enumerate(images):
        try:
            declared = declared_image(data)
        except DataError as exc:
            raise InputError(f"files[{i}]", str(exc)) from None
        if declared.pixels > limit:
            dims = " x ".join(str(d) for d in declared.dims)
            raise ImageTooLarge(
                f"files[{i}]", f"{FORMAT_NAMES[declared.format]} image declares {dims} = "
                f"{declared.pixels} pixels (about {declared.pixels * BYTES_PER_PIXEL >> 20} MiB "
                f"to decode); this service decodes at most {limit} pixels per image (a "
                f"{budget_bytes >> 20} MiB budget per request, MEDFL_DECODE_BUDGET_MB): "
                "downsample it or export one slice per file")
    out = []
    for i, data in enumerate(images):
        if not data.startswith(_GZIP_MAGIC):
            out.append(data)
            continue
        try:
            out.append(_raw_nifti(data, max_pixels=limit))
        except DataError as exc:
            raise InputError(f"files[{i}]", str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - zlib and nibabel raise several types
            raise InputError(f"files[{i}]", "not a readable NIfTI file (truncated or corrupt; "
                             f"{type(exc).__name__})") from None
    return out
