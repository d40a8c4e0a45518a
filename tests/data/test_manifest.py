"""Image manifests: validation, per-site loading, splits and privacy-safe messages.

Each test image is a flat 8x8 PNG of value ``10 * i`` for row ``i``. With a fixed window
of [0, 255] the loaded image equals ``10 * i / 255`` everywhere, which tells which row
landed where, so row order is checked without trusting the loader.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.model_selection import train_test_split

from medfl.data.images import ImagePreprocessing
from medfl.data.manifest import IMAGE_TASKS, load_manifest_site, read_manifest
from medfl.errors import ConfigError, DataError

PREP = ImagePreprocessing(size=8, intensity="window", window_center=127.5, window_width=255.0)


def _row_of(x: np.ndarray) -> list[int]:
    """Recover each sample's row number from its flat image value."""
    return [int(round(v * 255 / 10)) for v in x[:, 0, 0, 0]]


def _write(tmp_path, rows: list[dict], name="manifest.csv"):
    """Write one flat PNG per row (unless the row names none) and the manifest."""
    (tmp_path / "img").mkdir(exist_ok=True)
    for i, row in enumerate(rows):
        row.setdefault("path", f"img/{i}.png")
        Image.fromarray(np.full((8, 8), 10 * i, dtype=np.uint8)).save(tmp_path / row["path"])
    pd.DataFrame(rows).to_csv(tmp_path / name, index=False)
    return tmp_path / name


def _rows(labels: str, site="a", **extra):
    return [{"label": "present" if c == "p" else "absent", "site": site, **extra}
            for c in labels]


def test_image_tasks():
    assert IMAGE_TASKS == ("image-classification", "segmentation")


def test_round_trip_keeps_rows_labels_and_sensitive_in_order(tmp_path):
    rows = _rows("ppaapaappa") + _rows("apap", site="b")
    for i, row in enumerate(rows):
        row.update(sex="F" if i % 2 else "M", age=30 + i, notes="ignored")
    manifest = read_manifest(_write(tmp_path, rows), task="image-classification")
    assert manifest.sites == ("a", "b")
    assert manifest.label_names == ("absent", "present")
    assert manifest.sensitive == ("sex", "age")
    assert "notes" not in manifest.frame.columns
    assert manifest.root == tmp_path

    data = load_manifest_site(manifest, "a", prep=PREP, test_fraction=0.3, seed=0)
    assert data.name == "a" and (data.n_train, data.n_test) == (7, 3)
    assert data.x_train.shape == (7, 1, 8, 8) and data.x_train.dtype == np.float32
    assert data.y_train.dtype == np.int64
    for x, y, sens in ((data.x_train, data.y_train, data.sensitive_train),
                       (data.x_test, data.y_test, data.sensitive_test)):
        row_ids = _row_of(x)
        assert sorted(row_ids) == row_ids  # manifest order kept
        assert list(y) == [int(rows[i]["label"] == "present") for i in row_ids]
        assert list(sens["age"]) == [30 + i for i in row_ids]
        assert list(sens["sex"]) == [rows[i]["sex"] for i in row_ids]
        assert list(sens.index) == list(range(len(row_ids)))


def test_split_is_sklearns_stratified_split(tmp_path):
    labels = "ppaapaappaapapaapapp"
    manifest = read_manifest(_write(tmp_path, _rows(labels)), task="image-classification")
    y = np.array([c == "p" for c in labels], dtype=np.int64)
    want_train, want_test = train_test_split(np.arange(20), test_size=0.25, random_state=7,
                                             shuffle=True, stratify=y)
    data = load_manifest_site(manifest, "a", prep=PREP, test_fraction=0.25, seed=7)
    assert _row_of(data.x_train) == sorted(want_train)
    assert _row_of(data.x_test) == sorted(want_test)
    again = load_manifest_site(manifest, "a", prep=PREP, test_fraction=0.25, seed=7)
    np.testing.assert_array_equal(again.x_test, data.x_test)
    other = load_manifest_site(manifest, "a", prep=PREP, test_fraction=0.25, seed=8)
    assert _row_of(other.x_test) != _row_of(data.x_test)


def test_split_column_is_honoured(tmp_path):
    rows = _rows("papapa")
    for row, split in zip(rows, ["train", "test", "TRAIN", "train", "test ", "train"],
                          strict=True):
        row["split"] = split
    data = load_manifest_site(read_manifest(_write(tmp_path, rows), task="image-classification"),
                              "a", prep=PREP)
    assert _row_of(data.x_train) == [0, 2, 3, 5]
    assert _row_of(data.x_test) == [1, 4]


