"""Resolving a DataSource: finding items and their labels (class folders, filename regex,
CSV, Parquet/Arrow tables) and splitting them."""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imageclf.core.errors import ConfigError, DataError
from imageclf.core.fileio import file_sha256
from imageclf.data.fixes import apply_fixes, key_root
from imageclf.data.items import Items
from imageclf.data.store import is_store, items_from_store
from imageclf.data.tables import TABLE_SUFFIXES, read_rows, table_files
from imageclf.data.urlio import is_url

if TYPE_CHECKING:
    from imageclf.core.config import DataSource
    from imageclf.data.refs import ImageRef

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".jfif"}
)
TRAIN_NAMES = ("train",)
VALID_NAMES = ("valid", "val", "validation")


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_images(folder: Path) -> list[Path]:
    """Every entry under `folder` whose name looks like an image, sorted.

    Entries named like images are listed even when they are directories or dangling
    links, so that verification can report them instead of silently skipping them.
    """
    found: list[Path] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in files:
            if is_image_name(name) and not name.startswith("."):
                found.append(Path(root) / name)
        keep = []
        for d in dirs:
            if is_image_name(d):
                found.append(Path(root) / d)
            elif not d.startswith("."):
                keep.append(d)
        dirs[:] = keep
    return sorted(found)


def _random_split(n: int, valid_pct: float, seed: int) -> list[bool]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_valid = int(round(n * valid_pct))
    flags = [False] * n
    for i in order[:n_valid]:
        flags[int(i)] = True
    return flags


def _class_folders(root: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if is_image_name(sub.name):
            continue
        out[sub.name] = list_images(sub)
    return out


def _find_split_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def _check_classes(per_class: dict[str, list[Path]], where: Path) -> None:
    empty = [c for c, files in per_class.items() if not files]
    if empty:
        raise DataError(
            f"class folder(s) with no images in {where}: {', '.join(empty)}; "
            "add images or remove the folder"
        )


def from_folders(root: Path, valid_pct: float = 0.2, seed: int = 0) -> Items:
    """Class folders: `root/train|valid|val/<cls>/`, or `root/<cls>/` split at random."""
    train_dir = _find_split_dir(root, TRAIN_NAMES)
    valid_dir = _find_split_dir(root, VALID_NAMES)
    paths: list[Path] = []
    names: list[str] = []
    flags: list[bool] = []
    if train_dir is not None and valid_dir is not None:
        for split_dir, flag in ((train_dir, False), (valid_dir, True)):
            per_class = _class_folders(split_dir)
            if flag is False:
                _check_classes(per_class, split_dir)
            for cls, files in per_class.items():
                paths += files
                names += [cls] * len(files)
                flags += [flag] * len(files)
    else:
        per_class = _class_folders(root)
        _check_classes(per_class, root)
        for cls, files in per_class.items():
            paths += files
            names += [cls] * len(files)
        flags = _random_split(len(paths), valid_pct, seed)
    return _finish(paths, [[n] for n in names], flags, multi_label=False, where=root)


def from_regex(root: Path, pattern: str, valid_pct: float = 0.2, seed: int = 0) -> Items:
    """Labels from file names: group 1 of `pattern` matched against each file's name."""
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"--label-regex {pattern!r} is not a valid regex: {e}") from e
    if rx.groups < 1:
        raise ConfigError(f"--label-regex {pattern!r} needs a capture group for the label, e.g. "
                          r"'^(.+)_\d+\.jpg$'")
    paths, names, unmatched = [], [], []
    for p in list_images(root):
        m = rx.search(p.name)
        if m is None:
            unmatched.append(p.name)
            continue
        paths.append(p)
        names.append([m.group(1)])
    if not paths:
        raise DataError(
            f"--label-regex {pattern!r} matched no file names under {root} "
            f"(e.g. {unmatched[:3]})"
        )
    flags = _random_split(len(paths), valid_pct, seed)
    return _finish(paths, names, flags, multi_label=False, where=root)


