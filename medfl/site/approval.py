"""Which app code a site runs: the hospital's allow-list of approved Flower App Bundles.

A SuperNode runs whatever FAB (Flower App Bundle: the ClientApp's code) the SuperLink
hands it. Flower's own FAB verification (``--trusted-entities``) accepts only FABs that
carry signatures, which the open-source SuperLink never attaches to a run submitted with
``flwr run``. So MedFL checks the code itself, as Fed-BioMed approves training plans:

1. The consortium signs the FAB it intends to run (``medfl app build --sign-key``) with
   its Ed25519 app-signing key (``medfl certs app-key``).
2. The hospital's IT reads what the FAB holds and approves it (``medfl site approve``):
   its signature must verify with the consortium's public key, and it must not carry a
   ``medfl/`` package that would shadow the site-installed library (whose privacy
   protections the site relies on). The FAB's sha256 goes into the site's allow-list.
3. At run time the site's ClientApp launcher (``medfl.federation.clientapp_guard``)
   refuses any FAB whose sha256 is not in the allow-list, before installing or importing
   anything from it.

``flwr build`` and ``flwr run`` build a FAB deterministically (sorted files, fixed
timestamps, stored entries), so the FAB that ``flwr run`` submits from the same project
folder has the hash the site approved.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from medfl.errors import MedflError
from medfl.io import atomic_write_bytes

__all__ = ["ALLOW_LIST", "APP_KEY", "APP_PUB", "AppNotApproved", "FabFile", "approve",
           "check_approved", "fab_sha256", "generate_app_key", "read_allow_list",
           "read_fab", "revoke", "sign_fab", "signature_path", "verify_fab"]

ALLOW_LIST = "approved-apps.json"
APP_KEY, APP_PUB = "app-signing.key", "app-signing.pub"
#: signatures cover this prefix + the FAB's sha256 (hex), never anything else
_DOMAIN = b"medfl-fab-signature-v1:"
#: top-level packages a FAB must not carry: they would shadow the site-installed code
_SHADOWED = ("medfl",)


class AppNotApproved(MedflError):
    """A FAB is unsigned, badly signed, malformed, or not in the site's allow-list."""


@dataclass(frozen=True)
class FabFile:
    """One file inside a FAB: its path in the bundle and its size in bytes."""

    name: str
    size: int


def fab_sha256(content: bytes) -> str:
    """The FAB's sha256 (hex): the hash Flower names it by and the allow-list holds."""
    return hashlib.sha256(content).hexdigest()


def signature_path(fab: Path) -> Path:
    """Where ``medfl app build --sign-key`` writes a FAB's signature: ``<fab>.sig``."""
    return fab.with_name(fab.name + ".sig")


def generate_app_key(directory: Path, *, force: bool = False) -> tuple[Path, Path]:
    """Write the consortium's Ed25519 app-signing key pair into ``directory``.

    Returns (private key, public key); the private key is 0600. The public key goes to
    every hospital, which approves only FABs it verifies.
    """
    directory.mkdir(parents=True, exist_ok=True)
    priv, pub = directory / APP_KEY, directory / APP_PUB
    existing = [p.name for p in (priv, pub) if p.exists()]
    if existing and not force:
        raise MedflError(f"{', '.join(existing)}: already in {directory}; pass --force to "
                         "replace (every site must then get the new public key)")
    key = Ed25519PrivateKey.generate()
    atomic_write_bytes(priv, key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    os.chmod(priv, 0o600)
    atomic_write_bytes(pub, key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    os.chmod(pub, 0o644)
    return priv, pub


def _load_key(path: Path, *, private: bool) -> Ed25519PrivateKey | Ed25519PublicKey:
    kind = "private" if private else "public"
    try:
        data = Path(path).read_bytes()
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))
    except (OSError, ValueError, TypeError) as exc:
        raise AppNotApproved(f"{path}: cannot read an Ed25519 {kind} key "
                             f"({type(exc).__name__}); expected the PEM file "
                             f"{APP_KEY if private else APP_PUB} of `medfl certs app-key`"
                             ) from None
    if not isinstance(key, Ed25519PrivateKey if private else Ed25519PublicKey):
        raise AppNotApproved(f"{path}: not an Ed25519 {kind} key; expected "
                             f"{APP_KEY if private else APP_PUB} of `medfl certs app-key`")
    return key


