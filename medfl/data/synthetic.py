"""Synthetic hospitals for imaging: deterministic multi-site 2-D images written as files.

Each site is a hospital with its own population and scanner (a ``SiteProfile``). An image
is rendered in two stages, so the site shift lives where it does in practice:

1. *Anatomy* at the output size: a body-like ellipse with smooth low-frequency texture, a few
   normal structures (distractor discs, larger and/or dimmer than lesions, so a model must
   learn what a lesion looks like rather than "something is bright") and, for positives, a
   lesion. Lesion contrast is lower for patients aged ``OLDER_AGE`` or more, a real subgroup
   gap. Discs come from MONAI's ``create_test_image_2d``.
2. *Scanner*: point-spread blur, sampling at ``resolution`` x the output size, noise per
   acquired pixel, interpolation back up, then ``intensity_scale * x + intensity_offset``
   ("modality units", roughly 0..1). Files store these units in their format's range
   (see ``_to_file``), so the scanner shift is in the files, not only in memory.

Output is laid out as a hospital would hand it over (``manifest.csv``, ``<site>/<index>.<ext>``,
plus ``README.md`` and ``generator.json``), so one loader reads both. No patient data used.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import gzip
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.data.synthetic import create_test_image_2d
from monai.transforms import GaussianSmooth, Resize
from monai.utils import convert_to_numpy
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from medfl.errors import ConfigError
from medfl.io import publish_dataset

__all__ = ["FILE_FORMATS", "GENERATOR_VERSION", "LABEL_NAMES", "TASKS", "SiteProfile",
           "dataset_key", "default_sites", "generate_hospitals"]

logger = logging.getLogger(__name__)

#: Bumped whenever the same arguments would render different pixels (invalidates caches).
GENERATOR_VERSION = "2"
TASKS = ("image-classification", "segmentation")
FILE_FORMATS = ("png", "png16", "nifti", "dicom")
LABEL_NAMES = ("absent", "present")
MANIFEST_COLUMNS = {"image-classification": ("path", "label", "site", "sex", "age"),
                    "segmentation": ("path", "mask_path", "site", "sex", "age")}
_EXTENSIONS = {"png": "png", "png16": "png", "nifti": "nii.gz", "dicom": "dcm"}
_PARAMS_FILE = "generator.json"
_MIN_SIZE = 16
_CHUNK = 64  # images rendered together: bounded memory at large sizes, few MONAI calls

# Anatomy in tissue units (before the scanner). Radii are pixels at 64x64, scaled with size.
AIR, BODY, TEXTURE_AMPLITUDE = 0.05, 0.45, 0.025
LESION_CONTRAST, OLDER_AGE, OLDER_CONTRAST_FACTOR = 0.35, 65, 0.6
LESION_RADIUS = {"image-classification": (3, 6), "segmentation": (4, 8)}  # inclusive
LARGE_STRUCTURE = {"radius": (6, 11), "contrast": (0.04, 0.10), "count": (2, 4)}
SMALL_STRUCTURE = {"radius": (2, 4), "contrast": (0.02, 0.05), "count": (1, 2)}
# DICOM: modality units 0..1 span -1000..+1000 HU; stored value = HU + 1024 (CT convention).
HU_PER_UNIT, HU_AT_ZERO, DICOM_INTERCEPT = 2000.0, -1000.0, -1024.0


@dataclass(frozen=True)
class SiteProfile:
    """One synthetic hospital: its population and its scanner signature.

    Parameters
    ----------
    name : folder name of the site's files and its ``site`` value in the manifest.
    n : number of images.
    prevalence : fraction of ``present`` images (image-classification; Bernoulli draws).
    female_fraction, age_mean, age_sd : population; ages in years, normal, clipped to 18-95.
    intensity_scale, intensity_offset : modality units = scale * tissue + offset (tissue:
        air 0.05, body 0.45, lesion contrast 0.21-0.35).
    noise_sd : Gaussian noise per acquired pixel, in tissue units.
    blur_sigma : point-spread blur in output pixels (0: none).
    resolution : acquisition matrix as a fraction of the output size (0.5: acquired at half
        size, then interpolated up, so blocky and blurred).
    file_format : ``png`` (8-bit), ``png16``, ``nifti`` (float32 .nii.gz) or ``dicom`` (CT).
    """

    name: str
    n: int
    prevalence: float
    female_fraction: float
    age_mean: float
    age_sd: float
    intensity_scale: float = 1.0
    intensity_offset: float = 0.0
    noise_sd: float = 0.04
    blur_sigma: float = 0.5
    resolution: float = 1.0
    file_format: str = "png"

    def __post_init__(self) -> None:
        checks = [
            ("name", re.fullmatch(r"[a-z0-9][a-z0-9_-]*", str(self.name)) is not None,
             "lower-case letters, digits, '-' or '_' (it names a folder)"),
            ("n", isinstance(self.n, int) and self.n >= 1, "an integer >= 1"),
            *((k, 0.0 <= getattr(self, k) <= 1.0, "in [0, 1]")
              for k in ("prevalence", "female_fraction")),
            *((k, getattr(self, k) >= 0.0, ">= 0") for k in ("age_sd", "noise_sd", "blur_sigma")),
            ("intensity_scale", self.intensity_scale > 0.0, "> 0"),
            ("resolution", 0.0 < self.resolution <= 1.0, "in (0, 1]"),
            ("file_format", self.file_format in FILE_FORMATS, f"one of {FILE_FORMATS}"),
        ]
        for key, ok, valid in checks:
            if not ok:
                raise ConfigError(f"site profile {self.name!r}: {key}={getattr(self, key)!r} "
                                  f"is invalid; it must be {valid}")


def default_sites(task: str) -> tuple[SiteProfile, ...]:
    """Four hospitals with distinct populations and scanners, one per file format.

    ``summit`` is the small, hard site (older, noisy, half-resolution); ``hillcrest`` is
    older than the rest, so the age subgroup gap shows up as a site gap too.
    """
    _check_task(task)
    # name, n, prevalence, female_fraction, age_mean, age_sd, intensity_scale,
    # intensity_offset, noise_sd, blur_sigma, resolution, file_format
    return (
        SiteProfile("riverside", 360, 0.35, 0.52, 57, 12, 1.00, 0.02, 0.030, 0.5, 1.00, "png"),
        SiteProfile("hillcrest", 300, 0.50, 0.45, 66, 10, 0.85, 0.10, 0.040, 0.8, 1.00, "png16"),
        SiteProfile("lakeside", 240, 0.25, 0.60, 50, 14, 1.20, -0.05, 0.040, 1.0, 0.75, "nifti"),
        SiteProfile("summit", 150, 0.40, 0.50, 62, 11, 1.10, 0.05, 0.060, 1.2, 0.50, "dicom"),
    )


def dataset_key(task: str, seed: int, size: int, sites: tuple[SiteProfile, ...]) -> str:
    """A short stable hash of everything that determines the generated files."""
    return hashlib.sha256(json.dumps(_params(task, seed, size, sites)).encode()).hexdigest()[:12]


def generate_hospitals(out_dir: Path, *, task: str, seed: int = 0, size: int = 64,
                       sites: tuple[SiteProfile, ...] | None = None) -> Path:
    """Write a synthetic multi-site dataset (files + ``manifest.csv``); return the manifest.

    Parameters
    ----------
    out_dir : dataset folder, created atomically (rendered in a temporary sibling, then
        renamed). If it already holds a dataset with the same parameters, it is returned as is.
    task : ``"image-classification"`` (label ``absent``/``present``) or ``"segmentation"``
        (1-3 lesions per image; mask PNG with values {0, 255}, or NIfTI {0, 1} at a
        NIfTI site; the union of the lesions).
    seed : master seed (>= 0); site ``i`` draws from ``np.random.default_rng([seed, i])``.
    size : images are ``size`` x ``size`` pixels (>= 16).
    sites : hospital profiles; ``default_sites(task)`` when None.

    Returns
    -------
    Path
        ``out_dir / "manifest.csv"``; its ``path``/``mask_path`` are relative to ``out_dir``.
    """
    out_dir = Path(out_dir)
    sites = default_sites(task) if sites is None else tuple(sites)
    _check_task(task)
    for name, value, low in (("size", size, _MIN_SIZE), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"synthetic {name} {value!r} is invalid; use an integer >= {low}")
    if not sites:
        raise ConfigError("no sites given; pass at least one SiteProfile, or None for "
                          "default_sites(task)")
    names = [s.name for s in sites]
    if len(set(names)) != len(names):
        raise ConfigError(f"site names must be unique (each names a folder), got {names}")
    key = dataset_key(task, seed, size, sites)
    if _holds_dataset(out_dir, key):
        return out_dir / "manifest.csv"

    def render(tmp: Path) -> None:
        start = time.perf_counter()
        rows = [row for index, site in enumerate(sites) for row in _render_site(
            tmp, site, task=task, size=size, key=key, rng=np.random.default_rng([seed, index]))]
        with (tmp / "manifest.csv").open("w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows([MANIFEST_COLUMNS[task], *rows])
        (tmp / _PARAMS_FILE).write_text(
            json.dumps({"key": key, **_params(task, seed, size, sites)}, indent=2) + "\n")
        (tmp / "README.md").write_text(_readme(task, seed, size, sites, key))
        logger.info("rendered %d synthetic images (%s, %d sites) in %.1f s",
                    len(rows), task, len(sites), time.perf_counter() - start)

    publish_dataset(out_dir, key, render, holds=_holds_dataset)
    return out_dir / "manifest.csv"


def _check_task(task: str) -> None:
    if task not in TASKS:
        close = difflib.get_close_matches(str(task), TASKS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown synthetic task {task!r}{hint}; valid tasks are {TASKS}")


def _params(task: str, seed: int, size: int, sites: tuple[SiteProfile, ...]) -> dict:
    return {"generator_version": GENERATOR_VERSION, "task": task, "seed": int(seed),
            "size": int(size), "sites": [dataclasses.asdict(s) for s in sites]}


def _holds_dataset(out_dir: Path, key: str) -> bool:
    try:
        params = json.loads((out_dir / _PARAMS_FILE).read_text())
    except (OSError, ValueError):
        return False
    return params.get("key") == key and (out_dir / "manifest.csv").is_file()


def _render_site(root: Path, site: SiteProfile, *, task: str, size: int, key: str,
                 rng: np.random.Generator) -> list[tuple]:
    """Render one hospital into ``root/<site>/``; return its manifest rows."""
    (root / site.name).mkdir()
    # MONAI takes a legacy RandomState: seeded from the site's generator, one seed rules both.
    state = np.random.RandomState(int(rng.integers(2**32)))
    texture_blur, structure_blur, lesion_blur = (
        GaussianSmooth(sigma * size / 64) for sigma in (6.0, 1.0, 0.6))
    rows = []
    for first in range(0, site.n, _CHUNK):
        people = [_person(site, task, rng) for _ in range(min(_CHUNK, site.n - first))]
        scenes = [_scene(size, *person, task=task, rng=rng, state=state) for person in people]
        body, structures, lesions, masks = (np.stack(x) for x in zip(*scenes, strict=True))
        texture = _apply(texture_blur, rng.standard_normal((len(people), size, size)))
        texture *= TEXTURE_AMPLITUDE / np.maximum(texture.std(axis=(1, 2), keepdims=True), 1e-12)
        # Lesions get a narrower edge blur than normal structures: sharp-ish small discs.
        tissue = (_apply(structure_blur, AIR + (BODY - AIR + texture) * body + structures)
                  + _apply(lesion_blur, lesions))
        units = _scan(tissue, site, rng)
        for j, (female, age, n_lesions) in enumerate(people):
            sex, stem = ("F" if female else "M"), f"{site.name}/{first + j:04d}"
            path = f"{stem}.{_EXTENSIONS[site.file_format]}"
            _to_file(root / path, units[j], site.file_format, patient=(sex, age),
                     uid_entropy=[key, site.name, str(first + j)])
            # A NIfTI site stores its masks as NIfTI too: tools keep image and mask in one
            # format, and the loader refuses a NIfTI/PNG mix (their axis orders differ).
            nifti = site.file_format == "nifti"
            target = (f"{stem}_mask.{'nii.gz' if nifti else 'png'}" if task == "segmentation"
                      else LABEL_NAMES[n_lesions])
            if task == "segmentation" and nifti:
                raw = nib.Nifti1Image(masks[j].astype(np.uint8), np.eye(4)).to_bytes()
                (root / target).write_bytes(gzip.compress(raw, mtime=0))
            elif task == "segmentation":
                Image.fromarray(masks[j].astype(np.uint8) * 255).save(root / target)
            rows.append((path, target, site.name, sex, age))
    return rows


def _person(site: SiteProfile, task: str, rng: np.random.Generator) -> tuple[bool, int, int]:
    """Draw (female, age in years, number of lesions) from the site's population."""
    female = bool(rng.random() < site.female_fraction)
    age = int(np.clip(np.rint(rng.normal(site.age_mean, site.age_sd)), 18, 95))
    if task == "segmentation":
        return female, age, int(rng.integers(1, 4))
    return female, age, int(rng.random() < site.prevalence)


