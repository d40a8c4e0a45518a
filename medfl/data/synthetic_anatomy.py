"""How a synthetic image is rendered: anatomy at the output size, then the site's scanner.

Tissue units: air 0.05, body 0.45, lesion contrast 0.21-0.35; the scanner maps them to
modality units (``intensity_scale * x + intensity_offset``, roughly 0..1). Discs come from
MONAI's ``create_test_image_2d``; blurs and resizes are MONAI transforms.
"""

from __future__ import annotations

from typing import Any, TypedDict

import numpy as np
from monai.data.synthetic import create_test_image_2d
from monai.transforms import GaussianSmooth, Resize
from monai.utils import convert_to_numpy

from medfl.data.synthetic_profiles import SiteProfile

__all__ = ["LESION_CONTRAST", "OLDER_AGE", "OLDER_CONTRAST_FACTOR", "draw_person", "filters",
           "render"]


class _Structure(TypedDict):
    """Background discs of one kind: radius (pixels at 64x64), contrast and count ranges."""

    radius: tuple[int, int]
    contrast: tuple[float, float]
    count: tuple[int, int]


# Anatomy in tissue units (before the scanner). Radii are pixels at 64x64, scaled with size.
AIR, BODY, TEXTURE_AMPLITUDE = 0.05, 0.45, 0.025
LESION_CONTRAST, OLDER_AGE, OLDER_CONTRAST_FACTOR = 0.35, 65, 0.6
LESION_RADIUS = {"image-classification": (3, 6), "segmentation": (4, 8)}  # inclusive
LARGE_STRUCTURE: _Structure = {"radius": (6, 11), "contrast": (0.04, 0.10), "count": (2, 4)}
SMALL_STRUCTURE: _Structure = {"radius": (2, 4), "contrast": (0.02, 0.05), "count": (1, 2)}


def filters(size: int) -> tuple[GaussianSmooth, GaussianSmooth, GaussianSmooth]:
    """The (texture, structure, lesion) blurs for images of ``size`` pixels a side."""
    texture_blur, structure_blur, lesion_blur = (
        GaussianSmooth(sigma * size / 64) for sigma in (6.0, 1.0, 0.6))
    return texture_blur, structure_blur, lesion_blur


def render(people: list[tuple[bool, int, int]], site: SiteProfile, *, size: int, task: str,
           rng: np.random.Generator, state: np.random.RandomState,
           blurs: tuple[GaussianSmooth, GaussianSmooth, GaussianSmooth]
           ) -> tuple[np.ndarray, np.ndarray]:
    """Render one chunk of people (from :func:`draw_person`) as the site's scanner sees them.

    Returns
    -------
    units : (n, size, size) float64, modality units.
    masks : (n, size, size) bool, the union of each image's lesions.
    """
    texture_blur, structure_blur, lesion_blur = blurs
    scenes = [_scene(size, *person, task=task, rng=rng, state=state) for person in people]
    body, structures, lesions, masks = (np.stack(x) for x in zip(*scenes, strict=True))
    texture = _apply(texture_blur, rng.standard_normal((len(people), size, size)))
    texture *= TEXTURE_AMPLITUDE / np.maximum(texture.std(axis=(1, 2), keepdims=True), 1e-12)
    # Lesions get a narrower edge blur than normal structures: sharp-ish small discs.
    tissue = (_apply(structure_blur, AIR + (BODY - AIR + texture) * body + structures)
              + _apply(lesion_blur, lesions))
    return _scan(tissue, site, rng), masks


def draw_person(site: SiteProfile, task: str, rng: np.random.Generator) -> tuple[bool, int, int]:
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


def _apply(transform: Any, images: np.ndarray) -> np.ndarray:
    """Run a MONAI transform on a stack (n, H, W) as channels: one call per stack, since
    per-call overhead (torch threads on tiny convolutions) would dominate; float64 out."""
    return convert_to_numpy(transform(images.astype(np.float32))).astype(np.float64)
