"""Ed25519 signatures on model bundles (``cryptography``).

The signature covers ``manifest.json`` byte for byte. The manifest carries the weights'
sha256 and, from signing on, ``signed_files``: the sha256 of the run's ``report.json`` and
``MODEL_CARD.md`` (the files served beside the model), so one signature binds all of them.
``load_bundle(..., public_key=...)`` refuses a bundle whose signature is missing or does
not verify; ``medfl.serving.attachments`` refuses a report or card that does not match
its signed sha256 and, with a key, withholds one the signature does not cover.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from medfl.errors import BundleError
from medfl.io import atomic_write_bytes, atomic_write_json

SIGNATURE = "signature.ed25519"
PRIVATE, PUBLIC = "bundle-signing.key", "bundle-signing.pub"
#: Files of the run folder (the bundle's parent) that the service serves, and so signs.
ATTACHMENTS = ("report.json", "MODEL_CARD.md")


def generate_keypair(directory: Path, *, force: bool = False) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair (private key 0600) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    priv, pub = directory / PRIVATE, directory / PUBLIC
    if not force and (priv.exists() or pub.exists()):
        raise BundleError(f"{PRIVATE} or {PUBLIC} already exists there; pass --force to replace")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def _load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise BundleError(f"cannot read an Ed25519 private key ({type(exc).__name__})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError("the signing key is not an Ed25519 private key")
    return key


def _load_public(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read an Ed25519 public key ({type(exc).__name__})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError("the verification key is not an Ed25519 public key")
    return key


def sign_bundle(bundle_dir: Path, private_key: Path) -> Path:
    """Record the sha256 of the run's served files (``report.json``, ``MODEL_CARD.md``,
    those present beside ``bundle_dir``) in ``manifest.json`` as ``signed_files``, then sign
    the manifest; write ``signature.ed25519`` (base64) beside it.

    Sign after the reports are written; re-sign after rebuilding them (``medfl report``).
    """
    bundle_dir = Path(bundle_dir)
    key = _load_private(private_key)  # a bad key fails before the manifest is rewritten
    manifest = json.loads((bundle_dir / "manifest.json").read_bytes())
    manifest["signed_files"] = {
        name: hashlib.sha256((bundle_dir.parent / name).read_bytes()).hexdigest()
        for name in ATTACHMENTS if (bundle_dir.parent / name).is_file()}
    atomic_write_json(bundle_dir / "manifest.json", manifest)
    signature = base64.b64encode(key.sign((bundle_dir / "manifest.json").read_bytes()))
    atomic_write_bytes(bundle_dir / SIGNATURE, signature + b"\n")
    return bundle_dir / SIGNATURE


def verify_manifest(bundle_dir: Path, manifest: bytes, public_key: Path) -> None:
    """Verify the signature in ``bundle_dir`` over these exact ``manifest`` bytes."""
    sig_path = bundle_dir / SIGNATURE
    if not sig_path.is_file():
        raise BundleError(f"the bundle is not signed ({SIGNATURE} missing) but a "
                          "verification key is configured")
    try:
        signature = base64.b64decode(sig_path.read_bytes().strip(), validate=True)
        _load_public(public_key).verify(signature, manifest)
    except (InvalidSignature, ValueError):
        raise BundleError("the bundle's Ed25519 signature does not verify with the configured "
                          "public key: the manifest or weights were changed, or the key is "
                          "not the signer's") from None
