"""MedFL: federated learning for hospital consortia, with differential privacy.

Research and education software. Not a medical device; not for clinical use.
"""

from __future__ import annotations

from medfl.errors import BundleError, ConfigError, DataError, MedflError, PrivacyBudgetExceeded

__version__ = "0.1.0"
DISCLAIMER = "Research software: not a medical device and not for clinical use."

__all__ = [
    "DISCLAIMER",
    "BundleError",
    "ConfigError",
    "DataError",
    "MedflError",
    "PrivacyBudgetExceeded",
    "__version__",
]
