"""Synthetic hospitals: reproducible files, a real site shift, learnable lesions, safe writes.

Files are read back with Pillow, nibabel and pydicom directly (not through MedFL's loader),
and compared with the storage contract stated in ``medfl.data.synthetic``: modality units
u are stored as round(255 u) in PNG, round(65535 u) in 16-bit PNG, u in NIfTI and
HU = round(2000 u - 1000) in DICOM.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from scipy import ndimage

from medfl.data import synthetic
from medfl.data.synthetic import (
    FILE_FORMATS,
    GENERATOR_VERSION,
    LABEL_NAMES,
    SiteProfile,
    dataset_key,
    default_sites,
    generate_hospitals,
)
from medfl.errors import ConfigError

SIZE = 32
CLS = "image-classification"
SEG = "segmentation"


def _site(name: str, file_format: str = "nifti", **overrides) -> SiteProfile:
    fields = dict(name=name, n=12, prevalence=0.5, female_fraction=0.5, age_mean=60.0,
                  age_sd=12.0, noise_sd=0.03, blur_sigma=0.5, file_format=file_format)
    return SiteProfile(**{**fields, **overrides})


FOUR_SITES = tuple(_site(f"site-{fmt}", fmt) for fmt in FILE_FORMATS)


def _rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="") as f:
        return list(csv.DictReader(f))


def _read(path: Path) -> np.ndarray:
    """Stored values in the file's own units (DICOM: HU via RescaleSlope/Intercept)."""
    if path.name.endswith(".nii.gz"):
        return np.asarray(nib.load(path).dataobj)
    if path.suffix == ".dcm":
        ds = pydicom.dcmread(path)
        return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return np.asarray(Image.open(path))


def _units(path: Path) -> np.ndarray:
    """Modality units from the file, by the storage contract in the module docstring."""
    values = _read(path)
    if path.suffix == ".dcm":
        return (values + 1000.0) / 2000.0
    if path.suffix == ".png":
        return values / float(np.iinfo(values.dtype).max)  # 255 (8-bit) or 65535 (16-bit)
    return values.astype(np.float64)


def _images(root: Path, column: str = "path") -> list[np.ndarray]:
    return [_read(root / row[column]) for row in _rows(root / "manifest.csv")]


@pytest.fixture(scope="module")
def cls_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cls") / "data"
    generate_hospitals(root, task=CLS, size=SIZE, sites=FOUR_SITES)
    return root


@pytest.fixture(scope="module")
def seg_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("seg") / "data"
    sites = (_site("big", n=40, blur_sigma=0.5),)
    generate_hospitals(root, task=SEG, size=64, sites=sites)
    return root


# ------------------------------------------------------------------ reproducibility


@pytest.mark.parametrize("task", [CLS, SEG])
def test_same_arguments_give_identical_manifest_and_pixels(tmp_path, task):
    first = generate_hospitals(tmp_path / "a", task=task, size=SIZE, sites=FOUR_SITES)
    second = generate_hospitals(tmp_path / "b", task=task, size=SIZE, sites=FOUR_SITES)

    assert first.read_bytes() == second.read_bytes()
    columns = ["path", "mask_path"] if task == SEG else ["path"]
    for column in columns:
        for x, y in zip(_images(first.parent, column), _images(second.parent, column),
                        strict=True):
            np.testing.assert_array_equal(x, y)


def test_another_seed_changes_the_data(tmp_path, cls_root):
    other = generate_hospitals(tmp_path / "seed1", task=CLS, seed=1, size=SIZE,
                               sites=FOUR_SITES)

    assert other.read_bytes() != (cls_root / "manifest.csv").read_bytes()
    changed = [not np.array_equal(x, y)
               for x, y in zip(_images(cls_root), _images(other.parent), strict=True)]
    assert all(changed)


def test_dataset_key_is_short_stable_and_parameter_sensitive():
    key = dataset_key(CLS, 0, SIZE, FOUR_SITES)

    assert key == dataset_key(CLS, 0, SIZE, tuple(FOUR_SITES))
    assert len(key) <= 16 and key.isalnum()
    variants = [dataset_key(SEG, 0, SIZE, FOUR_SITES), dataset_key(CLS, 1, SIZE, FOUR_SITES),
                dataset_key(CLS, 0, 64, FOUR_SITES),
                dataset_key(CLS, 0, SIZE, (replace(FOUR_SITES[0], noise_sd=0.031),
                                            *FOUR_SITES[1:]))]
    assert key not in variants and len(set(variants)) == len(variants)


