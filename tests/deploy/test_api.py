"""The FastAPI service in-process (TestClient): routes, auth, and every error code."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from deploy.api import Settings, create_app
from medfl.serving import TabularModel, load_bundle

RECORD = {"age": 63, "sex": 1, "cp": 4, "trestbps": 145, "chol": 233, "fbs": 1,
          "restecg": 2, "thalach": 150, "exang": 0, "oldpeak": 2.3}
KEY = {"X-API-Key": "s3cret-0123456789"}


@pytest.fixture(scope="module")
def client(run_dir):
    settings = Settings(bundle=run_dir, api_key=SecretStr("s3cret-0123456789"),
                        max_body_bytes=20_000,
                        max_batch=50)
    with TestClient(create_app(settings)) as c:
        yield c


def test_health_needs_no_key(client):
    r = client.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok", "model_loaded": True}


def test_predict_matches_the_library(client, run_dir):
    other = {**RECORD, "age": 41, "cp": 2, "exang": 1}
    r = client.post("/predict", json={"records": [RECORD, other]}, headers=KEY)
    assert r.status_code == 200, r.text
    body = r.json()
    expected = TabularModel.from_bundle(load_bundle(run_dir)).predict([RECORD, other])
    assert [p["probabilities"]["disease"] for p in body["predictions"]] == pytest.approx(
        [p["probabilities"]["disease"] for p in expected])
    assert body["threshold"] == 0.5 and len(body["model_version"]) == 12


def test_explain_returns_shap_values_per_feature(client):
    r = client.post("/explain", json={"records": [RECORD]}, headers=KEY)
    assert r.status_code == 200, r.text
    assert len(r.json()["explanations"][0]["shap_values"]) == 13


def test_model_describes_version_schema_metrics_and_privacy(client, run_dir):
    r = client.get("/model", headers=KEY)
    assert r.status_code == 200
    body = r.json()
    assert [c["name"] for c in body["input_schema"]["columns"]][0] == "age"
    assert body["weights_sha256"] == load_bundle(run_dir).manifest["weights_sha256"]
    assert {p["site"] for p in body["privacy"]} == {"cleveland", "hungarian", "switzerland", "va"}
    assert "not for clinical use" in body["disclaimer"]


def test_model_card_is_the_runs_and_404_with_a_reason_without_one(client, run_dir, tmp_path):
    r = client.get("/model-card", headers=KEY)
    assert r.status_code == 200
    assert r.text == (run_dir / "MODEL_CARD.md").read_text()
    assert "not for clinical use" in r.text
    import shutil

    shutil.copytree(run_dir / "model", tmp_path / "run" / "model")  # a run without a card
    with TestClient(create_app(Settings(bundle=tmp_path / "run"))) as bare:
        r = bare.get("/model-card")
    assert r.status_code == 404 and "MODEL_CARD.md" in r.json()["detail"]


@pytest.mark.parametrize(("path", "method"), [("/predict", "post"), ("/explain", "post"),
                                              ("/model", "get"), ("/model-card", "get"),
                                              ("/docs", "get"), ("/redoc", "get"),
                                              ("/openapi.json", "get")])
@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}])
def test_every_route_but_health_needs_the_key(client, path, method, headers):
    kwargs = {"json": {"records": [RECORD]}} if method == "post" else {}
    r = getattr(client, method)(path, headers=headers, **kwargs)
    assert r.status_code == 401


def test_wrong_content_type_is_415(client):
    r = client.post("/predict", content=b"age=63", headers={**KEY, "Content-Type":
                                                             "application/x-www-form-urlencoded"})
    assert r.status_code == 415 and "application/json" in r.json()["detail"]


def test_oversized_body_is_413(client):
    r = client.post("/predict", content=b'{"records": [' + b" " * 30_000 + b"]}",
                    headers={**KEY, "Content-Type": "application/json"})
    assert r.status_code == 413


def test_oversized_body_without_a_declared_length_is_413(client):
    def chunks():  # streamed: no Content-Length header
        yield b'{"records": ['
        for _ in range(40):
            yield b" " * 1000
        yield b"]}"

    r = client.post("/predict", content=chunks(), headers={**KEY, "Content-Type":
                                                            "application/json"})
    assert r.status_code == 413


def test_a_tabular_bundle_keeps_a_4_mb_default_body_limit(run_dir):
    body = b'{"records": [' + b" " * 4_000_000 + b"]}"
    with TestClient(create_app(Settings(bundle=run_dir))) as bare:
        r = bare.post("/predict", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        assert "4000000 bytes" in r.json()["detail"]
        assert "MEDFL_MAX_BODY_BYTES" in r.json()["detail"]
        r = bare.post("/predict", json={"records": [RECORD]})
        assert r.status_code == 200


def test_malformed_body_without_a_key_is_401_not_422(client):
    r = client.post("/predict", content=b"{not json", headers={"Content-Type":
                                                                "application/json"})
    assert r.status_code == 401


def test_a_huge_integer_is_422_not_500(client):
    r = client.post("/predict", content=b'{"records": [{"age": 1' + b"0" * 400 + b"}]}",
                    headers={**KEY, "Content-Type": "application/json"})
    assert r.status_code == 422


def test_an_empty_or_short_api_key_is_refused_at_startup(run_dir):
    from pydantic import ValidationError

    for key in ("", "short"):
        with pytest.raises(ValidationError, match="api_key"):
            Settings(bundle=run_dir, api_key=SecretStr(key))


def test_oversized_batch_is_413(client):
    r = client.post("/predict", json={"records": [RECORD] * 51}, headers=KEY)
    assert r.status_code == 413 and "at most 50" in r.json()["detail"]


@pytest.mark.parametrize(("body", "field"), [
    ({"records": [{**RECORD, "age": 250}]}, "records[0].age"),
    ({"records": [RECORD, {**RECORD, "restecg": 7}]}, "records[1].restecg"),
    ({"records": [{**RECORD, "ssn": "123-45-6789"}]}, "records[0].ssn"),
])
def test_invalid_fields_are_422_naming_the_field(client, body, field):
    r = client.post("/predict", json=body, headers=KEY)
    assert r.status_code == 422
    assert r.json()["field"] == field


@pytest.mark.parametrize("raw", [b"{not json", b"[]", b'{"records": []}', b'{"records": 5}',
                                 b'{"records": [5]}', b"null"])
def test_malformed_bodies_are_422_never_500(client, raw):
    r = client.post("/predict", content=raw, headers={**KEY, "Content-Type": "application/json"})
    assert r.status_code == 422, r.text


def test_no_body_or_value_is_logged(client, caplog):
    caplog.set_level(logging.DEBUG)
    client.post("/predict", json={"records": [{**RECORD, "chol": 287.123}]}, headers=KEY)
    client.post("/predict", json={"records": [{**RECORD, "age": 987.5}]}, headers=KEY)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "/predict" in text and "request" in text
    assert "287.123" not in text and "987.5" not in text


def test_a_tampered_bundle_does_not_start(run_dir, tmp_path):
    import shutil

    from medfl.errors import BundleError

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    w = copy / "model" / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 1
    w.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        with TestClient(create_app(Settings(bundle=copy))):
            pass


def test_with_a_public_key_only_a_signed_bundle_is_served(run_dir, tmp_path):
    import shutil

    from medfl.errors import BundleError
    from medfl.serving.signing import generate_keypair, sign_bundle

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    priv, pub = generate_keypair(tmp_path / "keys")
    with pytest.raises(BundleError, match="not signed"):
        with TestClient(create_app(Settings(bundle=copy, public_key=pub))):
            pass
    sign_bundle(copy / "model", priv)
    with TestClient(create_app(Settings(bundle=copy, public_key=pub))) as c:
        assert c.get("/health").json()["model_loaded"] is True


@pytest.mark.parametrize("body", [b"\xff\xfe not utf-8", b"[" * 100_00 + b"]" * 100_00,
                                  b'{"records": '])
def test_undecodable_json_bodies_are_422_not_500(client, body):
    r = client.post("/predict", content=body,
                    headers={**KEY, "Content-Type": "application/json"})
    assert r.status_code == 422, r.text


def test_openapi_schema_has_no_dangling_references(client):
    import json

    text = json.dumps(client.get("/openapi.json", headers=KEY).json())
    schema = client.get("/openapi.json", headers=KEY).json()
    refs = {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}
    assert refs <= set(schema["components"]["schemas"])
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}


def test_without_a_key_only_loopback_requests_are_answered(run_dir):
    # The local address a real server reports (scope["server"]): a network interface gets
    # 403 without a key, loopback is answered, /health always.
    import asyncio

    import httpx

    app = create_app(Settings(bundle=run_dir))

    async def status(host: str, path: str) -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}:8000") as c:
            return (await c.get(path)).status_code

    assert asyncio.run(status("10.1.2.3", "/model")) == 403
    assert asyncio.run(status("10.1.2.3", "/health")) == 200
    assert asyncio.run(status("[::ffff:10.1.2.3]", "/openapi.json")) == 403
    assert asyncio.run(status("127.0.0.1", "/openapi.json")) == 200


def test_a_signed_runs_report_and_card_are_served_as_signed(run_dir, tmp_path):
    import hashlib
    import json
    import shutil

    from medfl.serving.signing import generate_keypair, sign_bundle

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    priv, pub = generate_keypair(tmp_path / "keys")
    sign_bundle(copy / "model", priv)
    listed = json.loads((copy / "model" / "manifest.json").read_text())["signed_files"]
    for name in ("report.json", "MODEL_CARD.md"):  # hashlib as the reference
        assert listed[name] == hashlib.sha256((copy / name).read_bytes()).hexdigest()
    card = (copy / "MODEL_CARD.md").read_text()
    with TestClient(create_app(Settings(bundle=copy, public_key=pub,
                                        api_key=SecretStr(KEY["X-API-Key"])))) as c:
        (copy / "MODEL_CARD.md").write_text("# edited after start-up\n")
        r = c.get("/model-card", headers=KEY)
        assert r.status_code == 200 and r.text == card  # what was verified, not the disk
        assert c.get("/model", headers=KEY).json()["metrics_with_ci"]
