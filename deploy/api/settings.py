"""Service settings, read from ``MEDFL_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Default body limits. Uncompressed CR/DX radiographs are commonly 5-30 MB; the body is
#: spooled to a temporary file as it arrives, so the limit costs disk, not memory, and
#: the decoding budget (``decode_budget_mb``) still bounds what decoding an image costs.
IMAGE_BODY_BYTES = 40_000_000
TABULAR_BODY_BYTES = 4_000_000


class Settings(BaseSettings):
    """``MEDFL_BUNDLE`` (a run folder or bundle), ``MEDFL_API_KEY`` (unset: no key needed,
    but then only requests that arrive over loopback are answered), ``MEDFL_MAX_BODY_BYTES``,
    ``MEDFL_MAX_BATCH``, ``MEDFL_MAX_IMAGES``, ``MEDFL_PUBLIC_KEY``, and the image-decoding
    bounds ``MEDFL_DECODE_BUDGET_MB``, ``MEDFL_MAX_CONCURRENT_DECODES``,
    ``MEDFL_DECODE_WAIT_S``."""

    model_config = SettingsConfigDict(env_prefix="MEDFL_", extra="ignore")

    bundle: Path = Field(description="run directory or model bundle to serve")
    api_key: SecretStr | None = Field(
        default=None, min_length=16,
        description="required in X-API-Key if set (16+ characters; empty is refused)")
    max_body_bytes: int | None = Field(
        default=None, gt=0,
        description="larger bodies get 413; unset: 40 MB for an imaging bundle (an "
                    "uncompressed 30 MB radiograph with room to spare), 4 MB for a tabular "
                    "one (about 20,000 records)")
    max_batch: int = Field(default=256, gt=0, description="records per /predict request")
    max_images: int = Field(default=16, gt=0, description="uploaded files per request")
    decode_budget_mb: int = Field(
        default=256, gt=0,
        description="memory one request may use to decode an image: an upload whose header "
                    "declares more pixels than this holds (40 bytes per pixel: 256 MiB is "
                    "about 6.7 million pixels, e.g. 2590 x 2590) gets 413 before decoding")
    max_concurrent_decodes: int = Field(
        default=2, gt=0,
        description="imaging requests decoded and predicted at once (per worker process); "
                    "others wait for a slot")
    decode_wait_s: float = Field(
        default=30.0, ge=0,
        description="how long an imaging request waits for a decoding slot before 503")
    public_key: Path | None = Field(
        default=None, description="Ed25519 public key (PEM): serve only bundles it verifies")

    def body_limit(self, *, image: bool) -> int:
        """The request body limit in bytes: ``max_body_bytes`` when set, else the default
        for the kind of bundle served (imaging or tabular)."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return IMAGE_BODY_BYTES if image else TABULAR_BODY_BYTES
