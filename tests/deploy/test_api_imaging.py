"""The service on imaging bundles (in-process TestClient): multipart uploads, real DICOM
files from pydicom's test data, masks, Grad-CAM, and every error code."""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr
from pydicom.data import get_testdata_file

from deploy.api import Settings, create_app
from medfl.explain import feature_layer, gradcam
from medfl.serving import ImageModel, load_bundle
from medfl.serving.imaging import mask_from_rle

KEY = {"X-API-Key": "img-key-0123456789"}
CT = get_testdata_file("CT_small.dcm", download=False)  # 128 x 128 CT, a real DICOM
MR = get_testdata_file("MR_small.dcm", download=False)
MULTIFRAME = get_testdata_file("rtdose.dcm", download=False)  # 15 frames
RGB = get_testdata_file("SC_rgb_small_odd.dcm", download=False)


def _client(run, **limits) -> TestClient:
    settings = Settings(bundle=run, api_key=SecretStr(KEY["X-API-Key"]), **limits)
    return TestClient(create_app(settings))


def _files(*blobs: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"f{i}", b, "application/octet-stream")) for i, b in enumerate(blobs)]


def _site_files(manifest, site: str, n: int) -> list[bytes]:
    frame = pd.read_csv(manifest)
    return [(manifest.parent / p).read_bytes() for p in frame[frame.site == site].path[:n]]


@pytest.fixture(scope="module")
def cls(image_run):
    run, manifest = image_run
    with _client(run, max_images=4, max_body_bytes=400_000) as c:
        yield c, run, manifest


def test_uploads_are_predicted_as_the_library_predicts_them(cls):
    client, run, manifest = cls
    blobs = _site_files(manifest, "alpha", 2) + _site_files(manifest, "beta", 1)  # DICOM, PNG
    r = client.post("/predict", files=_files(*blobs), headers=KEY)
    assert r.status_code == 200, r.text
    body = r.json()
    expected = ImageModel.from_bundle(load_bundle(run)).predict(blobs)
    assert [p["label"] for p in body["predictions"]] == [e["label"] for e in expected]
    assert [p["probabilities"]["present"] for p in body["predictions"]] == pytest.approx(
        [e["probabilities"]["present"] for e in expected])
    assert body["threshold"] == 0.5 and len(body["model_version"]) == 12


def test_real_dicom_files_from_pydicom_are_read(cls):
    client, run, _ = cls
    blobs = [open(CT, "rb").read(), open(MR, "rb").read()]
    r = client.post("/predict", files=_files(*blobs), headers=KEY)
    assert r.status_code == 200, r.text
    expected = ImageModel.from_bundle(load_bundle(run)).predict(blobs)
    got = [p["probabilities"]["present"] for p in r.json()["predictions"]]
    assert got == pytest.approx([e["probabilities"]["present"] for e in expected])


@pytest.mark.parametrize("bad, words", [
    (lambda: open(MULTIFRAME, "rb").read(), "15 frames"),
    (lambda: open(RGB, "rb").read(), "colour"),
    (lambda: open(CT, "rb").read()[:3000], "files[1]"),
    (lambda: b"not an image at all", "files[1]"),
])
def test_unreadable_uploads_are_422_naming_the_file(cls, bad, words):
    client, _, manifest = cls
    good = _site_files(manifest, "beta", 1)[0]
    r = client.post("/predict", files=_files(good, bad()), headers=KEY)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "files[1]" and words in r.text


def test_wrong_kind_of_body_limits_and_key(cls):
    client, _, manifest = cls
    blob = _site_files(manifest, "beta", 1)[0]
    assert client.post("/predict", json={"records": [{}]}, headers=KEY).status_code == 415
    assert client.post("/predict", content=blob, headers={**KEY, "Content-Type": "image/png"}
                       ).status_code == 415
    for n in (5, 6, 40):  # any number over the limit (4) is the same 413
        assert client.post("/predict", files=_files(*[blob] * n), headers=KEY
                           ).status_code == 413
    big = b"\0" * 500_000
    assert client.post("/predict", files=_files(big), headers=KEY).status_code == 413
    r = client.post("/predict", data={"note": "x"}, files=[("other", ("a", blob, "x/y"))],
                    headers=KEY)
    assert r.status_code == 422 and "'files'" in r.text
    assert client.post("/predict", files=_files(blob)).status_code == 401