def from_csv(csv_path: Path, valid_pct: float = 0.2, seed: int = 0,
             multi_label: bool | None = None, image_root: Path | None = None,
             evaluate: bool = False) -> Items:
    """A CSV of `filename,label[,is_valid]`; space-separated labels mean multi-label.
    `evaluate`: only the rows to evaluate on (the is_valid rows, or every row without that
    column), all flagged valid."""
    image_root = image_root or csv_path.parent
    try:
        with open(csv_path, newline="") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except OSError as e:
        raise ConfigError(f"cannot read --csv {csv_path}: {e.strerror}") from e
    if rows and is_header(rows[0], image_root):
        rows = rows[1:]
    if not rows:
        raise DataError(f"--csv {csv_path} has no rows")
    bad = [i for i, r in enumerate(rows) if len(r) < 2]
    if bad:
        raise DataError(
            f"--csv {csv_path}: expected columns filename,label[,is_valid]; "
            f"row {bad[0] + 2} has {len(rows[bad[0]])} column(s)"
        )
    # a listed file that no longer exists (deleted by hand, moved) is not an error here:
    # like a dangling link it is reported with the unreadable files, with its reason
    paths = [resolve_name(image_root, r[0].strip()) for r in rows]
    labels = [r[1].split() for r in rows]
    ml = multi_label if multi_label is not None else any(len(x) != 1 for x in labels)
    if not ml and any(len(x) != 1 for x in labels):
        raise DataError(f"--csv {csv_path}: some rows have no or several labels; "
                          "pass --multi-label")
    if all(len(r) >= 3 for r in rows):
        flags = [_truthy(r[2], csv_path) for r in rows]
    elif evaluate:
        flags = [True] * len(paths)
    else:
        flags = _random_split(len(paths), valid_pct, seed)
    if evaluate:
        keep = [i for i, f in enumerate(flags) if f]
        if not keep:
            raise DataError(f"no validation rows in {csv_path} (its is_valid column is "
                              "false everywhere)")
        return _finish([paths[i] for i in keep], [labels[i] for i in keep], [True] * len(keep),
                       multi_label=ml, where=csv_path, need_split=False)
    return _finish(paths, labels, flags, multi_label=ml, where=csv_path)


def is_header(row: list[str], image_root: Path) -> bool:
    """A first row that names no existing file and does not look like an image file name
    (a listed image that has gone missing is a row, not a header)."""
    first = row[0].strip()
    return not resolve_name(image_root, first).exists() and not is_image_name(first)


def resolve_name(root: Path, name: str) -> Path:
    """A CSV's file name: as given when absolute, else under `root`."""
    p = Path(name)
    return p if p.is_absolute() else root / p


def _truthy(value: str, where: Path) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "valid", "t", "y"):
        return True
    if v in ("0", "false", "no", "train", "f", "n", ""):
        return False
    raise DataError(f"--csv {where}: is_valid column must be true/false or 1/0; got {value!r}")


def _finish(paths: list[Path], names: list[list[str]], flags: list[bool], multi_label: bool,
            where: Path, need_split: bool = True) -> Items:
    classes = sorted({n for ns in names for n in ns})
    if not need_split:
        if not paths:
            raise DataError(f"no labelled images found in {where}")
    elif len(classes) < 2 and not multi_label:
        raise DataError(
            f"found {len(classes)} class(es) in {where} ({classes}); a classifier needs at least 2"
        )
    elif not any(flags):
        raise DataError(f"no validation images in {where}: add a valid/ folder, an is_valid "
                          "column, or raise --valid-pct")
    elif all(flags):
        raise DataError(f"no training images in {where}")
    index = {c: i for i, c in enumerate(classes)}
    labels = tuple(tuple(sorted(index[n] for n in ns)) for ns in names)
    return Items(tuple(paths), labels, tuple(classes), tuple(flags), multi_label)