def test_bad_split_value_names_the_line(tmp_path):
    rows = _rows("papa", split="train")
    rows[2]["split"] = "validation"
    with pytest.raises(DataError, match=r"manifest line 4: split must be one of "
                                        r"\['train', 'test'\]"):
        read_manifest(_write(tmp_path, rows), task="image-classification")


def test_missing_column_says_what_is_required(tmp_path):
    rows = [{"site": "a"}, {"site": "a"}]
    with pytest.raises(DataError, match=r"lacks column\(s\) \['label'\]; task "
                                        r"'image-classification' needs 'path', 'label' and "
                                        r"'site'"):
        read_manifest(_write(tmp_path, rows), task="image-classification")


def test_default_site_replaces_a_missing_site_column(tmp_path):
    rows = [{"label": r["label"]} for r in _rows("papa")]
    path = _write(tmp_path, rows)
    with pytest.raises(DataError, match=r"lacks column\(s\) \['site'\]"):
        read_manifest(path, task="image-classification")
    manifest = read_manifest(path, task="image-classification", default_site="north")
    assert manifest.sites == ("north",)


def test_unknown_label_names_the_line(tmp_path):
    rows = _rows("papa")
    rows[2]["label"] = "maybe"
    with pytest.raises(DataError, match=r"manifest line 4: the label is not one of "
                                        r"\['absent', 'present'\]") as err:
        read_manifest(_write(tmp_path, rows), task="image-classification",
                      label_names=("absent", "present"))
    assert "maybe" not in str(err.value)  # a cell is never quoted: it could be an identifier


def test_blank_lines_count_as_lines(tmp_path):
    path = _write(tmp_path, _rows("pa"))
    text = path.read_text().splitlines()
    path.write_text("\n".join([text[0], text[1], "", "bogus,a,img/0.png"]) + "\n")
    with pytest.raises(DataError, match="manifest line 4: the label is not one of"):
        read_manifest(path, task="image-classification", label_names=("absent", "present"))


def test_label_names_fix_the_index_order(tmp_path):
    manifest = read_manifest(_write(tmp_path, _rows("ppaapaappa")), task="image-classification",
                             label_names=("present", "absent"))
    data = load_manifest_site(manifest, "a", prep=PREP)
    rows = _rows("ppaapaappa")
    assert list(data.y_train) == [int(rows[i]["label"] == "absent")
                                  for i in _row_of(data.x_train)]


def test_three_labels_are_refused_for_a_binary_task(tmp_path):
    rows = _rows("papa")
    rows[0]["label"] = "unsure"
    with pytest.raises(DataError, match="3 distinct labels .* needs exactly 2"):
        read_manifest(_write(tmp_path, rows), task="image-classification")
    with pytest.raises(ConfigError, match="needs exactly 2"):
        read_manifest(tmp_path / "manifest.csv", task="image-classification",
                      label_names=("a", "b", "c"))


def test_empty_path_cell_names_the_line(tmp_path):
    path = _write(tmp_path, _rows("papa"))
    frame = pd.read_csv(path)
    frame.loc[1, "path"] = ""
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match="manifest line 3: empty 'path' cell"):
        read_manifest(path, task="image-classification")


def test_missing_file_names_the_line_but_not_the_path(tmp_path):
    manifest = read_manifest(_write(tmp_path, _rows("papapa")), task="image-classification")
    (tmp_path / "img" / "1.png").unlink()
    with pytest.raises(DataError, match="manifest line 3: the file in column 'path' does "
                                        "not exist") as err:
        load_manifest_site(manifest, "a", prep=PREP)
    assert str(tmp_path) not in str(err.value) and "1.png" not in str(err.value)


def test_corrupt_image_is_prefixed_with_the_line(tmp_path):
    manifest = read_manifest(_write(tmp_path, _rows("papapa")), task="image-classification")
    (tmp_path / "img" / "4.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(DataError, match="manifest line 6, column 'path': not a readable PNG "
                                        "file") as err:
        load_manifest_site(manifest, "a", prep=PREP)
    assert str(tmp_path) not in str(err.value)


