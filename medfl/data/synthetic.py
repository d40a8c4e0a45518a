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
   (see ``synthetic_files.to_file``), so the scanner shift is in the files, not only in memory.

Output is laid out as a hospital would hand it over (``manifest.csv``, ``<site>/<index>.<ext>``,
plus ``README.md`` and ``generator.json``), so one loader reads both. No patient data used.

The profiles are :mod:`medfl.data.synthetic_profiles`, the rendering
:mod:`medfl.data.synthetic_anatomy`, the file writers :mod:`medfl.data.synthetic_files`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np

from medfl.data import synthetic_anatomy as anatomy
from medfl.data.synthetic_anatomy import LESION_CONTRAST, OLDER_AGE, OLDER_CONTRAST_FACTOR
from medfl.data.synthetic_files import EXTENSIONS, to_file, write_mask
from medfl.data.synthetic_profiles import (
    FILE_FORMATS,
    LABEL_NAMES,
    TASKS,
    SiteProfile,
    check_task,
    default_sites,
)
from medfl.errors import ConfigError
from medfl.io import publish_dataset

__all__ = ["FILE_FORMATS", "GENERATOR_VERSION", "LABEL_NAMES", "TASKS", "SiteProfile",
           "dataset_key", "default_sites", "generate_hospitals"]

logger = logging.getLogger(__name__)

#: Bumped whenever the same arguments would render different pixels (invalidates caches).
GENERATOR_VERSION = "2"
MANIFEST_COLUMNS = {"image-classification": ("path", "label", "site", "sex", "age"),
                    "segmentation": ("path", "mask_path", "site", "sex", "age")}
_PARAMS_FILE = "generator.json"
_MIN_SIZE = 16
_CHUNK = 64  # images rendered together: bounded memory at large sizes, few MONAI calls


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
    check_task(task)
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
    blurs = anatomy.filters(size)
    rows = []
    for first in range(0, site.n, _CHUNK):
        people = [anatomy.draw_person(site, task, rng)
                  for _ in range(min(_CHUNK, site.n - first))]
        units, masks = anatomy.render(people, site, size=size, task=task, rng=rng, state=state,
                                      blurs=blurs)
        for j, (female, age, n_lesions) in enumerate(people):
            sex, stem = ("F" if female else "M"), f"{site.name}/{first + j:04d}"
            path = f"{stem}.{EXTENSIONS[site.file_format]}"
            to_file(root / path, units[j], site.file_format, patient=(sex, age),
                    uid_entropy=[key, site.name, str(first + j)])
            # A NIfTI site stores its masks as NIfTI too: tools keep image and mask in one
            # format, and the loader refuses a NIfTI/PNG mix (their axis orders differ).
            nifti = site.file_format == "nifti"
            target = (f"{stem}_mask.{'nii.gz' if nifti else 'png'}" if task == "segmentation"
                      else LABEL_NAMES[n_lesions])
            if task == "segmentation":
                write_mask(root / target, masks[j], nifti=nifti)
            rows.append((path, target, site.name, sex, age))
    return rows


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