def read_fab(content: bytes) -> list[FabFile]:
    """The files of a FAB; refuses a FAB that is not a zip archive or that carries a
    package shadowing the site-installed library, or an unsafe path."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as fab:
            files = [FabFile(i.filename, i.file_size) for i in fab.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, ValueError) as exc:
        raise AppNotApproved(f"not a Flower App Bundle (a zip archive): {exc}") from None
    names = [f.name for f in files]
    if "pyproject.toml" not in names or ".info/CONTENT" not in names:
        raise AppNotApproved("not a Flower App Bundle: pyproject.toml or .info/CONTENT is "
                             "missing (build it with `medfl app build`)")
    for name in names:
        top = name.split("/", 1)[0]
        if name.startswith("/") or ".." in name.split("/"):
            raise AppNotApproved(f"the FAB holds an unsafe path {name!r}")
        if top in _SHADOWED:
            raise AppNotApproved(f"the FAB carries its own {top}/ package ({name}), which "
                                 f"would replace this site's installed {top} and its privacy "
                                 "protections; a MedFL app ships only server/ and client/")
    return files


def _message(content: bytes) -> bytes:
    return _DOMAIN + fab_sha256(content).encode()


def sign_fab(fab: Path, private_key: Path) -> Path:
    """Sign a FAB with the consortium's app-signing key; writes ``<fab>.sig`` (base64)."""
    key = _load_key(private_key, private=True)
    assert isinstance(key, Ed25519PrivateKey)
    content = Path(fab).read_bytes()
    read_fab(content)
    out = signature_path(Path(fab))
    atomic_write_bytes(out, base64.b64encode(key.sign(_message(content))) + b"\n")
    return out


def verify_fab(content: bytes, signature: Path, public_key: Path) -> None:
    """Check a FAB's signature with the consortium's public key; raise if it fails."""
    key = _load_key(public_key, private=False)
    assert isinstance(key, Ed25519PublicKey)
    try:
        sig = base64.b64decode(Path(signature).read_bytes().strip(), validate=True)
    except FileNotFoundError:
        raise AppNotApproved(f"the FAB is unsigned: no signature file {signature} (the "
                             "operator signs it with `medfl app build --sign-key`)") from None
    except (OSError, ValueError) as exc:
        raise AppNotApproved(f"{signature}: not a base64 signature ({type(exc).__name__})"
                             ) from None
    try:
        key.verify(sig, _message(content))
    except InvalidSignature:
        raise AppNotApproved(f"the FAB's signature {signature} does not verify with the "
                             f"consortium key {public_key}: the FAB was changed after "
                             "signing, or signed with another key; do not approve it"
                             ) from None


def read_allow_list(state_dir: Path) -> dict[str, dict[str, str]]:
    """The site's approved FABs: sha256 -> what was approved, when, under which key."""
    path = Path(state_dir) / ALLOW_LIST
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        apps = data["apps"]
        if not isinstance(apps, dict):
            raise TypeError("apps is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AppNotApproved(f"the site's allow-list {ALLOW_LIST} is unreadable "
                             f"({type(exc).__name__}); re-approve the apps") from None
    return {str(k): dict(v) for k, v in apps.items()}


def _write_allow_list(state_dir: Path, apps: dict[str, dict[str, str]]) -> None:
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(state_dir) / ALLOW_LIST,
                       json.dumps({"apps": apps}, indent=2, sort_keys=True).encode() + b"\n")


def approve(state_dir: Path, fab: Path, *, signature: Path, public_key: Path) -> str:
    """Verify a signed FAB and add its sha256 to the site's allow-list; returns the hash."""
    content = Path(fab).read_bytes()
    read_fab(content)
    verify_fab(content, signature, public_key)
    digest = fab_sha256(content)
    pub = Path(public_key).read_bytes()
    apps = read_allow_list(state_dir)
    apps[digest] = {"name": Path(fab).name,
                    "approved_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "publisher_key_sha256": hashlib.sha256(pub).hexdigest()}
    _write_allow_list(state_dir, apps)
    return digest


def revoke(state_dir: Path, digest: str) -> None:
    """Remove an approved FAB (by its full sha256) from the site's allow-list."""
    apps = read_allow_list(state_dir)
    if digest not in apps:
        raise AppNotApproved(f"no approved app has sha256 {digest}; approved: "
                             f"{sorted(apps) or 'none'}")
    del apps[digest]
    _write_allow_list(state_dir, apps)


def check_approved(state_dir: Path, content: bytes, *, claimed_hash: str | None = None) -> str:
    """The FAB's sha256 if the site approved it; raise :class:`AppNotApproved` otherwise.

    The message names only the hash (it is sent back to the coordinator as the task's
    error): no path of the site's.
    """
    digest = fab_sha256(content)
    if claimed_hash is not None and claimed_hash != digest:
        raise AppNotApproved(f"the FAB's content (sha256 {digest[:16]}…) does not match "
                             f"the hash it was sent under ({claimed_hash[:16]}…)")
    if digest not in read_allow_list(state_dir):
        raise AppNotApproved(f"app sha256 {digest} is not approved at this site: its IT "
                             "approves a signed app with `medfl site approve`")
    return digest
