"""A site's report release: what leaves for the final report, already noised.

One Gaussian release per site and run (:mod:`medfl.privacy.mechanisms`) over every cell
(cell 0 = whole test set, then each declared subgroup level):

- classification: each cell's class-wise score histogram on the public grid
  (:mod:`medfl.evaluation.histograms`), a (2, B) array of noisy counts;
- segmentation: each cell's noisy sums over images of ``SEG_SUMS`` (per-image Dice and
  IoU and their squares in [0, 1], the number of images with a defined HD95, and HD95 and
  its square divided by the public image diagonal, so each in [0, 1]);
- the explanation: the noisy sum over test cases of each case's explanation vector
  (|SHAP| per feature clipped to L2 norm ``SHAP_CLIP``, or a Grad-CAM grid that sums to 1).

The server pools the sites' noisy sums (:mod:`medfl.evaluation.population`); the noise
standard deviations travel with the values (they depend only on public settings and the
site's own policy), so that confidence intervals include the noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from medfl.evaluation.histograms import N_BINS
from medfl.wire import WireKeys

#: the segmentation sums of one cell, in wire order
SEG_SUMS = ("n", "dice", "dice_sq", "iou", "iou_sq", "hd_n", "hd", "hd_sq")
#: per-case L2 clip of the |SHAP| vector (logit units) before it is summed
SHAP_CLIP = 4.0


@dataclass(frozen=True)
class CellRelease:
    """One cell's noisy statistics: ``hist`` (2, B) for classification, ``sums``
    (len(SEG_SUMS),) for segmentation."""

    hist: np.ndarray | None = None
    sums: np.ndarray | None = None


@dataclass(frozen=True)
class ReportStats:
    """A site's report release (see the module docstring).

    ``hist_std``: the noise standard deviation of every histogram count; ``sums_std``:
    of each segmentation sum (per ``SEG_SUMS``); ``explain``: the noisy sum of the
    clipped explanation vectors, ``explain_std`` its noise per component, ``explain_unit``
    the scale each case's vector is bounded by; ``test_epsilon``: this site's ε on its
    test rows in this run, after this release. All noise 0: an exact release.
    """

    cells: tuple[CellRelease, ...]
    hist_std: float = 0.0
    sums_std: tuple[float, ...] = ()
    explain: tuple[float, ...] = ()
    explain_std: float = 0.0
    test_epsilon: float = 0.0

    WIRE: ClassVar[WireKeys] = WireKeys(
        scalars=("hist-std", "explain-std", "test-epsilon"),
        lists=("hist", "sums", "sums-std", "explain"),
        fixed_length={"hist": "n_hist", "sums": "n_sums", "sums-std": "n_seg",
                      "explain": "n_explain"},
        noise={"hist-std": "hist", "sums-std": "sums", "explain-std": "explain"},
    )

    def to_metrics(self) -> dict[str, float | list[float]]:
        """Flat wire form: ``hist`` is every cell's (2, B) row-major, cell after cell;
        ``sums`` every cell's sums, cell after cell (empty for classification)."""
        hists = [c.hist for c in self.cells if c.hist is not None]
        sums = [c.sums for c in self.cells if c.sums is not None]
        return {
            "hist": [float(v) for h in hists for v in np.asarray(h).reshape(-1)],
            "sums": [float(v) for s in sums for v in np.asarray(s).reshape(-1)],
            "sums-std": [float(v) for v in self.sums_std] if sums else [],
            "hist-std": float(self.hist_std), "explain": [float(v) for v in self.explain],
            "explain-std": float(self.explain_std), "test-epsilon": float(self.test_epsilon),
        }

    @classmethod
    def from_metrics(cls, m: dict[str, Any], *, n_cells: int) -> ReportStats:
        """Parse :meth:`to_metrics`' form for a run with ``n_cells`` cells."""
        hist = np.asarray(m.get("hist", []), dtype=np.float64)
        sums = np.asarray(m.get("sums", []), dtype=np.float64)
        if len(hist):
            cells = tuple(CellRelease(hist=h) for h in hist.reshape(n_cells, 2, N_BINS))
        else:
            cells = tuple(CellRelease(sums=s) for s in sums.reshape(n_cells, len(SEG_SUMS)))
        return cls(cells, hist_std=float(m.get("hist-std", 0.0)),
                   sums_std=tuple(float(v) for v in m.get("sums-std", [])),
                   explain=tuple(float(v) for v in m.get("explain", [])),
                   explain_std=float(m.get("explain-std", 0.0)),
                   test_epsilon=float(m.get("test-epsilon", 0.0)))
