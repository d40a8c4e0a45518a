"""SHAP values of a tabular model's logit, computed at a site on its own rows.

Interventional (independent-masker) SHAP: a feature left out of a coalition takes its
values from background rows, independently of the features kept in. For a linear logit
this is exactly ``w_i * (x_i - mean(background_i))``; for anything else we use shap's
exact explainer, which enumerates all ``2**n_features`` coalitions - cheap for the ~13
features of the tabular tasks, and free of the sampling noise of the permutation or kernel
explainers, so two runs at one site give the same numbers.

The per-row values stay at the site; what may be shared is an aggregate such as
:func:`mean_abs_shap`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["mean_abs_shap", "shap_values"]

logger = logging.getLogger(__name__)

# Exact enumeration costs 2**n_features model evaluations per row and background row;
# past this the cost explodes and a sampling explainer would be the honest choice.
MAX_EXACT_FEATURES = 16


def _as_rows(name: str, a: np.ndarray, n_features: int | None = None) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n_rows, n_features), got shape "
                         f"{a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"{name} has 0 rows (shape {a.shape}); SHAP values need at least "
                         f"one row")
    if n_features is not None and a.shape[1] != n_features:
        raise ValueError(f"{name} has {a.shape[1]} features but x has {n_features}; both "
                         f"must have the model's input width")
    return a


def _single_linear(model: nn.Module) -> nn.Linear | None:
    """The model's only layer when it is one ``nn.Linear`` (bare or in a Sequential)."""
    if isinstance(model, nn.Linear):
        return model
    if isinstance(model, nn.Sequential) and len(model) == 1 and isinstance(model[0], nn.Linear):
        return model[0]
    return None


def _logit_fn(model: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """Rows (m, f) -> logits (m,) as float64 (shap sums many small terms)."""
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")

    def f(rows: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = model(torch.as_tensor(rows, dtype=torch.float32, device=device))
        if out.numel() != len(rows):
            raise ValueError(f"the model must return one logit per row, shape (n, 1) or "
                             f"(n,), got {tuple(out.shape)} for {len(rows)} rows")
        return out.reshape(-1).double().cpu().numpy()

    return f


def _explain(model: nn.Module, x: np.ndarray, masker: Any) -> np.ndarray:
    """SHAP values of ``x`` (n, f): closed form for a single linear layer, else exact
    enumeration of the coalitions (at most ``MAX_EXACT_FEATURES`` features)."""
    import shap

    linear = _single_linear(model)
    if linear is not None:
        coef = linear.weight.detach().double().cpu().numpy()
        if coef.shape[0] != 1:
            raise ValueError(f"the model must return one logit per row, got a linear "
                             f"layer with {coef.shape[0]} outputs")
        intercept = linear.bias.detach().double().cpu().numpy() if linear.bias is not None \
            else np.zeros(1)
        explainer = shap.LinearExplainer((coef[0], float(intercept[0])), masker)
        return np.asarray(explainer.shap_values(x), dtype=np.float64)
    if x.shape[1] > MAX_EXACT_FEATURES:
        raise ValueError(f"exact SHAP enumerates 2**n_features coalitions; "
                         f"{x.shape[1]} features is over the limit of {MAX_EXACT_FEATURES}")
    exact = shap.explainers.Exact(_logit_fn(model), masker)
    # One model call per row: all coalitions times the background rows they change.
    return np.asarray(exact(x, silent=True).values, dtype=np.float64)


def shap_values(model: nn.Module, x: np.ndarray, *, background: np.ndarray,
                max_background: int = 50, seed: int = 0) -> np.ndarray:
    """Interventional SHAP values of the model's logit for each row of ``x``.

    Parameters
    ----------
    model : maps a float32 tensor (n, n_features) to logits (n, 1) or (n,).
    x : (n, n_features) rows to explain, in the model's input scale.
    background : (m, n_features) reference rows (the site's training rows, say) whose
        values stand in for left-out features.
    max_background : if ``m`` is larger, a seeded random subset of this many rows is used;
        the cost is linear in it.
    seed : seeds that subset.

    Returns
    -------
    (n, n_features) float64 SHAP values in logit units. Each row sums to the row's logit
    minus the mean logit over the (subsampled) background.

    Notes
    -----
    A non-linear model costs ``2**n_features * m`` model evaluations per row: about
    0.05-0.1 s a row on a CPU for 13 features and 50 background rows. The first call in a
    process also compiles shap's numba kernels (about 5 s).
    """
    # Imported here: shap takes seconds to import, and an imaging site never needs it.
    import shap

    if max_background < 1:
        raise ValueError(f"max_background must be >= 1, got {max_background}")
    x = _as_rows("x", x)
    bg = _as_rows("background", background, x.shape[1])
    if len(bg) > max_background:
        rng = np.random.default_rng(seed)
        bg = bg[np.sort(rng.choice(len(bg), size=max_background, replace=False))]
    # max_samples=len(bg): shap's masker would otherwise subsample again, with its own RNG.
    masker = shap.maskers.Independent(bg, max_samples=len(bg))

    was_training = model.training
    model.eval()
    try:
        values = _explain(model, x, masker)
    finally:
        model.train(was_training)
    logger.debug("SHAP values for %d rows over %d background rows", len(x), len(bg))
    return values.reshape(x.shape)


def mean_abs_shap(model: nn.Module, x: np.ndarray, *, background: np.ndarray,
                  max_background: int = 50, seed: int = 0) -> np.ndarray:
    """Global importance: mean over the rows of ``x`` of |SHAP|, shape (n_features,).

    Arguments as for :func:`shap_values`. An aggregate over the rows, so the kind of
    number a site may share (subject to its own minimum-count rules).
    """
    values = shap_values(model, x, background=background, max_background=max_background,
                         seed=seed)
    return np.abs(values).mean(axis=0)
