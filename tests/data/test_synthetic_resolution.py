"""Synthetic hospitals at clinical resolution (224x224, 256x256): files of that size in every
format, and lesions that scale with the image (not specks), as at 64x64.

Lesion radii are defined in pixels at 64x64 and multiplied by ``size / 64``
(``medfl.data.synthetic_anatomy``); MONAI's ``create_test_image_2d`` draws a disc of
integer radius r as the lattice points with x² + y² <= r², whose count N(r) is the Gauss
circle number (OEIS A000328): N(3) = 29, N(4) = 49, N(6) = 113, N(8) = 197, N(10) = 317,
N(14) = 613, N(16) = 797, N(21) = 1373, N(28) = 2453, N(32) = 3209.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

from medfl.data import synthetic_anatomy as anatomy
from medfl.data.images import ImagePreprocessing, load_image, load_mask
from medfl.data.synthetic import FILE_FORMATS, SiteProfile, generate_hospitals
from medfl.data.synthetic_files import EXTENSIONS

SEG = "segmentation"
CLS = "image-classification"
#: (task, size) -> (N(smallest radius), N(largest radius)). Radii: round(r64 * size / 64)
#: for the smallest, round(r64_max * size / 64) for the largest (Python rounds 10.5 to 10).
#: classification r64 in [3, 6]: 64 -> [3, 6], 224 -> [10, 21], 256 -> [12, 24];
#: segmentation r64 in [4, 8]: 64 -> [4, 8], 224 -> [14, 28], 256 -> [16, 32].
DISC_PIXELS = {(CLS, 64): (29, 113), (CLS, 224): (317, 1373),
               (SEG, 64): (49, 197), (SEG, 224): (613, 2453), (SEG, 256): (797, 3209)}


def _one_lesion_masks(task: str, size: int, n: int = 32) -> np.ndarray:
    """Masks (n, size, size) of n people with exactly one lesion each, as a site renders."""
    site = SiteProfile("a", n, 0.5, 0.5, 55, 10)
    masks = anatomy.render([(False, 50, 1)] * n, site, size=size, task=task,
                           rng=np.random.default_rng(0), state=np.random.RandomState(0),
                           blurs=anatomy.filters(size))[1]
    return masks


@pytest.mark.parametrize(("task", "size"), list(DISC_PIXELS))
def test_each_lesion_covers_a_disc_of_a_radius_scaled_with_the_image(task, size):
    low, high = DISC_PIXELS[(task, size)]
    pixels = _one_lesion_masks(task, size).reshape(32, -1).sum(1)  # 32 people
    assert pixels.min() >= low and pixels.max() <= high


#: The mean share of the image one lesion covers when r is uniform on its integer range (as
#: randint draws it): mean N(r) / size². Classification at 64: (29 + 49 + 81 + 113) / 4 /
#: 64² = 1.66%; at 224: mean of N(10..21) = 787.7, / 224² = 1.57%. Segmentation at 64:
#: (49 + 81 + 113 + 149 + 197) / 5 / 64² = 2.88%; at 224: mean of N(14..28) = 1438.3, 2.87%.
MEAN_SHARE = {(CLS, 64): 0.0166, (CLS, 224): 0.0157, (SEG, 64): 0.0288, (SEG, 224): 0.0287}


@pytest.mark.parametrize("task", [CLS, SEG])
def test_a_lesion_covers_the_same_share_of_the_image_at_224_as_at_64(task):
    assert MEAN_SHARE[(task, 224)] == pytest.approx(MEAN_SHARE[(task, 64)], rel=0.06)
    for size in (64, 224):
        # Within 20%: a disc must lie inside the body, so large ones are redrawn more often
        # (the measured share is a few percent under the uniform-radius figure).
        share = _one_lesion_masks(task, size, n=128).mean()
        assert share == pytest.approx(MEAN_SHARE[(task, size)], rel=0.2)
        assert share > 0.005  # half a percent of the image at least: no specks


def test_a_224_hospital_writes_224_pixel_files_in_every_format(tmp_path):
    sites = tuple(SiteProfile(f"s-{fmt}", 1, 1.0, 0.5, 55, 10, file_format=fmt)
                  for fmt in FILE_FORMATS)
    manifest = generate_hospitals(tmp_path / "data", task=SEG, seed=3, size=224, sites=sites)
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [f"s-{f}/0000.{EXTENSIONS[f]}" for f in FILE_FORMATS]
    prep = ImagePreprocessing(size=224, intensity="minmax")
    for row in rows:
        image = load_image(manifest.parent / row["path"], prep)
        mask = load_mask(manifest.parent / row["mask_path"], 224)
        assert image.shape[-2:] == (224, 224) and mask.shape[-2:] == (224, 224)
        # 1-3 lesions of at least N(14) pixels each, at most 3 N(28): 1.2-14.7% of the image
        share = float((mask > 0.5).mean())
        assert 613 / 224**2 <= share <= 3 * 2453 / 224**2