def _scene(size: int, female: bool, age: int, n_lesions: int, *, task: str,
           rng: np.random.Generator, state: np.random.RandomState) -> tuple[np.ndarray, ...]:
    """Unblurred layers, each (size, size): body (bool), structures and lesions (contrast in
    tissue units, float64) and the lesion mask (bool)."""
    scale = size / 64
    contrast = LESION_CONTRAST * (OLDER_CONTRAST_FACTOR if age >= OLDER_AGE else 1.0)
    # Body: a tilted ellipse, slightly smaller on average for female patients.
    a, b = size * (0.95 if female else 1.0) * rng.uniform((0.40, 0.31), (0.46, 0.38))
    theta = rng.uniform(-0.3, 0.3)
    cy, cx = size / 2 + rng.normal(0.0, 0.02 * size, 2)
    dy, dx = np.mgrid[0:size, 0:size] + 0.5 - np.reshape((cy, cx), (2, 1, 1))
    cos, sin = np.cos(theta), np.sin(theta)
    r2 = ((dx * cos + dy * sin) / a) ** 2 + ((dy * cos - dx * sin) / b) ** 2
    interior = r2 <= 0.8  # objects stay clear of the body's edge
    structures = np.zeros((size, size))
    for spec in (LARGE_STRUCTURE, SMALL_STRUCTURE):
        for _ in range(int(rng.integers(spec["count"][0], spec["count"][1] + 1))):
            structures += (rng.uniform(*spec["contrast"])
                           * _disc_inside(interior, spec["radius"], scale, state))
    lesions = np.zeros((size, size))
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(n_lesions):
        disc = _disc_inside(interior, LESION_RADIUS[task], scale, state)
        lesions += contrast * rng.uniform(0.85, 1.15) * disc
        mask |= disc
    return r2 <= 1.0, structures, lesions, mask