@pytest.mark.parametrize("site", ["", "c"])
def test_unknown_or_empty_site_is_refused_without_listing_the_column(tmp_path, site):
    manifest = read_manifest(_write(tmp_path, _rows("pa") + _rows("ap", site="b")),
                             task="image-classification")
    with pytest.raises(DataError, match=r"has no rows in the manifest \(check its 'site'") \
            as err:
        load_manifest_site(manifest, site, prep=PREP)
    assert "'b'" not in str(err.value)  # the site column's free text stays at the site


def test_one_class_site_is_refused(tmp_path):
    manifest = read_manifest(_write(tmp_path, _rows("papa") + _rows("aaa", site="b")),
                             task="image-classification")
    with pytest.raises(DataError, match="site 'b' has only class 'absent' in its training "
                                        "split; a binary model needs both"):
        load_manifest_site(manifest, "b", prep=PREP)


def test_custom_sensitive_columns_are_carried(tmp_path):
    rows = _rows("papapa")
    for i, row in enumerate(rows):
        row["scanner"] = f"vendor{i % 3}"
    manifest = read_manifest(_write(tmp_path, rows), task="image-classification",
                             sensitive=("scanner", "age"))
    assert manifest.sensitive == ("scanner",)  # age is absent: skipped
    data = load_manifest_site(manifest, "a", prep=PREP, test_fraction=0.5)
    assert list(data.sensitive_test["scanner"]) == [f"vendor{i % 3}"
                                                    for i in _row_of(data.x_test)]


def test_segmentation_loads_binarised_masks(tmp_path):
    rows = [{"site": "a", "mask_path": f"img/m{i}.png"} for i in range(4)]
    (tmp_path / "img").mkdir()
    for i in range(4):
        mask = np.zeros((16, 16), dtype=np.uint8)
        mask[: 4 * (i + 1)] = 255
        Image.fromarray(mask).save(tmp_path / f"img/m{i}.png")
    manifest = read_manifest(_write(tmp_path, rows), task="segmentation")
    assert manifest.label_names == ()
    data = load_manifest_site(manifest, "a", prep=PREP, test_fraction=0.5)
    assert data.y_train.shape == (2, 1, 8, 8) and data.y_train.dtype == np.float32
    for x, masks in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        for i, mask in zip(_row_of(x), masks, strict=True):
            assert set(np.unique(mask)) <= {0.0, 1.0}
            assert mask.sum() == 2 * (i + 1) * 8  # 4(i+1) of 16 rows, halved, 8 wide


def test_segmentation_row_without_mask_is_refused(tmp_path):
    rows = [{"site": "a", "mask_path": f"img/{i}.png"} for i in range(3)]
    rows[1]["mask_path"] = ""
    with pytest.raises(DataError, match="manifest line 3: empty 'mask_path' cell"):
        read_manifest(_write(tmp_path, rows), task="segmentation")


def test_unreadable_manifest_is_refused_without_pandas_text(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(DataError, match="the manifest is empty"):
        read_manifest(tmp_path / "empty.csv", task="segmentation")
    (tmp_path / "latin.csv").write_bytes(b"path,label,site\nJos\xe9.png,a,b\n")
    with pytest.raises(DataError, match=r"not a readable comma-separated UTF-8 file "
                                        r"\(UnicodeDecodeError\)$"):
        read_manifest(tmp_path / "latin.csv", task="image-classification")
    with pytest.raises(DataError, match=r"cannot read the manifest \(FileNotFoundError\)"):
        read_manifest(tmp_path / "absent.csv", task="image-classification")


def test_unknown_task_suggests_one(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'segmentation'"):
        read_manifest(tmp_path / "m.csv", task="segmentaton")


def test_a_nifti_mask_beside_a_png_image_is_refused(tmp_path):
    """NIfTI arrays are in voxel-axis order; PNG/DICOM in row order: a mixed row would
    train on a transposed mask, so it is refused with the line."""
    import nibabel as nib

    img = np.zeros((8, 8), np.uint8)
    img[1:3, 5:7] = 200
    Image.fromarray(img).save(tmp_path / "a.png")
    nib.save(nib.Nifti1Image((img > 0).astype(np.uint8), np.eye(4)), tmp_path / "a_mask.nii.gz")
    (tmp_path / "m.csv").write_text("path,mask_path,site\na.png,a_mask.nii.gz,s\n" * 4)
    manifest = read_manifest(tmp_path / "m.csv", task="segmentation")
    with pytest.raises(DataError, match="manifest line 2: the image and its mask mix NIfTI"):
        load_manifest_site(manifest, "s", prep=PREP, test_fraction=0.5)
