"""The one in-memory form of a site's data, shared by every task (tabular and imaging)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["SiteData"]


@dataclass(frozen=True)
class SiteData:
    """One hospital's preprocessed train/test data.

    Tabular: ``x_*`` (n, n_features) float32, unscaled. Imaging: ``x_*`` (n, C, H, W)
    float32 after the bundle's image preprocessing. ``y_*``: classification labels, int64
    (n,); segmentation masks, float32 (n, 1, H, W) in {0, 1}. ``sensitive_*`` keep the
    raw sensitive attributes (one row per sample) for subgroup evaluation; they never
    leave the site.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    sensitive_train: pd.DataFrame
    sensitive_test: pd.DataFrame

    @property
    def n_train(self) -> int:
        """Number of training samples."""
        return int(self.y_train.shape[0])

    @property
    def n_test(self) -> int:
        """Number of test samples."""
        return int(self.y_test.shape[0])

    @classmethod
    def from_split(cls, name: str, x: np.ndarray, y: np.ndarray, sensitive: pd.DataFrame,
                   idx_train: np.ndarray, idx_test: np.ndarray) -> SiteData:
        """Cut a site's rows (``x``, ``y``, ``sensitive`` aligned) into its train and test
        parts by index."""
        sensitive = sensitive.reset_index(drop=True)
        return cls(
            name=name,
            x_train=x[idx_train],
            y_train=y[idx_train],
            x_test=x[idx_test],
            y_test=y[idx_test],
            sensitive_train=sensitive.iloc[idx_train].reset_index(drop=True),
            sensitive_test=sensitive.iloc[idx_test].reset_index(drop=True),
        )
