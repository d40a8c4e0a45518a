"""Synthetic hospitals' profiles: each site's population and scanner signature."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from medfl.errors import ConfigError

__all__ = ["FILE_FORMATS", "LABEL_NAMES", "TASKS", "SiteProfile", "check_task", "default_sites"]

TASKS = ("image-classification", "segmentation")
FILE_FORMATS = ("png", "png16", "nifti", "dicom")
LABEL_NAMES = ("absent", "present")


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
    check_task(task)
    # name, n, prevalence, female_fraction, age_mean, age_sd, intensity_scale,
    # intensity_offset, noise_sd, blur_sigma, resolution, file_format
    return (
        SiteProfile("riverside", 360, 0.35, 0.52, 57, 12, 1.00, 0.02, 0.030, 0.5, 1.00, "png"),
        SiteProfile("hillcrest", 300, 0.50, 0.45, 66, 10, 0.85, 0.10, 0.040, 0.8, 1.00, "png16"),
        SiteProfile("lakeside", 240, 0.25, 0.60, 50, 14, 1.20, -0.05, 0.040, 1.0, 0.75, "nifti"),
        SiteProfile("summit", 150, 0.40, 0.50, 62, 11, 1.10, 0.05, 0.060, 1.2, 0.50, "dicom"),
    )


def check_task(task: str) -> None:
    """``ConfigError`` (with a "did you mean") unless ``task`` is one of :data:`TASKS`."""
    if task not in TASKS:
        close = difflib.get_close_matches(str(task), TASKS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown synthetic task {task!r}{hint}; valid tasks are {TASKS}")
