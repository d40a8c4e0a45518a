"""Model bundles: safetensors + manifest, verified by sha256, never pickles."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from medfl.errors import BundleError
from medfl.serving import load_bundle, save_bundle

MANIFEST = {"architecture": {"name": "logreg"}, "input_schema": {}, "preprocessing": {},
            "label_names": ["no", "yes"], "created": {}}


def _weights():
    return {"0.weight": torch.arange(6, dtype=torch.float32).reshape(1, 6),
            "0.bias": torch.tensor([0.5])}


def test_round_trip_and_sha(tmp_path):
    save_bundle(tmp_path, _weights(), MANIFEST)
    b = load_bundle(tmp_path)
    assert torch.equal(b.weights["0.weight"], _weights()["0.weight"])
    sha = hashlib.sha256((tmp_path / "weights.safetensors").read_bytes()).hexdigest()
    assert b.manifest["weights_sha256"] == sha


def test_tampered_weights_are_refused(tmp_path):
    save_bundle(tmp_path, _weights(), MANIFEST)
    w = tmp_path / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match the manifest"):
        load_bundle(tmp_path)


def test_incomplete_manifest_is_named(tmp_path):
    save_bundle(tmp_path, _weights(), MANIFEST)
    m = json.loads((tmp_path / "manifest.json").read_text())
    del m["label_names"]
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"lacks required keys \['label_names'\]"):
        load_bundle(tmp_path)


def test_folder_without_bundle_is_a_clear_error(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"\x80\x04pickle")
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path)
