"""Partitioners for data with no natural site: IID, Dirichlet label skew, quantity skew.

These are Flower Datasets' partitioners (``flwr_datasets.partitioner``), run offline on an
in-memory ``datasets.Dataset`` that holds only the row index and the label, so nothing
is downloaded and the images themselves never pass through Arrow. The result is one array
of row indices per partition; every row lands in exactly one partition.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from medfl.config import PARTITIONS
from medfl.errors import ConfigError, DataError

__all__ = ["partition_indices"]


def partition_indices(labels: np.ndarray, *, num_partitions: int, scheme: str,
                      alpha: float = 0.5, seed: int = 0,
                      min_partition_size: int = 10) -> list[np.ndarray]:
    """Split rows ``0..len(labels)-1`` into ``num_partitions`` disjoint index arrays.

    Parameters
    ----------
    labels : (n,) class label per row (Dirichlet skews on it; others ignore it).
    scheme : ``iid`` (uniform random, equal sizes), ``dirichlet`` (per-class shares drawn
        from Dir(``alpha``): small alpha, strong label skew), ``quantity`` (sizes
        proportional to 1, 2, ..., num_partitions: Flower's ``LinearPartitioner``).
    min_partition_size : Dirichlet redraws until every partition has this many rows.
    """
    if scheme not in PARTITIONS or scheme == "natural":
        valid = [p for p in PARTITIONS if p != "natural"]
        raise ConfigError(f"partition scheme {scheme!r} is not a partitioner; valid: {valid}")
    labels = np.asarray(labels)
    if num_partitions < 1 or len(labels) < num_partitions:
        raise DataError(f"cannot split {len(labels)} rows into {num_partitions} partitions")
    # Flower Datasets imports Hugging Face datasets: keep it offline whatever the caller set.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, LinearPartitioner

    if scheme == "iid":
        partitioner = IidPartitioner(num_partitions=num_partitions)
        order = np.random.default_rng(seed).permutation(len(labels))
    elif scheme == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions, partition_by="label", alpha=alpha,
            min_partition_size=min_partition_size, self_balancing=False, shuffle=True,
            seed=seed)
        order = np.arange(len(labels))
    else:
        partitioner = LinearPartitioner(num_partitions=num_partitions)
        order = np.random.default_rng(seed).permutation(len(labels))
    # IID and linear partitioners cut contiguous shards: shuffle rows first (seeded).
    partitioner.dataset = Dataset.from_dict({"row": order.tolist(),
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
