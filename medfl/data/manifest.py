"""A hospital's image manifest: one CSV row per sample, read into per-site ``SiteData``.

Columns: ``path`` (image, relative to the manifest's folder or absolute), ``label``
(image-classification) or ``mask_path`` (segmentation), ``site`` (optional when the
manifest describes one site), optional ``split`` (train/test) and optional sensitive
attributes (``sex``, ``age`` or any column the caller names). Other columns are ignored.

Rows are cited as "manifest line N", the line a spreadsheet shows: the header is line 1,
so the first data row is line 2 (blank lines count, as they do in an editor). Messages
name lines and columns, never a path or a cell that could hold patient data; label
values are class names and are quoted.
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from medfl.data.images import ImagePreprocessing, detect_format, load_image, load_mask
from medfl.data.types import SiteData
from medfl.errors import ConfigError, DataError

__all__ = ["IMAGE_TASKS", "SPLITS", "Manifest", "load_manifest_site", "read_manifest"]

logger = logging.getLogger(__name__)

IMAGE_TASKS = ("image-classification", "segmentation")
SPLITS = ("train", "test")
_TARGET_COLUMN = {"image-classification": "label", "segmentation": "mask_path"}
#: Read as text, stripped: a label "01" stays "01", a site "007" stays "007".
_TEXT_COLUMNS = ("path", "label", "mask_path", "site", "split")


@dataclass(frozen=True, eq=False)  # eq=False: DataFrames have no truth value to compare
class Manifest:
    """A validated manifest.

    ``frame`` holds only the columns MedFL uses (``path``, ``label`` or ``mask_path``,
    ``site``, ``split`` when present, the sensitive columns), indexed by manifest line.
    ``label_names`` gives the class of each label index (empty for segmentation).
    """

    root: Path
    task: str
    frame: pd.DataFrame
    label_names: tuple[str, ...]
    sensitive: tuple[str, ...]

    @property
    def sites(self) -> tuple[str, ...]:
        """Sorted unique site names."""
        return tuple(sorted(self.frame["site"].unique()))


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(
            path, dtype=dict.fromkeys(_TEXT_COLUMNS, str), na_values=[""],
            keep_default_na=False, skip_blank_lines=False,
        )
    except OSError as exc:  # the OS message carries the path
        raise DataError(f"cannot read the manifest ({type(exc).__name__})") from None
    except pd.errors.EmptyDataError:
        raise DataError("the manifest is empty; its first line must name the columns") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        # pandas' message can quote the offending data: name the kind of failure only.
        raise DataError(f"the manifest is not a readable comma-separated UTF-8 file "
                        f"({type(exc).__name__})") from None
    frame.index = pd.RangeIndex(2, len(frame) + 2, name="line")
    frame = frame.dropna(how="all")  # blank lines: skipped, but they still count as lines
    if frame.empty:
        raise DataError("the manifest has a header but no data rows")
    return frame


def _check_text_column(frame: pd.DataFrame, column: str, what: str) -> None:
    empty = frame.index[frame[column].isna() | (frame[column] == "")]
    if len(empty):
        raise DataError(f"manifest line {empty[0]}: empty {column!r} cell; every row needs {what}")


def _label_names(frame: pd.DataFrame, label_names: tuple[str, ...]) -> tuple[str, ...]:
    if label_names:
        if len(set(label_names)) != len(label_names):
            raise ConfigError(f"label_names {list(label_names)} has duplicates")
        if len(label_names) != 2:
            raise ConfigError(f"image-classification is binary: label_names needs exactly 2 "
                              f"names, got {list(label_names)}")
        unknown = ~frame["label"].isin(label_names)
        if unknown.any():
            line = frame.index[unknown][0]
            # The cell is not quoted: in a shifted column it could hold an identifier.
            raise DataError(f"manifest line {line}: the label is not one of "
                            f"{list(label_names)}")
        return label_names
    found = tuple(sorted(frame["label"].unique()))
    if len(found) != 2:
        raise DataError(f"the manifest has {len(found)} distinct labels {list(found)}; "
                        "image-classification is binary and needs exactly 2")
    return found


def _check_task(task: str, label_names: tuple[str, ...]) -> None:
    """Refuse an unknown image task, or class names given for segmentation."""
    if task not in IMAGE_TASKS:
        hint = difflib.get_close_matches(str(task), IMAGE_TASKS, n=1)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(f"unknown image task {task!r}; valid tasks are {list(IMAGE_TASKS)}"
                          f"{did_you_mean}")
    if task == "segmentation" and label_names:
        raise ConfigError("label_names apply to image-classification only, not segmentation")


def _check_columns(frame: pd.DataFrame, task: str, target: str, *,
                   sensitive: tuple[str, ...], default_site: str | None) -> None:
    """Refuse a manifest that lacks a column the task needs."""
    missing = [c for c in ("path", target) if c not in frame.columns]
    if "site" not in frame.columns and default_site is None:
        missing.append("site")
    if missing:
        raise DataError(f"the manifest lacks column(s) {missing}; task {task!r} needs "
                        f"'path', {target!r} and 'site' (or a default site), optionally "
                        f"'split' and sensitive columns such as {list(sensitive)}")


def _clean_columns(frame: pd.DataFrame, target: str, *, default_site: str | None) -> None:
    """Strip text cells, fill the default site, and refuse empty or unknown values."""
    for column in _TEXT_COLUMNS:
        if column in frame.columns:
            frame[column] = frame[column].str.strip()
    if "site" not in frame.columns:
        frame["site"] = str(default_site)
    _check_text_column(frame, "path", "an image path")
    _check_text_column(frame, target, "a label" if target == "label" else "a mask path")
    _check_text_column(frame, "site", "a site (or drop the column and pass a default site)")
    if "split" in frame.columns:
        frame["split"] = frame["split"].str.lower()
        bad = ~frame["split"].isin(SPLITS)
        if bad.any():
            raise DataError(f"manifest line {frame.index[bad][0]}: split must be one of "
                            f"{list(SPLITS)}")


def read_manifest(path: str | Path, *, task: str, label_names: tuple[str, ...] = (),
                  sensitive: tuple[str, ...] = ("sex", "age"),
                  default_site: str | None = None) -> Manifest:
    """Read and validate a manifest CSV; images are not opened yet.

    Parameters
    ----------
    path : str or Path
        The CSV. Relative image paths are resolved against its folder.
    task : str
        One of ``IMAGE_TASKS``.
    label_names : tuple of str
        Image-classification: the two class names, in label-index order (index 1 is the
        positive class). Empty: the sorted unique labels found.
    sensitive : tuple of str
        Columns kept for subgroup evaluation when present; absent ones are skipped.
    default_site : str or None
        Site of every row when the manifest has no ``site`` column.

    Raises
    ------
    ConfigError
        Unknown task or invalid ``label_names``.
    DataError
        Unreadable CSV, missing column, empty cell, unknown label or split value.
    """
    _check_task(task, label_names)
    path = Path(path)
    frame = _read_csv(path)
    target = _TARGET_COLUMN[task]
    _check_columns(frame, task, target, sensitive=sensitive, default_site=default_site)
    _clean_columns(frame, target, default_site=default_site)
    names = (_label_names(frame, tuple(str(n) for n in label_names))
             if task == "image-classification" else ())
    present = tuple(c for c in sensitive if c in frame.columns)
    keep = ["path", target, "site", *(["split"] if "split" in frame.columns else [])]
    keep += [c for c in present if c not in keep]
    return Manifest(root=path.parent, task=task, frame=frame[keep].copy(),
                    label_names=names, sensitive=present)


def _split(rows: pd.DataFrame, site: str, labels: np.ndarray | None, *,
           test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positional train/test indices, each in manifest order."""
    position = np.arange(len(rows))
    if "split" in rows.columns:
        is_test = (rows["split"] == "test").to_numpy()
        idx_train, idx_test = position[~is_test], position[is_test]
    else:
        if len(rows) < 2:
            raise DataError(f"site {site!r} has {len(rows)} row; a train/test split needs at "
                            "least 2 (or give a 'split' column)")
        stratify = None
        if labels is not None:
            counts = np.unique(labels, return_counts=True)[1]
            n_test = math.ceil(test_fraction * len(rows))
            # sklearn refuses to stratify when a part is smaller than the number of classes.
            if counts.min() >= 2 and min(n_test, len(rows) - n_test) >= len(counts):
                stratify = labels
        idx_train, idx_test = train_test_split(position, test_size=test_fraction,
                                               random_state=seed, shuffle=True,
                                               stratify=stratify)
        idx_train, idx_test = np.sort(idx_train), np.sort(idx_test)
    for part, idx in (("train", idx_train), ("test", idx_test)):
        if len(idx) == 0:
            raise DataError(f"site {site!r} has no {part} rows; each site needs both parts")
    return idx_train, idx_test