def from_tables(root: Path, *, image_col: str | None = None, label_col: str | None = None,
                split_col: str | None = None, valid_pct: float = 0.2, seed: int = 0,
                multi_label: bool = False, evaluate: bool = False) -> Items:
    """Items from Parquet/Arrow files (see data/tables.py): the split from --split-col or
    the files' names (train-*, validation-*; test rows left out), else random."""
    rows = read_rows(table_files(root), image_col, label_col, split_col)
    if not rows.paths:
        raise DataError(f"no rows to use in {root}" + (
            f" ({rows.left_out} test rows are left out)" if rows.left_out else ""))
    ml = multi_label or rows.multi_label
    if all(s is None for s in rows.splits):
        flags = [True] * len(rows.paths) if evaluate else _random_split(len(rows.paths),
                                                                        valid_pct, seed)
    else:
        flags = [s == "valid" for s in rows.splits]
    if evaluate:
        keep = [i for i, f in enumerate(flags) if f]
        if not keep:
            raise DataError(f"no validation rows in {root}")
        return _finish([rows.paths[i] for i in keep], [rows.names[i] for i in keep],
                       [True] * len(keep), ml, root, need_split=False)
    return _finish(rows.paths, rows.names, flags, ml, root)


def is_tables(root: Path) -> bool:
    """DATA is a table file, or a folder of table files with no image files."""
    if root.is_file():
        return root.suffix in TABLE_SUFFIXES
    return root.is_dir() and bool(table_files(root)) and not list_images(root)


KINDS = ("csv", "regex", "tables", "folders", "store", "stream")


def source_kind(source: DataSource) -> str:
    """Which kind of data set `source` is: csv (--csv, or DATA a .csv file), regex
    (--label-regex), tables (Parquet/Arrow files) or folders (class folders). The one place
    the kind is chosen, with the one set of messages for a DATA that is none of them."""
    if source.path is None:
        raise ConfigError("DATA is missing: give a folder of class folders, a CSV, or "
                          "Parquet/Arrow files")
    if is_url(source.path):
        return "stream"
    root = Path(source.path)

    if is_store(root):
        return "store"
    if source.csv is not None or (root.is_file() and root.suffix.lower() == ".csv"):
        return "csv"
    if source.label_regex is None and is_tables(root):
        return "tables"
    if not root.is_dir():
        there = "" if root.exists() else " (nothing is there)"
        raise ConfigError(f"DATA {root} is not a folder, a .csv, .parquet or .arrow "
                          f"file{there}")
    return "regex" if source.label_regex is not None else "folders"


def resolve(source: DataSource | str | Path, seed: int = 0, evaluate: bool = False) -> Items:
    """The labelled images of a data source, split as training splits them (the source's
    own split, else `valid_pct` at random with `seed`). `evaluate`: only the images to
    evaluate on, all flagged valid: the validation split where the source has one (a
    valid/ folder, an is_valid column, a table's validation rows), else every labelled
    image."""
    from imageclf.core.config import DataSource

    if not isinstance(source, DataSource):
        source = DataSource(path=str(source))
    items = _resolve(source, seed, evaluate)
    if source.fixes is None:
        return items
    if source.fixes_sha256 != file_sha256(source.fixes, "--fixes"):
        raise ConfigError(f"--fixes {source.fixes} changed since these settings were made "
                          "(its sha256 differs from the one recorded); give it again to use "
                          "the new decisions")
    fixed, applied = apply_fixes(items, source.fixes, key_root(source.path))
    return dataclasses.replace(fixed, fixed_by=applied)