# ------------------------------------------------------------------ layout and manifest


@pytest.mark.parametrize("task, target", [(CLS, "label"), (SEG, "mask_path")])
def test_manifest_columns_and_relative_paths(tmp_path, task, target):
    manifest = generate_hospitals(tmp_path / "d", task=task, size=SIZE, sites=FOUR_SITES)

    with manifest.open(newline="") as f:
        assert next(csv.reader(f)) == ["path", target, "site", "sex", "age"]
    rows = _rows(manifest)
    assert len(rows) == sum(s.n for s in FOUR_SITES)
    extensions = {"png": ".png", "png16": ".png", "nifti": ".nii.gz", "dicom": ".dcm"}
    for site in FOUR_SITES:
        site_rows = [r for r in rows if r["site"] == site.name]
        assert [r["path"] for r in site_rows] == [
            f"{site.name}/{i:04d}{extensions[site.file_format]}" for i in range(site.n)]
    for row in rows:
        assert not Path(row["path"]).is_absolute() and "\\" not in row["path"]
        assert (manifest.parent / row["path"]).is_file()
        assert row["sex"] in ("F", "M") and 18 <= int(row["age"]) <= 100
        if task == CLS:
            assert row["label"] in LABEL_NAMES
        else:
            # NIfTI sites keep image and mask in one format (the loader refuses a mix)
            ext = ".nii.gz" if row["path"].endswith(".nii.gz") else ".png"
            assert row["mask_path"] == row["path"].split(".")[0] + "_mask" + ext
            assert (manifest.parent / row["mask_path"]).is_file()


def test_labels_and_demographics_follow_the_profiles(tmp_path):
    sites = (_site("low", n=300, prevalence=0.25, female_fraction=0.3, age_mean=45),
             _site("high", n=300, prevalence=0.5, female_fraction=0.7, age_mean=70, age_sd=8))
    rows = _rows(generate_hospitals(tmp_path / "d", task=CLS, size=16, sites=sites))

    for site in sites:
        site_rows = [r for r in rows if r["site"] == site.name]
        n = len(site_rows)
        for share, p in [
            (np.mean([r["label"] == "present" for r in site_rows]), site.prevalence),
            (np.mean([r["sex"] == "F" for r in site_rows]), site.female_fraction),
        ]:
            # Four binomial standard errors: a false alarm ~1e-4 per check.
            assert abs(share - p) <= 4 * math.sqrt(p * (1 - p) / n)
        ages = np.array([int(r["age"]) for r in site_rows])
        assert abs(ages.mean() - site.age_mean) <= 4 * site.age_sd / math.sqrt(n) + 0.5


def test_readme_says_synthetic_and_lists_the_parameters(cls_root):
    text = (cls_root / "README.md").read_text()

    assert "synthetic" in text.lower() and "no patient data" in text.lower()
    assert f"generator version: {GENERATOR_VERSION}" in text
    assert "seed: 0" in text and CLS in text and f"{SIZE} x {SIZE}" in text
    assert all(site.name in text for site in FOUR_SITES)


# ------------------------------------------------------------------ content


@pytest.mark.parametrize("file_format", FILE_FORMATS)
def test_higher_intensity_offset_gives_higher_stored_values(tmp_path, file_format):
    sites = (_site("low", file_format, intensity_offset=0.0),
             _site("high", file_format, intensity_offset=0.15))
    manifest = generate_hospitals(tmp_path / "d", task=CLS, size=SIZE, sites=sites)

    rows = _rows(manifest)
    mean = {s.name: np.mean([_read(manifest.parent / r["path"]).mean()
                             for r in rows if r["site"] == s.name]) for s in sites}
    assert mean["high"] > mean["low"]