def _resolve(root: Path, line: int, column: str, cell: str) -> Path:
    file = Path(cell).expanduser()
    file = file if file.is_absolute() else root / file
    try:
        exists = file.is_file()
    except (OSError, ValueError):  # e.g. a NUL byte in the cell, or no permission
        exists = False
    if not exists:
        raise DataError(f"manifest line {line}: the file in column {column!r} does not exist "
                        "(relative paths are read from the manifest's folder)")
    return file


def _load_column(rows: pd.DataFrame, root: Path, column: str,
                 load: Callable[[Path], np.ndarray]) -> np.ndarray:
    arrays = []
    for line, cell in zip(rows.index, rows[column], strict=True):
        file = _resolve(root, int(line), column, cell)
        try:
            arrays.append(load(file))
        except DataError as exc:
            raise DataError(f"manifest line {line}, column {column!r}: {exc}") from None
    return np.stack(arrays)


def _check_mask_axes(rows: pd.DataFrame, root: Path) -> None:
    """Refuse a row whose image and mask mix NIfTI with another format: NIfTI arrays are
    in voxel-axis order (i, j), PNG/JPEG/DICOM in (row, column) order, so the mask would
    be silently transposed against its image."""
    for line, image, mask in zip(rows.index, rows["path"], rows["mask_path"], strict=True):
        kinds = []
        for column, cell in (("path", image), ("mask_path", mask)):
            with open(_resolve(root, int(line), column, cell), "rb") as handle:
                head = handle.read(1024)
            try:
                kinds.append(detect_format(head) == "nifti")
            except DataError as exc:
                raise DataError(f"manifest line {line}, column {column!r}: {exc}") from None
        if kinds[0] != kinds[1]:
            raise DataError(f"manifest line {line}: the image and its mask mix NIfTI with "
                            "another format; their axis orders differ (NIfTI: voxel axes; "
                            "PNG/JPEG/DICOM: rows, columns), so the mask would not align. "
                            "Store both as NIfTI, or both as PNG/DICOM")