def _resolve(source: DataSource, seed: int, evaluate: bool) -> Items:
    kind = source_kind(source)
    root = Path(source.path)
    ml = source.multi_label
    if kind == "csv":
        csv_path = Path(source.csv) if source.csv is not None else root
        image_root = root if source.csv is not None else None
        return from_csv(csv_path, source.valid_pct, seed, ml or None, image_root, evaluate)
    if kind == "stream":
        raise ConfigError(f"{source.path}: a store at a URL is streamed by train, lr-find and "
                          "show-batch; to verify, evaluate or calibrate on it, copy the store "
                          "into a folder and give that")
    if kind == "store":
        items = items_from_store(root, evaluate)
        return dataclasses.replace(items, multi_label=True) if ml else items
    if kind == "tables":
        return from_tables(root, image_col=source.image_col, label_col=source.label_col,
                           split_col=source.split_col, valid_pct=source.valid_pct, seed=seed,
                           multi_label=ml, evaluate=evaluate)
    if kind == "regex":
        items = from_regex(root, source.label_regex, source.valid_pct, seed)
        if evaluate:  # file names carry no split: every labelled image
            items = dataclasses.replace(items, is_valid=(True,) * len(items))
    elif evaluate:
        items = _eval_folders(root)
    else:
        items = from_folders(root, source.valid_pct, seed)
    # one label per image from folders or names; --multi-label trains them with sigmoids
    return dataclasses.replace(items, multi_label=True) if ml else items


def _eval_folders(root: Path) -> Items:
    """The valid/ (val/, validation/) folder's class folders, else root's."""
    valid_dir = _find_split_dir(root, VALID_NAMES)
    per_class = _class_folders(valid_dir if valid_dir is not None else root)
    paths, names = [], []
    for cls, files in per_class.items():
        paths += files
        names += [[cls]] * len(files)
    return _finish(paths, names, [True] * len(paths), False, root, need_split=False)


def resolve_unlabelled(source: str, valid_pct: float = 0.2, seed: int = 0
                       ) -> tuple[list[ImageRef], list[bool]]:
    """The resolver with labels off (--negatives): (image references, is_valid) of a
    source: a folder (its train/ and valid/ sub-folders when it has both, else every image
    under it, `valid_pct` held out at random with `seed`), a CSV
    whose first column names the files (an `is_valid` third column splits it), or
    Parquet/Arrow files (their split column or file names). Labels are ignored."""
    root = Path(source)
    if root.is_file() and root.suffix.lower() == ".csv":
        return _from_csv(root, valid_pct, seed)
    if is_tables(root):
        rows = read_rows(table_files(root), None, None, None)
        if all(s is None for s in rows.splits):
            return rows.paths, _random_split(len(rows.paths), valid_pct, seed)
        return rows.paths, [s == "valid" for s in rows.splits]
    if not root.is_dir():
        there = "" if root.exists() else " (nothing is there)"
        raise ConfigError(f"--negatives {root} is not a folder, a .csv, .parquet or .arrow "
                          f"file{there}")
    tr, va = _find_split_dir(root, TRAIN_NAMES), _find_split_dir(root, VALID_NAMES)
    if tr is not None and va is not None:
        a, b = _images(tr), _images(va)
        return a + b, [False] * len(a) + [True] * len(b)
    paths = _images(root)
    return paths, _random_split(len(paths), valid_pct, seed)


def _images(folder: Path) -> list[Path]:
    """`list_images`, also under sub-folders that are links (a negatives folder put
    together from class folders elsewhere)."""
    found = list_images(folder)
    for sub in sorted(folder.iterdir()):
        if sub.is_symlink() and sub.is_dir() and not sub.name.startswith("."):
            found += list_images(sub)
    return sorted(found)


def _from_csv(path: Path, valid_pct: float, seed: int) -> tuple[list[Path], list[bool]]:
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r and r[0].strip()]
    except OSError as e:
        raise ConfigError(f"cannot read --negatives {path}: {e.strerror}") from e
    if rows and not (path.parent / rows[0][0].strip()).exists() and not Path(
            rows[0][0].strip()).suffix:
        rows = rows[1:]  # a header
    paths = [p if (p := Path(r[0].strip())).is_absolute() else path.parent / p for r in rows]
    if rows and all(len(r) >= 3 for r in rows):
        return paths, [_truthy(r[2], path) for r in rows]
    return paths, _random_split(len(paths), valid_pct, seed)
