"""Imaging tasks end to end through the real apps (in-process): classification from a
hospital-style manifest of DICOM / PNG / NIfTI files, segmentation with masks, partitions.

The data are small synthetic hospitals written to files by ``medfl.data.synthetic``, read
back through ``data.manifest`` exactly as a hospital's own manifest would be.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_config
from PIL import Image
from typer.testing import CliRunner

from medfl import site as site_lib
from medfl import tasks
from medfl.cli import app as cli_app
from medfl.config import parse_run_config
from medfl.data.images import ImagePreprocessing
from medfl.data.synthetic import SiteProfile, generate_hospitals
from medfl.serving.bundle import load_bundle
from medfl.serving.imaging import ImageModel
from medfl.training import predict_proba

SIZE = 32


def _sites(fmt_a: str = "dicom", fmt_b: str = "png") -> tuple[SiteProfile, ...]:
    return (
        SiteProfile("alpha", 60, 0.5, 0.5, 55, 10, file_format=fmt_a),
        SiteProfile("beta", 50, 0.4, 0.4, 65, 10, file_format=fmt_b),
    )


@pytest.fixture(scope="module")
def cls_manifest(tmp_path_factory):
    return generate_hospitals(tmp_path_factory.mktemp("cls") / "data",
                              task="image-classification", seed=1, size=SIZE, sites=_sites())


@pytest.fixture(scope="module")
def seg_manifest(tmp_path_factory):
    return generate_hospitals(tmp_path_factory.mktemp("seg") / "data", task="segmentation",
                              seed=1, size=SIZE, sites=_sites("nifti", "png16"))


def _imaging_config(manifest, **overrides):
    base = dict(num_nodes=2, data__manifest=str(manifest), data__image_size=SIZE,
                num_server_rounds=2, strategy__min_nodes=2, train__batch_size=16,
                train__optimizer="adam",
                train__lr=0.002, privacy__target_epsilon=8.0, privacy__secure_noise=False,
                privacy__k_threshold=5,
                # exact test-set figures (a simulation may ask): checked by hand below
                privacy__test_epsilon=0.0,
                evaluation__personal_epochs=0)  # as the imaging scenarios ship
    base.update(overrides)
    return base


def _parsed(manifest, **overrides):
    kwargs = _imaging_config(manifest, **overrides)
    kwargs.pop("num_nodes")
    return parse_run_config(run_config(**kwargs))


def _binned_auroc(y, p):
    """The Mann-Whitney AUROC of scores binned on the public grid (threshold 0.5: logit
    edges -3 to 3), ties in a bin counting one half; by hand with numpy."""
    p = np.clip(p.astype(np.float64), 1e-12, 1 - 1e-12)
    z = np.log(p) - np.log1p(-p)
    bins = np.r_[-np.inf, np.arange(-3.0, 4.0), np.inf]
    neg, pos = (np.histogram(z[y == c], bins=bins)[0].astype(float) for c in (0, 1))
    below = np.r_[0.0, np.cumsum(neg)[:-1]]
    return float((pos * (below + 0.5 * neg)).sum() / (neg.sum() * pos.sum()))


def test_classification_from_a_dicom_manifest_runs_with_dp(run_inprocess, cls_manifest,
                                                           tmp_path):
    run, grid = run_inprocess(**_imaging_config(
        cls_manifest, task="image-classification", model__name="resnet", train__augment="light"))
    summary = json.loads((run / "summary.json").read_text())
    assert [s["name"] for s in summary["sites"]] == ["alpha", "beta"]
    for s in summary["sites"]:
        assert 0 < s["epsilon"] <= 8.0 and s["rounds_trained"] == 2
        assert s["metrics"]["accuracy"] is not None
    assert summary["dataset"] == "manifest"
    # The bundle records the image preprocessing, and its weights reproduce the run's
    # per-site accuracy when the site's test images are read back through the loader.
    bundle = load_bundle(run)
    prep = ImagePreprocessing.from_dict(bundle.manifest["preprocessing"]["image"])
    assert prep.size == SIZE and bundle.manifest["input_schema"]["type"] == "image"
    # every train round tells the sites the size the server's model and bundle are for
    train = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert train and all(m.content["config"]["image-size"] == SIZE for m in train)
    cfg = _parsed(cls_manifest, task="image-classification", model__name="resnet")
    data = site_lib.load_site(cfg, "alpha")
    model = tasks.task_for(cfg).build_model()
    model.load_state_dict(bundle.weights)
    p = predict_proba(model, data.x_test, device=torch.device("cpu"))
    acc = float(np.mean((p >= 0.5) == data.y_test))
    assert acc == pytest.approx(summary["sites"][0]["metrics"]["accuracy"])
    assert _binned_auroc(np.asarray(data.y_test).reshape(-1), p.reshape(-1)) == pytest.approx(
        summary["sites"][0]["metrics"]["auroc"])
    # Serving decodes uploaded DICOM bytes into exactly the arrays training used, and
    # predicts what the model predicted on them.
    served = ImageModel.from_bundle(bundle)
    frame = pd.read_csv(cls_manifest)
    files = [(cls_manifest.parent / f).read_bytes() for f in frame[frame.site == "alpha"].path]
    x = served.preprocess(files)
    trained = np.concatenate([data.x_train, data.x_test])
    assert len(x) == len(trained)
    assert all(np.abs(trained - xi).reshape(len(trained), -1).max(1).min() == 0 for xi in x)
    out = served.predict(files[:3])
    expect = predict_proba(model, x[:3], device=torch.device("cpu"))
    assert [o["probabilities"]["present"] for o in out] == pytest.approx(expect.tolist())
    assert all(o["label"] == ("present" if pe >= 0.5 else "absent")
               for o, pe in zip(out, expect, strict=True))
    # `medfl predict` on a folder of the same DICOM files gives the same probabilities; a
    # corrupt file stops it with the file's name and nothing written.
    folder = tmp_path / "upload"
    folder.mkdir()
    for i, data in enumerate(files[:3]):
        (folder / f"img{i}.dcm").write_bytes(data)
    result = CliRunner().invoke(cli_app, ["predict", str(run), str(folder), "-o",
                                          str(tmp_path / "pred.csv")])
    assert result.exit_code == 0, result.output
    pred = pd.read_csv(tmp_path / "pred.csv")
    assert list(pred["file"]) == ["img0.dcm", "img1.dcm", "img2.dcm"]
    assert list(pred["p_present"]) == pytest.approx(expect.tolist())
    (folder / "img3.dcm").write_bytes(files[3][:600])  # truncated
    result = CliRunner().invoke(cli_app, ["predict", str(run), str(folder), "-o",
                                          str(tmp_path / "pred2.csv")])
    assert result.exit_code == 2 and "img3.dcm" in result.output
    assert not (tmp_path / "pred2.csv").exists()
    # The report: Grad-CAM shares per 8 x 8 cell (each site's sums to 1), and each site's
    # overlays only in its site-local report, under its own state folder.
    report = json.loads((run / "report.json").read_text())
    ex = report["explanations"]
    assert ex["kind"] == "grad-cam"
    assert np.asarray(ex["saliency_grid"]).shape == (8, 8)
    assert float(np.sum(ex["saliency_grid"])) == pytest.approx(1.0, abs=1e-3)
    assert "base64" not in (run / "report.html").read_text()
    state = json.loads((run / "config.json").read_text())["run_config"]["state-dir"]
    local = (Path(state) / "alpha" / "reports" / run.name / "report.html").read_text()
    assert local.count("data:image/png;base64,") == 8


def test_segmentation_reports_dice_computed_by_hand(run_inprocess, seg_manifest, tmp_path):
    run, _ = run_inprocess(**_imaging_config(seg_manifest, task="segmentation",
                                             model__name="unet"))
    summary = json.loads((run / "summary.json").read_text())
    g = summary["global"]["metrics"]
    assert 0.0 <= g["dice"] <= 1.0 and 0.0 <= g["iou"] <= g["dice"] + 1e-9
    assert "mean_site_dice" in summary
    # Recompute one site's Dice from the served weights: 2|A∩B| / (|A| + |B|) per image,
    # an empty prediction of an empty mask scoring 1, then the mean over images.
    cfg = _parsed(seg_manifest, task="segmentation", model__name="unet")
    data = site_lib.load_site(cfg, "beta")
    model = tasks.task_for(cfg).build_model()
    model.load_state_dict(load_bundle(run).weights)
    p = predict_proba(model, data.x_test, device=torch.device("cpu"))
    pred, truth = (p >= 0.5).reshape(len(p), -1), (data.y_test > 0.5).reshape(len(p), -1)
    inter, total = (pred & truth).sum(1), pred.sum(1) + truth.sum(1)
    dice = np.where(total == 0, 1.0, 2 * inter / np.maximum(total, 1)).mean()
    beta = next(s for s in summary["sites"] if s["name"] == "beta")
    assert beta["metrics"]["dice"] == pytest.approx(float(dice), abs=1e-6)
    served = ImageModel.from_bundle(load_bundle(run))
    frame = pd.read_csv(seg_manifest)
    first = (seg_manifest.parent / frame[frame.site == "beta"].path.iloc[0]).read_bytes()
    [out] = served.predict([first])
    assert out["shape"] == [SIZE, SIZE] and set(np.unique(out["mask"])) <= {0, 1}
    # `medfl predict` writes the same mask as a 0/255 PNG beside its CSV
    src = seg_manifest.parent / frame[frame.site == "beta"].path.iloc[0]
    result = CliRunner().invoke(cli_app, ["predict", str(run), str(src), "-o",
                                          str(tmp_path / "seg.csv")])
    assert result.exit_code == 0, result.output
    row = pd.read_csv(tmp_path / "seg.csv").iloc[0]
    written = np.asarray(Image.open(tmp_path / row["mask"]))
    assert np.array_equal(written, out["mask"] * 255)
    assert row["lesion_fraction"] == pytest.approx(out["mask"].mean())
    # report.json: beta's HD95 is MONAI's 95th-percentile Hausdorff distance averaged over
    # the images where both masks are non-empty, and the pooled Dice is the summary's.
    from monai.metrics import HausdorffDistanceMetric

    report = json.loads((run / "report.json").read_text())
    pops = {p["name"]: p for p in report["populations"]}
    both = (pred.sum(1) > 0) & (truth.sum(1) > 0)
    shape = (len(p), 1, SIZE, SIZE)
    hd = HausdorffDistanceMetric(percentile=95, reduction="none")(
        torch.as_tensor(pred.reshape(shape)[both], dtype=torch.float32),
        torch.as_tensor(truth.reshape(shape)[both], dtype=torch.float32))
    assert pops["beta"]["metrics"]["hd95"]["value"] == pytest.approx(float(hd.mean()), rel=1e-5)
    assert pops["beta"]["metrics"]["dice"]["value"] == pytest.approx(float(dice), abs=1e-6)
    assert pops["pooled"]["metrics"]["dice"]["value"] == pytest.approx(g["dice"], abs=1e-9)
    lo, hi = pops["pooled"]["metrics"]["dice"]["ci"]
    assert lo < g["dice"] < hi


def test_evaluate_replies_carry_only_three_noisy_sums_not_per_image_dice(run_inprocess,
                                                                          seg_manifest):
    _, grid = run_inprocess(**_imaging_config(seg_manifest, task="segmentation",
                                              model__name="unet", num_server_rounds=1,
                                              privacy__audit=False, privacy__test_epsilon=1.0))
    evals = [r for r in grid.replies
             if r.metadata.message_type == "evaluate" and not r.has_error()]
    assert len(evals) == 2
    for reply in evals:
        m = dict(reply.content["metrics"])
        # images, the sum of per-image Dice and of IoU: nothing per image
        assert len(m["sums"]) == 3 and m["hist"] == []
        # three components, each moved by at most 1 per image: std = σ · sqrt(3) > 0
        assert m["sums-std"] > 0 and m["test-epsilon"] > 0
        assert not any(float(v).is_integer() for v in m["sums"])  # noisy, not exact


def test_dirichlet_partition_re_splits_a_manifest_into_partitions(cls_manifest):
    cfg = _parsed(cls_manifest, task="image-classification", model__name="resnet",
                  data__partition="iid")
    names = tasks.task_for(cfg).sites(num_partitions=2)
    assert names == ("part-1", "part-2")
    parts = [site_lib.load_site(cfg, s, num_partitions=2) for s in names]
    total = len(pd.read_csv(cls_manifest))
    assert sum(p.n_train + p.n_test for p in parts) == total


def test_model_and_task_must_fit():
    from medfl.errors import ConfigError

    with pytest.raises(ConfigError, match="does not fit task"):
        parse_run_config(run_config(task="segmentation", model__name="resnet"))


def test_a_site_manifest_in_deployment_is_the_site_own_data(cls_manifest, tmp_path):
    """A deployed site points data-path at its own manifest (no site column needed)."""
    frame = pd.read_csv(cls_manifest)
    own = frame[frame.site == "beta"].drop(columns=["site"])
    own["path"] = [str(cls_manifest.parent / p) for p in own["path"]]
    path = tmp_path / "beta.csv"
    own.to_csv(path, index=False)
    cfg = parse_run_config(run_config(task="image-classification", model__name="resnet",
                                      data__image_size=SIZE))
    data = site_lib.load_site(cfg, "beta", data_path=str(path))
    assert data.n_train + data.n_test == len(own)
    assert data.x_train.shape[1:] == (1, SIZE, SIZE)