def load_manifest_site(manifest: Manifest, site: str, *, prep: ImagePreprocessing,
                       test_fraction: float = 0.3, seed: int = 0) -> SiteData:
    """Load one site's images, targets and sensitive attributes, split into train/test.

    Parameters
    ----------
    manifest : Manifest
        From :func:`read_manifest`.
    site : str
        One of ``manifest.sites``.
    prep : ImagePreprocessing
        Applied to every image (see :func:`medfl.data.images.load_image`).
    test_fraction, seed : float, int
        Used only without a ``split`` column: ``train_test_split(test_size=test_fraction,
        random_state=seed, shuffle=True)``, stratified by label when every class has at
        least 2 rows. Both parts keep manifest order.

    Returns
    -------
    SiteData
        ``x_*`` (n, 1, size, size) float32; ``y_*`` int64 label indices into
        ``manifest.label_names`` or (n, 1, size, size) float32 masks in {0, 1};
        ``sensitive_*`` the sensitive columns in the same row order.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    rows = manifest.frame[manifest.frame["site"] == site]
    if rows.empty:
        raise DataError(f"site {site!r} has no rows in the manifest (check its 'site' "
                        "column, or leave the column out of a one-site manifest)")
    labels = None
    if manifest.label_names:  # image-classification (segmentation has masks)
        index = {name: i for i, name in enumerate(manifest.label_names)}
        labels = rows["label"].map(index).to_numpy(dtype=np.int64)
    idx_train, idx_test = _split(rows, site, labels, test_fraction=test_fraction, seed=seed)
    if labels is not None:
        present = np.unique(labels[idx_train])
        if len(present) < len(manifest.label_names):
            raise DataError(f"site {site!r} has only class "
                            f"{manifest.label_names[present[0]]!r} in its training split; a "
                            "binary model needs both")
    if labels is None:
        _check_mask_axes(rows, manifest.root)
    x = _load_column(rows, manifest.root, "path", lambda f: load_image(f, prep))
    if labels is None:
        y = _load_column(rows, manifest.root, "mask_path", lambda f: load_mask(f, prep.size))
    else:
        y = labels
    sensitive = rows[list(manifest.sensitive)].reset_index(drop=True)
    logger.debug("loaded site %s: %d train / %d test images", site, len(idx_train),
                 len(idx_test))
    return SiteData.from_split(site, x, y, sensitive, idx_train, idx_test)