def _scan(tissue: np.ndarray, site: SiteProfile, rng: np.random.Generator) -> np.ndarray:
    """The site's scanner on a stack (n, size, size) of tissue images; modality units."""
    size = tissue.shape[-1]
    acquired = max(8, round(site.resolution * size))
    image = _apply(GaussianSmooth(site.blur_sigma), tissue) if site.blur_sigma > 0 else tissue
    if acquired < size:
        image = _apply(Resize((acquired, acquired), mode="area"), image)
    # Noise is drawn even when noise_sd is 0, so sites differing only in noise_sd render
    # the same anatomy (tests compare them pixel for pixel).
    image = image + site.noise_sd * rng.standard_normal(image.shape)
    if acquired < size:
        image = _apply(Resize((size, size), mode="bilinear", align_corners=False), image)
    return site.intensity_scale * image + site.intensity_offset


def _disc_inside(region: np.ndarray, radius: tuple[int, int], scale: float,
                 state: np.random.RandomState) -> np.ndarray:
    """A disc from ``create_test_image_2d`` lying inside ``region`` (bool, same shape)."""
    size = region.shape[0]
    lo = max(1, round(radius[0] * scale))
    hi = min(max(lo + 1, round(radius[1] * scale) + 1), (size - 1) // 2)  # randint excludes hi
    lo = min(lo, hi - 1)
    for _ in range(100):
        _, labels = create_test_image_2d(size, size, num_objs=1, rad_max=hi, rad_min=lo,
                                         num_seg_classes=1, random_state=state)
        disc = labels > 0
        if region[disc].all():
            return disc
    return disc  # no fit in 100 tries (tiny images only): a lesion may touch the edge


def _apply(transform, images: np.ndarray) -> np.ndarray:
    """Run a MONAI transform on a stack (n, H, W) as channels: one call per stack, since
    per-call overhead (torch threads on tiny convolutions) would dominate; float64 out."""
    return convert_to_numpy(transform(images.astype(np.float32))).astype(np.float64)


def _to_file(path: Path, units: np.ndarray, file_format: str, *, uid_entropy: list[str],
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


def _readme(task: str, seed: int, size: int, sites: tuple[SiteProfile, ...], key: str) -> str:
    fields = [f.name for f in dataclasses.fields(SiteProfile)]
    rows = ["| " + " | ".join(str(getattr(s, f)) for f in fields) + " |" for s in sites]
    table = "\n".join(["| " + " | ".join(fields) + " |", "|" + "---|" * len(fields), *rows])
    return f"""# Synthetic hospitals (MedFL)

SYNTHETIC DATA: every image, age and sex here was generated by
`medfl.data.synthetic.generate_hospitals`; no patient data was used. Not for clinical use.

- generator version: {GENERATOR_VERSION}
- task: {task}, seed: {seed}, image size: {size} x {size}
- dataset key: {key} (all parameters: `{_PARAMS_FILE}`)
- lesion contrast: {LESION_CONTRAST} tissue units, x{OLDER_CONTRAST_FACTOR} for age >= {OLDER_AGE}
- `manifest.csv` columns: {", ".join(MANIFEST_COLUMNS[task])}

## Site profiles

{table}
"""
