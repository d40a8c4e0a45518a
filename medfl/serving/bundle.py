"""The model bundle: ``weights.safetensors`` + ``manifest.json``; never a pickle.

The manifest records the architecture, the input schema and preprocessing a caller
needs to reproduce training-time inputs, the label names and operating threshold, and
the sha256 of the weights file, which :func:`load_bundle` verifies.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save

from medfl.errors import BundleError
from medfl.io import atomic_write_bytes, atomic_write_json

MANIFEST_VERSION = 1
WEIGHTS = "weights.safetensors"
MANIFEST = "manifest.json"
REQUIRED_KEYS = ("manifest_version", "architecture", "input_schema", "preprocessing",
                 "label_names", "weights_sha256", "created")


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle: its folder, parsed ``manifest.json`` and the weights
    (parameter name -> CPU tensor)."""

    path: Path
    manifest: dict[str, Any]
    weights: dict[str, torch.Tensor]


def save_bundle(directory: Path, weights: dict[str, torch.Tensor],
                manifest: dict[str, Any]) -> Path:
    """Write weights then manifest (with the weights' sha256) into ``directory``."""
    directory = Path(directory)
    data = save({k: v.detach().cpu().contiguous() for k, v in weights.items()})
    atomic_write_bytes(directory / WEIGHTS, data)
    full = {"manifest_version": MANIFEST_VERSION, **manifest,
            "weights_sha256": hashlib.sha256(data).hexdigest()}
    missing = [k for k in REQUIRED_KEYS if k not in full]
    if missing:
        raise BundleError(f"manifest lacks required keys {missing}")
    atomic_write_json(directory / MANIFEST, full)
    return directory


def load_bundle(path: Path, *, public_key: Path | None = None) -> Bundle:
    """Load and verify a bundle folder, or a run folder holding ``model/``.

    Checks the manifest's keys and version and the weights' sha256; with ``public_key``,
    also the Ed25519 signature of the manifest (see ``medfl.serving.signing``).
    """
    path = Path(path)
    if (path / "model" / MANIFEST).is_file():
        path = path / "model"
    manifest_path, weights_path = path / MANIFEST, path / WEIGHTS
    if not manifest_path.is_file() or not weights_path.is_file():
        raise BundleError(f"{path} is not a model bundle: expected {MANIFEST} and {WEIGHTS}")
    # Each file is read once: what is verified is exactly what is loaded.
    manifest_bytes, weights_bytes = manifest_path.read_bytes(), weights_path.read_bytes()
    try:
        manifest = json.loads(manifest_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{MANIFEST} is not valid JSON: {type(exc).__name__}") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{MANIFEST} must hold a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"{MANIFEST} lacks required keys {missing}")
    if manifest["manifest_version"] != MANIFEST_VERSION:
        raise BundleError(f"manifest_version {manifest['manifest_version']!r} is not "
                          f"supported; this MedFL reads version {MANIFEST_VERSION}")
    if public_key is not None:
        from medfl.serving.signing import verify_manifest

        verify_manifest(path, manifest_bytes, public_key)
    digest = hashlib.sha256(weights_bytes).hexdigest()
    if digest != manifest["weights_sha256"]:
        raise BundleError(f"{WEIGHTS} sha256 {digest} does not match the manifest's "
                          f"{manifest['weights_sha256']}: the weights were modified")
    try:
        weights = load(weights_bytes)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise BundleError(f"{WEIGHTS} is not a readable safetensors file "
                          f"({type(exc).__name__})") from None
    return Bundle(path=path, manifest=manifest, weights=weights)
