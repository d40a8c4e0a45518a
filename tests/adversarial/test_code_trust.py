"""Code trust at the site: a hospital's SuperNode runs only the app bundle (FAB) it
approved. The consortium signs the FAB (Ed25519); the site checks the signature and what
the FAB holds, approves its sha256, and its ClientApp launcher refuses any other FAB
before unpacking or importing it."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import zipfile

import pytest
from typer.testing import CliRunner

from medfl.cli import app as cli
from medfl.deployment.local import ROOT
from medfl.federation.fab import build_fab
from medfl.site import approval
from medfl.site.approval import AppNotApproved


def _rezip(content: bytes, change: dict[str, bytes]) -> bytes:
    """The FAB with some files' bytes replaced or added (entries otherwise unchanged)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(content)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, change.pop(info.filename, src.read(info)))
        for name, data in change.items():
            dst.writestr(name, data)
    return out.getvalue()


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """(folder, fab, signature, private key, public key) of this project's signed FAB."""
    d = tmp_path_factory.mktemp("app")
    priv, pub = approval.generate_app_key(d / "keys")
    fab = d / "medfl-app.fab"
    fab.write_bytes(build_fab(ROOT))
    return d, fab, approval.sign_fab(fab, priv), priv, pub


def test_the_approved_hash_is_the_hash_of_the_fab_flwr_run_submits(signed, tmp_path):
    from flwr.cli.build import build_fab_from_disk  # what `flwr run <project>` builds

    _, fab, sig, _, pub = signed
    digest = approval.approve(tmp_path, fab, signature=sig, public_key=pub)
    assert digest == hashlib.sha256(build_fab_from_disk(ROOT)).hexdigest()
    assert list(approval.read_allow_list(tmp_path)) == [digest]
    assert approval.check_approved(tmp_path, fab.read_bytes()) == digest
    # the FAB carries only the thin apps: the site's installed medfl is what runs
    assert not any(f.name.startswith("medfl/") for f in approval.read_fab(fab.read_bytes()))


def test_a_fab_signed_with_another_key_is_refused(signed, tmp_path):
    d, fab, _, _, pub = signed
    other, _ = approval.generate_app_key(tmp_path / "other")
    forged = tmp_path / "forged.fab"
    shutil.copy(fab, forged)
    sig = approval.sign_fab(forged, other)
    with pytest.raises(AppNotApproved, match="does not verify with the consortium key"):
        approval.approve(tmp_path / "state", forged, signature=sig, public_key=pub)
    assert approval.read_allow_list(tmp_path / "state") == {}


def test_a_tampered_fab_is_refused(signed, tmp_path):
    _, fab, sig, _, pub = signed
    content = fab.read_bytes()
    with zipfile.ZipFile(io.BytesIO(content)) as z:
        code = z.read("client/app.py")
    tampered = tmp_path / "medfl-app.fab"
    tampered.write_bytes(_rezip(content, {"client/app.py": code.replace(b"1", b"2", 1)}))
    with pytest.raises(AppNotApproved, match="changed after signing"):
        approval.approve(tmp_path, tampered, signature=sig, public_key=pub)
    assert approval.read_allow_list(tmp_path) == {}


def test_an_unsigned_fab_is_refused(signed, tmp_path):
    _, fab, _, _, pub = signed
    unsigned = tmp_path / "medfl-app.fab"
    shutil.copy(fab, unsigned)
    with pytest.raises(AppNotApproved, match="unsigned"):
        approval.approve(tmp_path, unsigned, signature=approval.signature_path(unsigned),
                         public_key=pub)


def test_a_fab_carrying_its_own_medfl_is_refused_even_when_signed(signed, tmp_path):
    _, fab, _, priv, pub = signed
    shadow = tmp_path / "shadow.fab"
    shadow.write_bytes(_rezip(fab.read_bytes(), {"medfl/__init__.py": b"DISCLAIMER = ''\n"}))
    with pytest.raises(AppNotApproved, match="would replace this site's installed medfl"):
        approval.sign_fab(shadow, priv)
    with pytest.raises(AppNotApproved, match="would replace"):
        approval.approve(tmp_path, shadow, signature=tmp_path / "x.sig", public_key=pub)


def test_an_unapproved_or_mislabelled_fab_is_refused_at_run_time(signed, tmp_path):
    _, fab, sig, _, pub = signed
    with pytest.raises(AppNotApproved, match="not approved at this site"):
        approval.check_approved(tmp_path, fab.read_bytes())
    approval.approve(tmp_path, fab, signature=sig, public_key=pub)
    with pytest.raises(AppNotApproved, match="does not match the hash it was sent under"):
        approval.check_approved(tmp_path, fab.read_bytes(), claimed_hash="0" * 64)
    approval.revoke(tmp_path, approval.fab_sha256(fab.read_bytes()))
    with pytest.raises(AppNotApproved, match="not approved"):
        approval.check_approved(tmp_path, fab.read_bytes())


def test_the_guarded_clientapp_refuses_before_flower_installs_the_fab(signed, tmp_path,
                                                                      monkeypatch):
    """The wrapper around Flower's own install_from_fab, in the module run_clientapp
    calls it from: an unapproved FAB raises, and nothing is unpacked into FLWR_HOME."""
    import importlib

    from medfl.federation.clientapp_guard import install_guard

    runtime = importlib.import_module("flwr.supernode.runtime.run_clientapp")
    for name in ("install_from_fab", "pull_task_input"):  # restored after the test
        monkeypatch.setattr(runtime, name, getattr(runtime, name))
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    _, fab, _, _, _ = signed
    install_guard(tmp_path / "state")
    with pytest.raises(AppNotApproved, match="not approved at this site"):
        runtime.install_from_fab(fab.read_bytes(), skip_prompt=True)
    assert not (tmp_path / "flwr-home").exists()
    install_guard(None)
    with pytest.raises(AppNotApproved, match="every app is refused"):
        runtime.install_from_fab(fab.read_bytes(), skip_prompt=True)


def test_the_approve_command_shows_the_fab_and_refuses_a_bad_signature(signed, tmp_path):
    _, fab, sig, _, pub = signed
    state = tmp_path / "state"
    other, other_pub = approval.generate_app_key(tmp_path / "other")
    bad = CliRunner().invoke(cli, ["site", "approve", str(fab), "--state-dir", str(state),
                                   "--publisher-key", str(other_pub), "--yes"])
    assert bad.exit_code == 2 and "does not verify" in bad.output
    ok = CliRunner().invoke(cli, ["site", "approve", str(fab), "--state-dir", str(state),
                                  "--publisher-key", str(pub), "--signature", str(sig), "--yes"])
    assert ok.exit_code == 0, ok.output
    assert "client/app.py" in ok.output
    digest = approval.fab_sha256(fab.read_bytes())
    assert f"approved: {digest}" in ok.output
    assert json.loads((state / approval.ALLOW_LIST).read_text())["apps"][digest]


# A real deployment: tests/deploy/test_local_federation.py's server-crash test submits a
# modified app to two sites started with `medfl site supernode` (each refuses it before
# importing it), then trains the approved one on the same SuperNodes. It rides on that
# test's federation: a TLS SuperLink and SuperNodes of its own cost about three minutes.