def test_explain_returns_the_grad_cam_heatmap_as_png(cls):
    client, run, manifest = cls
    blob = _site_files(manifest, "alpha", 1)[0]
    r = client.post("/explain", files=_files(blob), headers=KEY)
    assert r.status_code == 200, r.text
    out = r.json()["explanations"][0]
    heat = np.asarray(Image.open(io.BytesIO(base64.b64decode(out["heatmap_png"]))))
    assert heat.shape == tuple(out["shape"]) == (32, 32)
    model = ImageModel.from_bundle(load_bundle(run))
    x = model.preprocess([blob])
    expected = gradcam(model.model, x, target_layer=feature_layer(model.model))[0]
    assert np.abs(heat / 255.0 - expected).max() <= 0.5 / 255 + 1e-6
    overlay = Image.open(io.BytesIO(base64.b64decode(out["overlay_png"])))
    assert overlay.size == (32, 32) and overlay.mode == "RGB"


def test_model_description_has_figures_with_cis(cls):
    client, _, _ = cls
    body = client.get("/model", headers=KEY).json()
    assert body["input_schema"]["type"] == "image"
    pooled = body["metrics_with_ci"]["pooled"]["auroc"]
    assert pooled["ci"][0] <= pooled["value"] <= pooled["ci"][1]


def test_segmentation_masks_come_back_as_run_lengths(seg_run):
    run, manifest = seg_run
    blobs = _site_files(manifest, "beta", 2)
    with _client(run) as client:
        r = client.post("/predict", files=_files(*blobs), headers=KEY)
        assert r.status_code == 200, r.text
        expected = ImageModel.from_bundle(load_bundle(run)).predict(blobs)
        for got, exp in zip(r.json()["predictions"], expected, strict=True):
            assert got["shape"] == [32, 32]
            assert np.array_equal(mask_from_rle(got["mask_rle"], (32, 32)), exp["mask"])
            assert sum(got["mask_rle"]) == 32 * 32
            assert got["lesion_fraction"] == pytest.approx(exp["mask"].mean())
        r = client.post("/explain", files=_files(blobs[0]), headers=KEY)
        assert r.status_code == 422 and "mask" in r.json()["detail"]


def test_concurrent_explanations_and_predictions_do_not_mix(image_run):
    # Grad-CAM hooks the shared model: without the model's lock a concurrent forward pass
    # lands in another request's activations.
    from concurrent.futures import ThreadPoolExecutor

    run, manifest = image_run
    model = ImageModel.from_bundle(load_bundle(run))
    blobs = _site_files(manifest, "alpha", 6)
    heat = [model.explain([b])[0]["heatmap"] for b in blobs]
    probs = [model.predict([b])[0]["probabilities"]["present"] for b in blobs]

    def work(i):
        return (model.explain([blobs[i % 6]])[0]["heatmap"] if i % 2 == 0
                else model.predict([blobs[i % 6]])[0]["probabilities"]["present"])

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, range(48)))
    for i, r in enumerate(results):
        if i % 2 == 0:
            np.testing.assert_allclose(r, heat[i % 6], atol=1e-5)
        else:
            assert r == pytest.approx(probs[i % 6])


