"""Keys and certificates for a deployed federation (``cryptography``).

One folder holds what the consortium operator creates::

    ca.crt  ca.key              the federation's own certificate authority (key 0600)
    server.crt  server.key      the SuperLink's TLS certificate, signed by the CA (key 0600)
    sites/<name>.key  .pub      each site's SuperNode authentication key pair: EC NIST P-384
                                in OpenSSH format, as ``flower-supernode
                                --auth-supernode-private-key`` and ``flwr supernode
                                register`` read them (private key 0600)

The CA certificate (``ca.crt``) is public: every SuperNode and the ``flwr`` CLI need it to
verify the SuperLink. A site's private key belongs on that site's machine only; the
operator registers its public key. Nothing existing is replaced without ``force``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from medfl.errors import ConfigError
from medfl.io import atomic_write_bytes

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"
SITES = "sites"
DEFAULT_SANS = ("localhost", "127.0.0.1", "::1")
_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class SiteKeys:
    """A site's SuperNode authentication key pair."""

    name: str
    private_key: Path
    public_key: Path


def _write_private(path: Path, data: bytes) -> None:
    """A private key, readable by its owner only: ``mkstemp`` creates the temporary file
    0600 and the rename keeps that mode, so the key is never readable by others."""
    atomic_write_bytes(path, data)
    os.chmod(path, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)
    os.chmod(path, 0o644)


def _refuse_overwrite(paths: list[Path], force: bool) -> None:
    existing = [p.name for p in paths if p.exists()]
    if existing and not force:
        raise ConfigError(f"{', '.join(existing)}: already in this folder; pass "
                          "--force to replace (every site and the SuperLink must then get "
                          "the new files)")


def _san(value: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9.-]{0,252})", value):
        raise ConfigError(f"SAN {value!r} is neither an IP address nor a DNS name")
    return x509.DNSName(value)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def init_ca(directory: Path, *, sans: list[str] | tuple[str, ...] = DEFAULT_SANS,
            days: int = 825, force: bool = False) -> tuple[Path, Path]:
    """Create the federation's CA and the SuperLink's server certificate.

    ``sans``: the names and IP addresses sites will use to reach the SuperLink (the
    certificate is valid for those only). Loopback (``localhost``, ``127.0.0.1``, ``::1``)
    is always added: the SuperLink's own SuperExec reaches the ServerApp's API over TLS on
    127.0.0.1. Returns ``(ca.crt, server.crt)``.
    """
    if not sans:
        raise ConfigError("give at least one SAN (the SuperLink's host name or IP address)")
    sans = list(dict.fromkeys([*sans, *DEFAULT_SANS]))
    names = [_san(s) for s in sans]
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / n for n in (CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY)]
    _refuse_overwrite(paths, force)
    now = _now()
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "MedFL federation"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "MedFL federation CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(sans[0]))]))
        .issuer_name(ca_name).public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    _write_private(directory / CA_KEY, _pem_key(ca_key))
    _write_private(directory / SERVER_KEY, _pem_key(server_key))
    _write_public(directory / CA_CERT, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_public(directory / SERVER_CERT,
                       server_cert.public_bytes(serialization.Encoding.PEM))
    return directory / CA_CERT, directory / SERVER_CERT


def check_site_name(name: str) -> str:
    """``name``, if it is a valid site name (it names the site's key files); else a
    ``ConfigError`` saying what is valid."""
    if not _SITE_NAME.fullmatch(name):
        raise ConfigError(f"site name {name!r} is not valid: use 1-63 letters, digits, '.', "
                          "'_' or '-', starting with a letter or digit")
    return name


def site_keys(directory: Path, name: str) -> SiteKeys:
    """Where ``add_site`` puts (or put) a site's key pair."""
    base = directory / SITES / check_site_name(name)
    return SiteKeys(name, base.with_suffix(".key"), base.with_suffix(".pub"))


def add_site(directory: Path, name: str, *, force: bool = False) -> SiteKeys:
    """Create a site's SuperNode authentication key pair (EC P-384, OpenSSH format)."""
    keys = site_keys(directory, name)
    _refuse_overwrite([keys.private_key, keys.public_key], force)
    keys.private_key.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(keys.private_key, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    _write_public(keys.public_key, public + f" medfl-site-{name}\n".encode())
    return keys
