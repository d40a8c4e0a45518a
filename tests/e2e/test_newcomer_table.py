"""A newcomer's own table, end to end, as README's "Your own table" tells it.

A hospital data scientist arrives with a multi-site CSV that has the flaws real exports
have: empty and ``NA`` cells, binary columns coded as text, an identifier column the
schema does not mention, a site whose patients all share one outcome, and a site with
fewer test patients than k. The commands are the README's: ``flwr run`` on the CSV and
its schema, ``medfl show`` on the run folder, and the served bundle's prediction for a
record with an empty cell.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT

from medfl.localsim import flower_env, free_port_pair
from medfl.serving import TabularModel, load_bundle

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent

SCHEMA = {
    "label": {"column": "outcome", "names": ["no event", "event"], "negative": "0",
              "positive": "1"},
    "features": [
        {"name": "age", "type": "numeric", "bounds": [18, 100]},
        {"name": "systolic_bp", "type": "numeric", "bounds": [70, 250],
         "missing": "impute", "indicator": True},
        {"name": "cholesterol", "type": "numeric", "bounds": [1.5, 15.0],
         "missing": "impute"},
        {"name": "smoker", "type": "categorical", "levels": ["no", "yes"]},
        {"name": "activity", "type": "categorical", "levels": ["high", "moderate", "low"],
         "missing": "level"},
    ],
    "sensitive": [{"name": "sex", "levels": ["F", "M"]}],
}

#: (site, patients, outcome rate): "county" has no event at all, "clinic" has 24 patients
#: (7 test patients at the default test fraction 0.3: under k = 10).
SITES = (("st-marys", 260, 0.3), ("general", 220, 0.25), ("county", 120, 0.0),
         ("clinic", 24, 0.3))


def _identifier(rng: np.random.Generator, n: int) -> list[str]:
    return [f"MRN{int(v):08d}" for v in rng.choice(10**8, size=n, replace=False)]


def _site_rows(name: str, n: int, rate: float, rng: np.random.Generator) -> pd.DataFrame:
    age = np.clip(rng.normal(60, 12, n), 18, 100).round()
    sbp = np.clip(rng.normal(130 + 0.5 * (age - 60), 15, n), 70, 250).round()
    chol = np.clip(rng.normal(5.2, 1.0, n), 1.5, 15.0).round(1)
    smoker = rng.random(n) < 0.25
    logit = 0.06 * (age - 60) + 0.03 * (sbp - 130) + 0.9 * smoker
    risk = 1 / (1 + np.exp(-logit))
    outcome = (rng.random(n) < risk * rate / risk.mean()).astype(int) if rate else np.zeros(n)
    frame = pd.DataFrame({
        "patient_id": _identifier(rng, n), "site": name, "age": age.astype(int),
        "sex": rng.choice(["F", "M"], n), "systolic_bp": sbp.astype(int).astype(object),
        "cholesterol": chol.astype(object), "smoker": np.where(smoker, "yes", "no"),
        "activity": rng.choice(["high", "moderate", "low"], n).astype(object),
        "outcome": outcome.astype(int)})
    # the flaws of a real export: empty cells, "NA" and "?" where a value was not taken
    for column, token, share in (("systolic_bp", "", 0.08), ("cholesterol", "NA", 0.12),
                                 ("activity", "?", 0.05)):
        frame.loc[rng.random(n) < share, column] = token
    return frame


def newcomer_table(folder: Path) -> tuple[Path, Path, Path, set[str]]:
    """Write the CSV (all four sites), the same CSV without "county" (what the refusal
    tells the consortium to do), the schema; and return the identifiers."""
    rng = np.random.default_rng(2026)
    frame = pd.concat([_site_rows(*site, rng=rng) for site in SITES], ignore_index=True)
    every, without = folder / "patients.csv", folder / "patients-without-county.csv"
    frame.to_csv(every, index=False)
    frame[frame["site"] != "county"].to_csv(without, index=False)
    schema = folder / "schema.json"
    schema.write_text(json.dumps(SCHEMA, indent=2))
    return every, without, schema, set(frame["patient_id"])


def _flwr_run(csv: Path, schema: Path, *, nodes: int, out: Path, state: Path, name: str,
              env: dict, cwd: Path, extra: str = "") -> subprocess.CompletedProcess:
    config = (f"task='tabular' data.manifest='{csv}' data.schema='{schema}' "
              f"strategy.min-nodes={nodes} num-server-rounds=2 output-dir='{out}' "
              f"state-dir='{state}' run-name='{name}' {extra}")
    return subprocess.run(
        [str(BIN / "flwr"), "run", str(ROOT), "--stream", "--federation-config",
         f"num-supernodes={nodes} client-resources-num-cpus=1", "--run-config", config],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory):
    """Both runs of the newcomer's path; yields their processes and folders."""
    tmp = tmp_path_factory.mktemp("newcomer")
    every, without, schema, ids = newcomer_table(tmp)
    flwr_home = tmp / "flwr-home"
    flwr_home.mkdir()
    shutil.copy(ROOT / "simulations" / "flwr-config.toml", flwr_home / "config.toml")
    env = {**os.environ, **flower_env(ROOT, port=free_port_pair())}
    env.update(FLWR_HOME=str(flwr_home), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    env.pop("MEDFL_HOME", None)
    out, state = tmp / "outputs", tmp / "state"
    refused = _flwr_run(every, schema, nodes=4, out=out, state=state, name="all-four",
                        env=env, cwd=tmp)
    # exact test-set figures (a simulation may ask), so that the utility floor is the
    # plain count: with noise it hides a cell only when the noise interval shows it small
    completed = _flwr_run(without, schema, nodes=3, out=out, state=state, name="three",
                          env=env, cwd=tmp, extra="privacy.test-epsilon=0.0")
    show = subprocess.run([str(BIN / "medfl"), "show", str(out / "three")], env=env,
                          capture_output=True, text=True, timeout=120)
    yield {"refused": refused, "completed": completed, "show": show, "out": out,
           "state": state, "ids": ids, "tmp": tmp}
    subprocess.run([str(BIN / "python"), "-m", "medfl.localsim", "stop"], env=env,
                   capture_output=True, timeout=60)


def test_the_one_class_site_is_refused_in_one_line_naming_it_and_what_to_do(newcomer):
    proc = newcomer["refused"]
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text, text[-3000:]
    # the site's own refusal, then the server's one line: who, why, and what to do
    assert "site 'county' has only class 'no event'" in text, text[-3000:]
    lines = [line for line in text.splitlines() if "strategy.min-nodes" in line]
    assert len(lines) == 1, text[-3000:]
    assert "county" in lines[0] and "class" in lines[0] and "drop" in lines[0], lines[0]
    run = newcomer["out"] / "all-four"
    # no folder left behind as if the run had completed
    assert not (run / "summary.json").exists()
    assert not (run / "model" / "manifest.json").exists()


def test_the_run_without_it_completes_with_a_headline_and_says_who_is_suppressed(newcomer):
    proc = newcomer["completed"]
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    summary = json.loads((newcomer["out"] / "three" / "summary.json").read_text())
    assert [s["name"] for s in summary["sites"]] == ["clinic", "general", "st-marys"]
    clinic = next(s for s in summary["sites"] if s["name"] == "clinic")
    assert clinic["metrics"]["accuracy"] is None  # 7 test patients, under k = 10
    shown = [s["metrics"]["accuracy"] for s in summary["sites"]
             if s["metrics"]["accuracy"] is not None]
    assert summary["sites_reported"] == len(shown) == 2
    assert summary["mean_site_accuracy"] == pytest.approx(sum(shown) / 2)
    show = newcomer["show"]
    assert show.returncode == 0, show.stderr[-2000:]
    assert "clinic" in show.stdout and "suppressed" in show.stdout, show.stdout


def test_the_served_bundle_predicts_a_record_with_an_empty_imputed_cell(newcomer):
    model = TabularModel.from_bundle(load_bundle(newcomer["out"] / "three" / "model"))
    record = {"age": 67, "systolic_bp": None, "cholesterol": None, "smoker": "yes",
              "activity": None}
    (answer,) = model.predict([record])
    assert 0.0 <= answer["probabilities"]["event"] <= 1.0
    assert answer["label"] in ("no event", "event")


def test_no_identifier_appears_in_any_output_log_or_message(newcomer):
    ids = newcomer["ids"]
    texts = [newcomer[k].stdout + newcomer[k].stderr for k in ("refused", "completed", "show")]
    for folder in (newcomer["out"], newcomer["state"]):
        for path in folder.rglob("*"):
            if path.is_file():
                texts.append(path.read_bytes().decode("latin-1"))
    assert texts
    for text in texts:
        assert "patient_id" not in text
        assert not [i for i in ids if i in text][:3]
