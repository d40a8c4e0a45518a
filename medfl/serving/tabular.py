"""Tabular inference from a verified bundle: validate raw records, preprocess as in
training, predict, and explain with SHAP. No web code here (``deploy/api`` serves it)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medfl.config import ModelConfig
from medfl.data.scaling import Standardizer
from medfl.data.tabular_encoding import encode_columns, missing_mode
from medfl.errors import BundleError, DataError
from medfl.models import build_model
from medfl.serving.bundle import Bundle


class InputError(DataError):
    """A request record is invalid; ``field`` names where (e.g. ``records[2].age``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _check_value(col: dict[str, Any], value: Any, field: str) -> None:
    """``InputError`` naming ``field`` unless ``value`` is valid for input column ``col``."""
    if value is None:
        if missing_mode(col) == "refuse":
            raise InputError(field, "is null, but this feature does not accept a missing "
                             "value (its schema declares \"missing\": \"refuse\"); send a "
                             + (f"value between {col['bounds'][0]} and {col['bounds'][1]}"
                                if col["type"] == "numeric" else f"one of {col['levels']}"))
        return
    text_levels = col["type"] == "categorical" and isinstance(col["levels"][0], str)
    if text_levels:
        ok = isinstance(value, str)
    else:
        try:
            ok = (not isinstance(value, bool) and isinstance(value, (int, float))
                  and math.isfinite(float(value)))
        except OverflowError:  # an int too large for a float
            ok = False
    if not ok:
        raise InputError(field, f"must be one of {col['levels']}" if text_levels
                         else "must be a finite number")
    if col["type"] == "numeric":
        lo, hi = col["bounds"]
        if not lo <= value <= hi:
            raise InputError(field, f"must be between {lo} and {hi}")
    elif value not in col["levels"]:
        raise InputError(field, f"must be one of {col['levels']}")


@dataclass
class TabularModel:
    """The global model of a tabular run, ready to predict from raw records."""

    bundle: Bundle
    model: torch.nn.Module
    scaler: Standardizer
    columns: list[dict[str, Any]]
    labels: list[str]
    threshold: float

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> TabularModel:
        """Build the network the manifest names, load its weights (strict) in eval mode,
        and restore the training-time standardiser (identity when none was stored).

        Raises ``BundleError`` when the bundle has no tabular input schema or the
        weights do not fit the architecture.
        """
        m = bundle.manifest
        arch = m["architecture"]
        if "columns" not in m.get("input_schema", {}):
            raise BundleError("the bundle has no tabular input schema (is it an imaging model?)")
        model = build_model(ModelConfig(arch["name"], int(arch.get("hidden", 0)), 8),
                            n_features=int(arch["n_features"]), n_outputs=int(arch["n_outputs"]))
        try:
            model.load_state_dict(bundle.weights, strict=True)
        except RuntimeError as exc:
            raise BundleError(f"weights do not fit architecture {arch['name']!r}: {exc}") from None
        model.eval()
        std = m["preprocessing"].get("standardizer")
        scaler = Standardizer.from_dict(std) if std else Standardizer((), (), ())
        return cls(bundle, model, scaler, m["input_schema"]["columns"], list(m["label_names"]),
                   float(m.get("threshold", 0.5)))

    @property
    def version(self) -> str:
        """The model version: the first 12 hex digits of the weights' sha256."""
        return self.bundle.manifest["weights_sha256"][:12]

    # --- input -----------------------------------------------------------------------

    def validate(self, records: list[dict[str, Any]]) -> np.ndarray:
        """Raw records -> standardised feature matrix; ``InputError`` names the first bad
        field and what would be valid. Values outside the public bounds are refused;
        ``null`` is accepted only for a feature whose schema declares ``"missing"``
        ``"impute"`` (filled with the bundle's value) or ``"level"``."""
        expected = [c["name"] for c in self.columns]
        for i, rec in enumerate(records):
            if not isinstance(rec, dict):
                raise InputError(f"records[{i}]", "must be an object of column: value")
            unknown = sorted(set(rec) - set(expected))
            if unknown:
                raise InputError(f"records[{i}].{unknown[0]}",
                                 f"unknown column; expected exactly {expected}")
            for col in self.columns:
                if col["name"] not in rec:
                    raise InputError(f"records[{i}].{col['name']}", "is missing")
                _check_value(col, rec[col["name"]], f"records[{i}].{col['name']}")
        table = {name: [rec[name] for rec in records] for name in expected}
        # The encoder training used, driven by the bundle's own schema (any tabular task).
        return self.scaler.transform(encode_columns(table, self.columns))

    # --- output ----------------------------------------------------------------------

    @torch.no_grad()
    def logits(self, x: np.ndarray) -> np.ndarray:
        """Positive-class logits, shape (n,) float64, of a standardised (n, n_features)
        matrix."""
        return self.model(torch.as_tensor(x, dtype=torch.float32)).squeeze(-1).double().numpy()

    def predict(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Label and class probabilities per record, in request order."""
        p = 1.0 / (1.0 + np.exp(-self.logits(self.validate(records))))
        return [{"label": self.labels[int(pi >= self.threshold)],
                 "probabilities": {self.labels[0]: float(1 - pi), self.labels[1]: float(pi)}}
                for pi in p]

    def explain(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """SHAP values of the logit per input feature, against a reference patient.

        The reference is the consortium-average patient in standardised units (0 for the
        standardised numeric features) with every binary / one-hot feature 0: a fixed,
        data-free baseline (the server holds no patient rows to use as background).
        """
        import shap

        x = self.validate(records)
        baseline = np.zeros((1, x.shape[1]))
        explainer = shap.Explainer(self.logits, shap.maskers.Independent(baseline),
                                   algorithm="exact")
        values = explainer(x.astype(np.float64)).values
        base = float(self.logits(baseline)[0])
        names = self.bundle.manifest["input_schema"]["features"]
        return [{"base_value": base,
                 "shap_values": {n: float(v) for n, v in zip(names, row, strict=True)}}
                for row in values]
