"""`medfl certs`: the files are what the SuperLink, the SuperNodes and `flwr` need, checked
with `cryptography` (the library Flower itself loads them with)."""

from __future__ import annotations

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from cryptography.hazmat.primitives.serialization.ssh import load_ssh_public_key
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from medfl.cli import app as cli
from medfl.deployment import certs
from medfl.errors import ConfigError


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_server_certificate_is_signed_by_the_ca_for_the_given_names_only(tmp_path):
    ca_path, server_path = certs.init_ca(tmp_path, sans=["fl.example.org", "10.0.0.5"])
    ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    server = x509.load_pem_x509_certificate(server_path.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the signature or issuer is wrong
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # loopback is always there: the SuperLink's own ServerApp connects on 127.0.0.1
    assert san.get_values_for_type(x509.DNSName) == ["fl.example.org", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address(a) for a in ("10.0.0.5", "127.0.0.1", "::1")]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert _mode(tmp_path / "ca.key") == 0o600 and _mode(tmp_path / "server.key") == 0o600
    assert _mode(ca_path) == 0o644


def test_a_site_key_is_p384_in_openssh_format_as_flower_loads_it(tmp_path):
    keys = certs.add_site(tmp_path, "cleveland")
    private = load_ssh_private_key(keys.private_key.read_bytes(), password=None)
    public = load_ssh_public_key(keys.public_key.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(private.curve, ec.SECP384R1)
    assert public.public_numbers() == private.public_key().public_numbers()
    assert _mode(keys.private_key) == 0o600
    other = certs.add_site(tmp_path, "va")
    assert other.public_key.read_bytes() != keys.public_key.read_bytes()


def test_nothing_is_overwritten_without_force(tmp_path):
    certs.init_ca(tmp_path)
    before = (tmp_path / "ca.key").read_bytes()
    with pytest.raises(ConfigError, match="--force"):
        certs.init_ca(tmp_path)
    assert (tmp_path / "ca.key").read_bytes() == before
    keys = certs.add_site(tmp_path, "va")
    key = keys.private_key.read_bytes()
    with pytest.raises(ConfigError, match="va.key"):
        certs.add_site(tmp_path, "va")
    assert keys.private_key.read_bytes() == key
    assert certs.add_site(tmp_path, "va", force=True).private_key.read_bytes() != key
    certs.init_ca(tmp_path, force=True)
    assert (tmp_path / "ca.key").read_bytes() != before


@pytest.mark.parametrize("name", ["../etc", "", "a b", "-x", "x" * 64])
def test_a_site_name_that_is_not_a_plain_name_is_refused(tmp_path, name):
    with pytest.raises(ConfigError, match="site name"):
        certs.add_site(tmp_path, name)
    assert not (tmp_path / "sites").exists() or list((tmp_path / "sites").iterdir()) == []


def test_a_san_that_is_neither_a_host_nor_an_address_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="SAN"):
        certs.init_ca(tmp_path, sans=["bad name!"])
    assert list(tmp_path.iterdir()) == []


def test_the_cli_commands(tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["certs", "init", str(tmp_path), "--san", "superlink"])
    assert res.exit_code == 0, res.output
    assert "ca.crt" in res.output
    res = runner.invoke(cli, ["certs", "add-site", str(tmp_path), "hungarian"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "sites" / "hungarian.key").is_file()
    again = runner.invoke(cli, ["certs", "add-site", str(tmp_path), "hungarian"])
    assert again.exit_code == 2 and "--force" in again.output
