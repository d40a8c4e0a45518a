"""Synthetic images and masks written as a hospital's files: PNG, 16-bit PNG, NIfTI, DICOM.

Files store modality units (~0..1) in their format's own range, so a site's scanner shift
is in the files, not only in memory. Every file is byte-reproducible from its parameters.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

__all__ = ["EXTENSIONS", "to_file", "write_mask"]

EXTENSIONS = {"png": "png", "png16": "png", "nifti": "nii.gz", "dicom": "dcm"}
# DICOM: modality units 0..1 span -1000..+1000 HU; stored value = HU + 1024 (CT convention).
HU_PER_UNIT, HU_AT_ZERO, DICOM_INTERCEPT = 2000.0, -1000.0, -1024.0


def to_file(path: Path, units: np.ndarray, file_format: str, *, uid_entropy: list[str],
             patient: tuple[str, int]) -> None:
    """Store modality units (~0..1) in the format's own range; values outside are clipped."""
    if file_format == "png":
        Image.fromarray(np.clip(np.rint(units * 255), 0, 255).astype(np.uint8)).save(path)
    elif file_format == "png16":
        Image.fromarray(np.clip(np.rint(units * 65535), 0, 65535).astype(np.uint16)).save(path)
    elif file_format == "nifti":
        raw = nib.Nifti1Image(units.astype(np.float32), np.eye(4)).to_bytes()
        path.write_bytes(gzip.compress(raw, mtime=0))  # mtime=0: byte-reproducible files
    else:
        _write_dicom(path, units, uid_entropy=uid_entropy, patient=patient)


def _write_dicom(path: Path, units: np.ndarray, *, uid_entropy: list[str],
                 patient: tuple[str, int]) -> None:
    """A single-frame CT image; stored = HU - intercept, so HU = pixel_array + intercept.

    ``patient`` is the drawn (sex, age in years). UIDs are hashed from ``uid_entropy``
    (dataset key, site, index), so the same parameters give the same files.
    """
    hu = np.rint(HU_AT_ZERO + HU_PER_UNIT * units)
    stored = np.clip(hu - DICOM_INTERCEPT, 0, 4095).astype(np.uint16)  # 12 bits stored
    uid = {part: generate_uid(entropy_srcs=[*uid_entropy, part])
           for part in ("sop", "study", "series", "frame")}
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, uid["sop"]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta, ds.SOPClassUID, ds.SOPInstanceUID = meta, CTImageStorage, uid["sop"]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid["study"], uid["series"]
    ds.FrameOfReferenceUID, ds.PixelSpacing = uid["frame"], [1, 1]
    ds.Modality, ds.Manufacturer = "CT", "MedFL synthetic generator"
    ds.ImageType, ds.SeriesNumber, ds.InstanceNumber = ["DERIVED", "SECONDARY", "AXIAL"], 1, 1
    ds.PatientName, ds.PatientID = "SYNTHETIC", f"SYN-{uid_entropy[1]}-{uid_entropy[2]}"
    ds.PatientSex, ds.PatientAge = patient[0], f"{patient[1]:03d}Y"
    (ds.Rows, ds.Columns), ds.SamplesPerPixel = stored.shape, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, int(DICOM_INTERCEPT), "HU"
    # The window spans modality units 0..1, the range the other formats store.
    ds.WindowCenter, ds.WindowWidth = int(HU_AT_ZERO + HU_PER_UNIT / 2), int(HU_PER_UNIT)
    ds.PixelData = stored.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_mask(path: Path, mask: np.ndarray, *, nifti: bool) -> None:
    """A lesion mask (bool): NIfTI {0, 1} at a NIfTI site, else PNG {0, 255}."""
    if nifti:
        raw = nib.Nifti1Image(mask.astype(np.uint8), np.eye(4)).to_bytes()
        path.write_bytes(gzip.compress(raw, mtime=0))
    else:
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)
