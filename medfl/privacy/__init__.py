"""Differential privacy: DP-SGD with Opacus and its accounting."""

from __future__ import annotations

from medfl.privacy.dp import (
    DPPlan,
    attach_dp,
    calibrate_noise,
    epsilon_from_history,
    make_accountant,
)

__all__ = ["DPPlan", "attach_dp", "calibrate_noise", "epsilon_from_history", "make_accountant"]
