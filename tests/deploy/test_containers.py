"""The containers a hospital would run, built and run for real: deploy/verify-containers.sh
end to end (base image, three images, certificates, SuperLink, three SuperNodes, a run with
one site's container restarted, the bundle served, everything stopped).

Opt-in: the builds take many minutes and need a Docker engine, so this runs only with
MEDFL_CONTAINER_TESTS=1 and an engine that answers (`make containers` runs the script
alone). Its figures are in BENCHMARKS.md, "Containers"."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LABEL = "medfl.verify-containers"


def _engine() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("MEDFL_CONTAINER_TESTS") != "1",
                       reason="set MEDFL_CONTAINER_TESTS=1 to build and run the containers"),
]


@pytest.mark.timeout(3600)
def test_the_containerised_federation_runs_end_to_end(tmp_path):
    if not _engine():
        pytest.skip("no Docker engine answers ('docker info')")
    work = tmp_path / "work"
    proc = subprocess.run(["bash", str(ROOT / "deploy" / "verify-containers.sh")],
                          env={**os.environ, "WORK": str(work), "PYTHON": sys.executable},
                          capture_output=True,
                          text=True, timeout=3500)
    (tmp_path / "verify-containers.out").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    # every image runs as the unprivileged user, has a health check and carries no key
    for image in ("superlink", "supernode", "api"):
        config = json.loads(subprocess.run(
            ["docker", "image", "inspect", "-f", "{{json .Config}}", f"medfl-{image}"],
            capture_output=True, text=True, check=True).stdout)
        assert config["User"] == "medfl"
        assert config["Healthcheck"]["Test"][0] == "CMD-SHELL"
        keys = subprocess.run(
            ["docker", "run", "--rm", "--network", "none", f"medfl-{image}", "sh", "-c",
             "grep -rlIE -- '-----BEGIN [A-Z ]*PRIVATE KEY-----' /app /etc /state /tmp || true"],
            capture_output=True, text=True, check=True).stdout
        assert keys.strip() == "", keys

    # each site's key: 0600, owned by the services' user; the SuperLink got its own only
    for site in ("cleveland", "hungarian", "va"):
        key = (work / "sites" / site / "keys" / "site.key").stat()
        assert stat.S_IMODE(key.st_mode) == 0o600 and key.st_uid == 10001
    assert sorted(p.name for p in (work / "superlink" / "tls").iterdir()) == [
        "ca.crt", "server.crt", "server.key"]

    # the run: every round, VA dropped from round 2 by its restart and back later
    rounds = [json.loads(x) for x in (work / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    assert sorted(rounds[0]["train"]) == ["cleveland", "hungarian", "va"]
    assert "va" not in rounds[1]["train"]
    assert {p["site"]: p["status"] for p in rounds[1]["train_problems"]}["va"] == "dropped"
    assert any("va" in r["train"] for r in rounds[2:])
    assert all("cleveland" in r["train"] for r in rounds)

    # the served bundle answered a prediction: two classes, probabilities summing to 1
    body = json.loads((work / "predict.json").read_text())
    probabilities = body["predictions"][0]["probabilities"]
    assert sorted(probabilities) == ["disease", "no disease"]
    assert abs(sum(probabilities.values()) - 1) < 1e-6

    # nothing left behind
    left = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={LABEL}"],
                          capture_output=True, text=True, check=True).stdout
    assert left.strip() == ""
    summary = json.loads((work / "summary.json").read_text())
    assert all(size > 0 for size in summary["images_bytes"].values())
