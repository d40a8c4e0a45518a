"""Flower Datasets partitioners (offline) and the site's MONAI augmentation recipes."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from medfl.data.augment import build_augmentation
from medfl.data.partition import partition_indices
from medfl.errors import ConfigError, DataError

LABELS = np.random.default_rng(0).integers(0, 2, 400)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "dirichlet-mix", "quantity"])
def test_every_row_lands_in_exactly_one_partition_reproducibly(scheme):
    parts = partition_indices(LABELS, num_partitions=4, scheme=scheme, alpha=0.5, seed=1)
    rows = np.concatenate(parts)
    assert len(parts) == 4 and sorted(rows.tolist()) == list(range(len(LABELS)))
    again = partition_indices(LABELS, num_partitions=4, scheme=scheme, alpha=0.5, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_iid_sizes_are_equal_and_quantity_sizes_grow_linearly():
    iid = partition_indices(LABELS, num_partitions=4, scheme="iid", seed=0)
    assert [len(p) for p in iid] == [100] * 4
    lin = partition_indices(LABELS, num_partitions=4, scheme="quantity", seed=0)
    # weights 1:2:3:4 of 400 rows
    assert [len(p) for p in lin] == [40, 80, 120, 160]


@pytest.mark.parametrize("scheme", ["dirichlet", "dirichlet-mix"])
def test_smaller_alpha_skews_labels_more(scheme):
    def spread(alpha: float) -> float:
        prev = [LABELS[p].mean() for seed in range(5) for p in partition_indices(
            LABELS, num_partitions=4, scheme=scheme, alpha=alpha, seed=seed)]
        return float(np.std(prev))

    assert spread(0.1) > spread(100.0) + 0.1
    assert spread(100.0) < 0.1  # near IID: every partition's prevalence near 0.5


def test_dirichlet_mix_splits_a_thousand_ways_where_flowers_partitioner_gives_up():
    labels = (np.random.default_rng(1).random(100_000) < 0.4).astype(np.int64)
    with pytest.raises(DataError, match="1000 parts"):
        partition_indices(labels, num_partitions=1000, scheme="dirichlet", alpha=0.5)
    parts = partition_indices(labels, num_partitions=1000, scheme="dirichlet-mix", alpha=0.5)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels)))
    assert {len(p) for p in parts} == {100}  # 100,000 rows, equal sizes
    positives = np.array([labels[p].sum() for p in parts])
    # the floor: 3 rows of each class everywhere, so every site can train a classifier
    assert positives.min() >= 3 and (100 - positives).min() >= 3
    # label skew: Beta(0.5, 0.5) mixes put many sites far from the 40% prevalence
    assert np.mean(np.abs(positives / 100 - 0.4) > 0.3) > 0.2


def test_dirichlet_mix_refuses_more_partitions_than_its_floor_allows():
    labels = np.array([0] * 50 + [1] * 10)
    with pytest.raises(DataError, match="4 partitions 3 rows of each class"):
        partition_indices(labels, num_partitions=4, scheme="dirichlet-mix")


def test_partition_errors_name_what_is_valid():
    with pytest.raises(ConfigError, match="iid"):
        partition_indices(LABELS, num_partitions=2, scheme="natural")
    with pytest.raises(DataError, match="3 rows into 4"):
        partition_indices(LABELS[:3], num_partitions=4, scheme="iid")


def test_a_deployment_install_without_the_simulation_extra_names_it(monkeypatch):
    # `pip install medfl` (a site, the images) has no Flower Datasets: a partitioner asked
    # for there says which extra brings it, and that a site's own data needs none
    monkeypatch.setitem(sys.modules, "flwr_datasets.partitioner", None)
    with pytest.raises(ConfigError, match=r"medfl\[simulation\].*flwr_datasets"):
        partition_indices(LABELS, num_partitions=4, scheme="iid", alpha=0.5, seed=1)
    # the partitioner MedFL implements itself needs no extra
    assert len(partition_indices(LABELS, num_partitions=4, scheme="dirichlet-mix",
                                 alpha=0.5, seed=1)) == 4


def test_segmentation_flip_moves_mask_with_image_and_keeps_it_binary():
    image = torch.zeros(1, 16, 16)
    image[0, 4:8, 1:4] = 1.0  # a bright block on the left
    mask = (image > 0).float()
    aug = build_augmentation("standard", segmentation=True, seed=0)
    for _ in range(20):
        x, y = aug(image, mask)
        assert set(torch.unique(y).tolist()) <= {0.0, 1.0}
        assert x.shape == image.shape and y.shape == mask.shape
        # rotation/flip are applied to both: the mask still covers the block's centre
        # of mass, which stays bright after intensity jitter of at most 10 % / 0.05
        cy, cx = [float(v.float().mean()) for v in torch.nonzero(y[0], as_tuple=True)]
        assert x[0, round(cy), round(cx)] > 0.5


def test_classification_labels_are_untouched_and_none_means_no_transform():
    assert build_augmentation("none", segmentation=False, seed=0) is None
    aug = build_augmentation("light", segmentation=False, seed=0)
    image = torch.arange(16.0).reshape(1, 4, 4)
    flipped = 0
    for _ in range(40):
        x, y = aug(image, torch.tensor(1.0))
        assert float(y) == 1.0
        assert torch.equal(x, image) or torch.equal(x, image.flip(-1))
        flipped += torch.equal(x, image.flip(-1))
    assert 5 < flipped < 35  # p = 0.5 flips
    with pytest.raises(ConfigError, match="light"):
        build_augmentation("heavy", segmentation=False, seed=0)
