"""Partitioners for data with no natural site: IID, Dirichlet label skew, quantity skew.

``iid``, ``dirichlet`` and ``quantity`` are Flower Datasets' partitioners
(``flwr_datasets.partitioner``), run offline on an in-memory ``datasets.Dataset`` that
holds only the row index and the label, so nothing is downloaded and the images
themselves never pass through Arrow. The result is one array
of row indices per partition; every row lands in exactly one partition.

``dirichlet-mix`` is MedFL's own, for many sites: Flower's ``DirichletPartitioner`` draws
each class's spread over the partitions, so with hundreds of partitions some get almost
no rows and it gives up after ten redraws. Here each partition draws its own class mix
from Dir(alpha) (Hsu et al., 2019) and all partitions have the same size, with a floor of
rows of every class, so it works for any number of partitions the rows allow.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

from medfl.config import PARTITIONS
from medfl.errors import ConfigError, DataError

__all__ = ["dirichlet_mix", "partition_indices"]


def _flower_datasets(scheme: str) -> tuple[Any, Any]:
    """Hugging Face's ``Dataset`` and Flower Datasets' partitioner module, offline; refused,
    naming the extra that brings them, in an install without them."""
    # Flower Datasets imports Hugging Face datasets: keep it offline whatever the caller set.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import flwr_datasets.partitioner as partitioners
        from datasets import Dataset
    except ImportError as exc:  # a deployment install: `pip install medfl`
        raise ConfigError(
            f"data.partition={scheme!r} splits one data set among simulated sites, which "
            "needs MedFL's simulation extra (pip install 'medfl[simulation]'; missing: "
            f"{exc.name}); a deployed site reads its own data with data.partition='natural'"
        ) from None
    return Dataset, partitioners


def partition_indices(labels: np.ndarray, *, num_partitions: int, scheme: str,
                      alpha: float = 0.5, seed: int = 0,
                      min_partition_size: int = 10) -> list[np.ndarray]:
    """Split rows ``0..len(labels)-1`` into ``num_partitions`` disjoint index arrays.

    Parameters
    ----------
    labels : (n,) class label per row (Dirichlet skews on it; others ignore it).
    scheme : ``iid`` (uniform random, equal sizes), ``dirichlet`` (per-class shares drawn
        from Dir(``alpha``): small alpha, strong label skew), ``dirichlet-mix`` (each
        partition's class mix drawn from Dir(``alpha``), equal sizes; see
        :func:`dirichlet_mix`), ``quantity`` (sizes proportional to 1, 2, ...,
        num_partitions: Flower's ``LinearPartitioner``).
    min_partition_size : Dirichlet redraws until every partition has this many rows.
    """
    if scheme not in PARTITIONS or scheme == "natural":
        valid = [p for p in PARTITIONS if p != "natural"]
        raise ConfigError(f"partition scheme {scheme!r} is not a partitioner; valid: {valid}")
    labels = np.asarray(labels)
    if num_partitions < 1 or len(labels) < num_partitions:
        raise DataError(f"cannot split {len(labels)} rows into {num_partitions} partitions")
    if scheme == "dirichlet-mix":
        return dirichlet_mix(labels, num_partitions=num_partitions, alpha=alpha, seed=seed)
    dataset_type, partitioners = _flower_datasets(scheme)
    if scheme == "iid":
        partitioner = partitioners.IidPartitioner(num_partitions=num_partitions)
        order = np.random.default_rng(seed).permutation(len(labels))
    elif scheme == "dirichlet":
        partitioner = partitioners.DirichletPartitioner(
            num_partitions=num_partitions, partition_by="label", alpha=alpha,
            min_partition_size=min_partition_size, self_balancing=False, shuffle=True,
            seed=seed)
        order = np.arange(len(labels))
    else:
        partitioner = partitioners.LinearPartitioner(num_partitions=num_partitions)
        order = np.random.default_rng(seed).permutation(len(labels))
    # IID and linear partitioners cut contiguous shards: shuffle rows first (seeded).
    partitioner.dataset = dataset_type.from_dict({"row": order.tolist(),
                                             "label": labels[order].tolist()})
    try:
        with warnings.catch_warnings():  # Dirichlet warns on every redraw it needs
            warnings.simplefilter("ignore", UserWarning)
            parts = [np.asarray(partitioner.load_partition(i)["row"], dtype=np.int64)
                     for i in range(num_partitions)]
    except ValueError as exc:  # e.g. Dirichlet cannot meet min_partition_size
        raise DataError(f"partition {scheme!r} failed for {len(labels)} rows into "
                        f"{num_partitions} parts: {exc}") from None
    return parts


def dirichlet_mix(labels: np.ndarray, *, num_partitions: int, alpha: float, seed: int,
                  min_per_class: int = 3) -> list[np.ndarray]:
    """Equal-sized partitions, each with its own class mix drawn from Dir(``alpha``).

    Every partition first gets ``min_per_class`` rows of each class (so every site can
    train and evaluate a classifier); the rest of its rows follow its drawn mix, scaled so
    the classes' totals match the rows available (iterative proportional fitting), then
    filled in a seeded random order of partitions. Deterministic in ``seed``.
    """
    labels = np.asarray(labels)
    n, rng = len(labels), np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    sizes = np.full(num_partitions, n // num_partitions)
    sizes[: n % num_partitions] += 1
    floor = min_per_class * len(classes)
    if counts.min() < min_per_class * num_partitions or sizes.min() < floor:
        raise DataError(f"dirichlet-mix cannot give each of {num_partitions} partitions "
                        f"{min_per_class} rows of each class: the rows have {counts.tolist()} "
                        f"per class; use fewer partitions")
    free = (sizes - floor).astype(np.float64)
    left = (counts - min_per_class * num_partitions).astype(np.float64)
    want = rng.dirichlet(np.full(len(classes), alpha), size=num_partitions) * free[:, None]
    for _ in range(100):  # match both margins: partition sizes and class totals
        want *= left / np.maximum(want.sum(axis=0), 1e-12)
        want *= (free / np.maximum(want.sum(axis=1), 1e-12))[:, None]
    take = np.zeros((num_partitions, len(classes)), dtype=np.int64)
    remaining = left.astype(np.int64)
    for i in rng.permutation(num_partitions):
        row = np.minimum(np.floor(want[i]).astype(np.int64), remaining)
        short = int(free[i]) - int(row.sum())
        for k in np.argsort(-remaining + row):  # top up from the classes with most rows left
            extra = min(short, int(remaining[k] - row[k]))
            row[k] += extra
            short -= extra
        take[i], remaining = row, remaining - row
    take += min_per_class
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    starts = np.vstack([np.zeros(len(classes), np.int64), np.cumsum(take, axis=0)])
    return [np.sort(np.concatenate([pools[k][starts[i, k]:starts[i + 1, k]]
                                    for k in range(len(classes))]))
            for i in range(num_partitions)]
