"""Exception hierarchy: every error MedFL raises on bad input is a ``MedflError``."""

from __future__ import annotations

__all__ = ["MedflError", "ConfigError", "DataError", "PrivacyBudgetExceeded", "BundleError",
           "AttemptFailed", "SiteRefused"]


class MedflError(Exception):
    """Base class: the message names what was wrong and what would be valid."""


class ConfigError(MedflError, ValueError):
    """A run-config or node-config key is unknown, or its value is invalid."""


class DataError(MedflError, ValueError):
    """A data file is missing, corrupt, tampered with, or does not fit the schema."""


class SiteRefused(DataError):
    """A site refused to take part (its data cannot, or may not, join the run), so the run
    stops before training; the message names the site and what the consortium can do."""


class PrivacyBudgetExceeded(MedflError):
    """A site was asked to spend more privacy budget than it may."""


class BundleError(MedflError, ValueError):
    """A model bundle is incomplete, tampered with, or does not match its manifest."""


class AttemptFailed(MedflError):
    """An attempt failed after its privacy spend was reserved.

    Its message is one fixed text: whatever failed, nothing about the data may leave."""

    MESSAGE = ("the attempt failed after its privacy spend was reserved; the spend stays "
               "in the site's ledger (details are in the site's own log)")

    def __init__(self) -> None:
        super().__init__(self.MESSAGE)