def test_higher_noise_sd_gives_more_high_frequency_energy_on_the_same_anatomy(tmp_path):
    # Same seed, same site index and name: only noise_sd differs, so the anatomy is shared.
    quiet, noisy = (_site("s", noise_sd=0.01, blur_sigma=0.0), _site("s", noise_sd=0.08,
                                                                      blur_sigma=0.0))
    a = generate_hospitals(tmp_path / "quiet", task=CLS, size=SIZE, sites=(quiet,))
    b = generate_hospitals(tmp_path / "noisy", task=CLS, size=SIZE, sites=(noisy,))

    for x, y in zip(_images(a.parent), _images(b.parent), strict=True):
        assert ndimage.laplace(y.astype(np.float64)).std() > ndimage.laplace(
            x.astype(np.float64)).std()


def test_every_format_stores_the_same_modality_units(tmp_path):
    units = {}
    for fmt in FILE_FORMATS:
        root = generate_hospitals(tmp_path / fmt, task=CLS, size=SIZE,
                                  sites=(_site("s", fmt),)).parent
        units[fmt] = np.stack([_units(root / r["path"]) for r in _rows(root / "manifest.csv")])
    reference = units["nifti"].astype(np.float64)

    np.testing.assert_allclose(units["png"], np.clip(reference, 0, 1), atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(units["png16"], np.clip(reference, 0, 1),
                               atol=0.5 / 65535 + 1e-6)
    # DICOM round trip: HU = pixel_array * slope + intercept is round(2000 u - 1000), within
    # what 12 unsigned bits hold after the -1024 intercept: [-1024, 3071] HU.
    root = tmp_path / "dicom"
    hu = np.stack([_read(root / r["path"]) for r in _rows(root / "manifest.csv")])
    np.testing.assert_array_equal(hu, np.round(hu))
    np.testing.assert_allclose(hu, np.clip(reference * 2000.0 - 1000.0, -1024, 3071),
                               atol=0.5 + 1e-3)


def test_dicom_files_are_valid_synthetic_ct(cls_root):
    rows = [r for r in _rows(cls_root / "manifest.csv") if r["path"].endswith(".dcm")]
    uids = set()
    for row in rows:
        ds = pydicom.dcmread(cls_root / row["path"])
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == CTImageStorage
        assert ds.Modality == "CT" and str(ds.PatientName) == "SYNTHETIC"
        assert (ds.Rows, ds.Columns, ds.BitsAllocated) == (SIZE, SIZE, 16)
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert ds.pixel_array.dtype == np.uint16
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
        assert float(ds.WindowWidth) > 0 and "WindowCenter" in ds
        assert ds.PatientSex == row["sex"] and int(ds.PatientAge[:3]) == int(row["age"])
        uids.add(ds.SOPInstanceUID)
    assert len(uids) == len(rows)


def test_present_images_have_a_brighter_local_peak(tmp_path):
    site = _site("s", n=80, noise_sd=0.04)
    root = generate_hospitals(tmp_path / "d", task=CLS, size=64, sites=(site,)).parent
    peaks = {name: [] for name in LABEL_NAMES}
    for row in _rows(root / "manifest.csv"):
        image = _read(root / row["path"]).astype(np.float64)
        peaks[row["label"]].append(ndimage.uniform_filter(image, size=3).max())

    assert min(len(v) for v in peaks.values()) >= 20
    # A lesion adds ~0.18 (older) to ~0.40 (younger) tissue units on a 3-6 px disc, a normal
    # structure at most 0.10 (larger) or 0.05 (small): the mean peaks differ clearly.
    assert np.mean(peaks["present"]) - np.mean(peaks["absent"]) > 0.08


def test_segmentation_masks_are_binary_and_cover_bright_lesions(seg_root):
    rows = _rows(seg_root / "manifest.csv")
    brighter = []
    for row in rows:
        if row["mask_path"].endswith(".nii.gz"):  # NIfTI masks hold {0, 1}
            mask = np.asarray(nib.load(seg_root / row["mask_path"]).dataobj) * 255
        else:
            mask = np.asarray(Image.open(seg_root / row["mask_path"]))
        image = _read(seg_root / row["path"]).astype(np.float64)
        assert mask.dtype == np.uint8 and mask.shape == image.shape
        assert set(np.unique(mask)) == {0, 255}
        lesion = mask == 255
        ring = ndimage.binary_dilation(lesion, iterations=3) & ~lesion
        brighter.append(image[lesion].mean() > image[ring].mean())
    assert all(brighter)


# ------------------------------------------------------------------ caching and atomic writes


def test_cached_call_returns_the_dataset_without_rewriting(cls_root):
    manifest = cls_root / "manifest.csv"
    some_file = cls_root / _rows(manifest)[0]["path"]
    before = (manifest.stat().st_mtime_ns, some_file.stat().st_mtime_ns)

    again = generate_hospitals(cls_root, task=CLS, size=SIZE, sites=FOUR_SITES)

    assert again == manifest
    assert (manifest.stat().st_mtime_ns, some_file.stat().st_mtime_ns) == before
    assert [p.name for p in cls_root.parent.iterdir()] == ["data"]  # no temporary leftovers


def test_a_different_dataset_in_out_dir_is_refused_and_kept(cls_root):
    before = (cls_root / "manifest.csv").read_bytes()

    with pytest.raises(ConfigError, match="remove it or choose another folder"):
        generate_hospitals(cls_root, task=CLS, seed=7, size=SIZE, sites=FOUR_SITES)

    assert (cls_root / "manifest.csv").read_bytes() == before
    assert [p.name for p in cls_root.parent.iterdir()] == ["data"]


def test_loser_of_a_concurrent_rename_uses_the_winners_dataset(tmp_path, monkeypatch):
    out_dir, sites = tmp_path / "d", (_site("s", n=4),)
    real_replace = os.replace

    def winner_finishes_first(src, dst):
        monkeypatch.setattr(os, "replace", real_replace)
        generate_hospitals(out_dir, task=CLS, size=SIZE, sites=sites)  # the other process
        winner = (out_dir / "manifest.csv").stat().st_mtime_ns
        real_replace(src, dst)  # raises: out_dir is no longer missing or empty
        raise AssertionError(f"rename onto a complete dataset succeeded ({winner})")

    monkeypatch.setattr(os, "replace", winner_finishes_first)
    manifest = generate_hospitals(out_dir, task=CLS, size=SIZE, sites=sites)

    assert manifest == out_dir / "manifest.csv" and len(_rows(manifest)) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_a_crash_while_generating_leaves_nothing_behind(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic, "_readme", crash)  # after every image is written
    with pytest.raises(RuntimeError, match="disk full"):
        generate_hospitals(tmp_path / "d", task=CLS, size=SIZE, sites=(_site("s", n=3),))

    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ validation and defaults


@pytest.mark.parametrize("kwargs, message", [
    (dict(task="classification"), "did you mean 'image-classification'"),
    (dict(task="detection"), "valid tasks are"),
    (dict(task=CLS, size=8), "size 8 is invalid; use an integer >= 16"),
    (dict(task=CLS, seed=-1), "seed -1 is invalid; use an integer >= 0"),
    (dict(task=CLS, sites=()), "at least one SiteProfile"),
    (dict(task=CLS, sites=(_site("s"), _site("s"))), "must be unique"),
])
def test_bad_arguments_raise_config_error(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        generate_hospitals(tmp_path / "d", **kwargs)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("overrides, field", [
    (dict(file_format="jpeg"), "file_format"), (dict(prevalence=1.5), "prevalence"),
    (dict(resolution=0.0), "resolution"), (dict(name="../up"), "name"),
])
def test_bad_site_profile_raises_config_error(overrides, field):
    with pytest.raises(ConfigError, match=field):
        _site(**{"name": "s", **overrides})


@pytest.mark.parametrize("task", [CLS, SEG])
def test_default_sites_cover_every_format_with_distinct_signatures(task):
    sites = default_sites(task)

    assert len(sites) == 4 and sorted(s.file_format for s in sites) == sorted(FILE_FORMATS)
    assert 1000 <= sum(s.n for s in sites) <= 1100 and min(s.n for s in sites) < 200
    assert all(0.25 <= s.prevalence <= 0.5 for s in sites)
    signatures = {(s.intensity_scale, s.intensity_offset, s.noise_sd, s.blur_sigma,
                   s.resolution) for s in sites}
    assert len(signatures) == 4
