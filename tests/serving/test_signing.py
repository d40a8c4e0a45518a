"""Ed25519 bundle signatures: signed at the server, verified before serving."""

from __future__ import annotations

import json
import shutil
import stat

import pytest
from typer.testing import CliRunner

from medfl.cli import app
from medfl.errors import BundleError
from medfl.serving import load_bundle
from medfl.serving.signing import generate_keypair, sign_bundle


@pytest.fixture
def signed(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    priv, pub = generate_keypair(tmp_path / "keys")
    sign_bundle(run / "model", priv)
    return run, priv, pub


def test_private_key_is_0600_and_never_overwritten(tmp_path):
    priv, _ = generate_keypair(tmp_path)
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    with pytest.raises(BundleError, match="already exists"):
        generate_keypair(tmp_path)


def test_a_signed_bundle_verifies(signed):
    run, _, pub = signed
    assert load_bundle(run, public_key=pub).manifest["weights_sha256"]


def test_an_edited_manifest_fails_verification(signed):
    run, _, pub = signed
    m = json.loads((run / "model" / "manifest.json").read_text())
    m["threshold"] = 0.1  # quietly change the operating point
    (run / "model" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="does not verify"):
        load_bundle(run, public_key=pub)


def test_another_key_or_no_signature_is_refused(signed, tmp_path):
    run, _, _ = signed
    _, other = generate_keypair(tmp_path / "other")
    with pytest.raises(BundleError, match="does not verify"):
        load_bundle(run, public_key=other)
    (run / "model" / "signature.ed25519").unlink()
    with pytest.raises(BundleError, match="not signed"):
        load_bundle(run, public_key=other)


def test_a_run_signs_its_bundle_when_the_server_has_a_key(tmp_path, monkeypatch):
    from conftest import run_config

    from bench import inprocess

    priv, pub = generate_keypair(tmp_path / "keys")
    monkeypatch.setenv("MEDFL_SIGNING_KEY", str(priv))
    cfg = run_config(num_server_rounds=1, privacy__enabled=False, privacy__audit=False,
                     output_dir=str(tmp_path / "out"), run_name="signed")
    inprocess.run(cfg)
    assert load_bundle(tmp_path / "out" / "signed", public_key=pub)


def test_cli_keygen_and_sign(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    r = CliRunner().invoke(app, ["keygen", str(tmp_path / "k")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["sign", str(run), str(tmp_path / "k" / "bundle-signing.key")])
    assert r.exit_code == 0, r.output
    assert load_bundle(run, public_key=tmp_path / "k" / "bundle-signing.pub")