def _dicom_declaring(rows: int, columns: int, frames: int = 1) -> bytes:
    """The real CT file with its header's dimensions changed (the pixel data is not)."""
    import pydicom

    ds = pydicom.dcmread(CT)
    ds.Rows, ds.Columns = rows, columns
    if frames > 1:
        ds.NumberOfFrames = frames
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def _jpeg(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (side, side)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("blob, declared", [
    (lambda: _jpeg(300), "300 x 300 = 90000 pixels"),
    (lambda: _dicom_declaring(4096, 4096), "4096 x 4096 x 1 = 16777216 pixels"),
    (lambda: _dicom_declaring(128, 128, frames=8), "128 x 128 x 8 = 131072 pixels"),
])
def test_an_image_over_the_decoding_budget_is_413_naming_its_declared_size(image_run, blob,
                                                                           declared):
    # 1 MiB at 40 bytes per pixel: 26214 pixels, so the 128 x 128 CT itself is admitted.
    with _client(image_run[0], decode_budget_mb=1) as client:
        r = client.post("/predict", files=_files(open(CT, "rb").read(), blob()), headers=KEY)
        assert r.status_code == 413, r.text
        assert r.json()["field"] == "files[1]" and declared in r.json()["detail"]
        assert "at most 26214 pixels" in r.json()["detail"]
        assert client.post("/predict", files=_files(open(CT, "rb").read()),
                           headers=KEY).status_code == 200


def test_a_real_7_mb_chest_radiograph_is_predicted_under_the_default_limits(image_run):
    # pydicom-data's RG1_UNCR.dcm: an uncompressed 1955 x 1841 MONOCHROME1 chest CR,
    # over the 4 MB that once bounded every body.
    blob = open(get_testdata_file("RG1_UNCR.dcm"), "rb").read()
    assert len(blob) > 7_000_000
    with _client(image_run[0]) as client:
        r = client.post("/predict", files=_files(blob), headers=KEY)
    assert r.status_code == 200, r.text
    expected = ImageModel.from_bundle(load_bundle(image_run[0])).predict([blob])[0]
    got = r.json()["predictions"][0]
    assert got["label"] == expected["label"]
    assert got["probabilities"]["present"] == pytest.approx(
        expected["probabilities"]["present"])


def _dicom_of(rows: int, columns: int) -> bytes:
    """The real CT file's header over a blank 16-bit image of ``rows`` x ``columns``."""
    import pydicom

    ds = pydicom.dcmread(CT)
    ds.Rows, ds.Columns = rows, columns
    ds.PixelData = np.zeros((rows, columns), np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def test_a_30_mb_radiograph_passes_the_body_limit_and_meets_the_decoding_budget(image_run):
    # 3872 x 3872 x 2 bytes = 29.98 MB: admitted by the imaging default body limit, then
    # refused by the decoding budget (256 MiB: 6.7 million pixels), before any decoding.
    blob = _dicom_of(3872, 3872)
    assert len(blob) > 29_900_000
    with _client(image_run[0]) as client:
        r = client.post("/predict", files=_files(blob), headers=KEY)
    assert r.status_code == 413, r.text
    assert r.json()["field"] == "files[0]"
    assert "3872 x 3872 x 1 = 14992384 pixels" in r.json()["detail"]
    assert "MEDFL_DECODE_BUDGET_MB" in r.json()["detail"]


def test_a_body_over_an_explicit_limit_is_413_naming_it_and_leaves_no_file(image_run, tmp_path,
                                                                          monkeypatch):
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(spool))
    blob = open(get_testdata_file("RG1_UNCR.dcm"), "rb").read()

    def streamed():  # no Content-Length: the Guard counts as it reads
        body = (b'--b\r\nContent-Disposition: form-data; name="files"; filename="f"\r\n\r\n'
                + blob + b"\r\n--b--\r\n")
        for start in range(0, len(body), 1 << 16):
            yield body[start:start + (1 << 16)]

    with _client(image_run[0], max_body_bytes=5_000_000) as client:
        r = client.post("/predict", content=streamed(), headers={
            **KEY, "Content-Type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413, r.text
        detail = r.json()["detail"]
        assert "5000000 bytes" in detail and "MEDFL_MAX_BODY_BYTES" in detail
        assert list(spool.iterdir()) == []
        assert client.post("/predict", files=_files(open(CT, "rb").read()),
                           headers=KEY).status_code == 200
    assert list(spool.iterdir()) == []
