"""Images in Parquet or Arrow files (the Hugging Face datasets layout, labelling tools):
an image column (bytes, or a struct with `bytes` and/or `path`) and a label column (an
integer with class names in the schema metadata, a string, or a list of either for
multi-label), optionally a split column.

Rows are listed by reading only the label and split columns, in record batches. An image
is named by a `RowRef` (file, column, row), which the decoders (the presize cache, verify,
the Predictor) read: one row group (Parquet) or record batch (Arrow) at a time, a few
kept per process, so a file larger than memory works.
pyarrow is an optional extra (`pip install 'imageclf[parquet]'`).
"""

from __future__ import annotations

import functools
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imageclf.core.errors import ConfigError, DataError

TABLE_SUFFIXES = (".parquet", ".arrow")
MARK = "::table::"
TRAIN_SPLITS = ("train",)
VALID_SPLITS = ("validation", "valid", "val")
LEFT_OUT_SPLITS = ("test",)
INSTALL = "pip install 'imageclf[parquet]'"


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"Parquet/Arrow data needs pyarrow: {INSTALL}") from e
    return pyarrow


# --- row references ------------------------------------------------------------------------
@dataclass(frozen=True)
class RowRef:
    """One image in a table file: the file, its image column and the row. Written as
    `FILE::table::COLUMN::ROW` (`str`, `parse`)."""

    table: Path  # absolute
    column: str
    row: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "table", Path(self.table).absolute())

    def __str__(self) -> str:
        return f"{self.table}{MARK}{self.column}::{self.row}"

    @classmethod
    def parse(cls, text: str) -> RowRef:
        """The reference `str` wrote."""
        file, rest = str(text).split(MARK, 1)
        column, row = rest.rsplit("::", 1)
        return cls(Path(file), column, int(row))

    @property
    def file(self) -> Path:
        """The table file: what is stat'ed for the cache."""
        return self.table

    def read(self) -> bytes | Path:
        """The encoded image: its bytes, or the file its struct's `path` points to (relative
        to the table's folder). Raises DataError with the reason."""
        return read_image(self)


class _Table:
    """Random access to one table file's rows by chunk (Parquet row groups, Arrow record
    batches)."""

    def __init__(self, file: Path) -> None:
        pa = _pyarrow()
        self.file = file
        # one reader per file is shared by the decoding threads (verify, the Predictor):
        # pyarrow's file readers are not safe to use from several threads at once
        self.lock = threading.Lock()
        if file.suffix == ".parquet":
            self.pq = pa.parquet.ParquetFile(str(file))
            meta = self.pq.metadata
            sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
            self.schema = self.pq.schema_arrow
            self.ipc = None
        else:
            self.pq = None
            self.ipc = _open_ipc(file)
            sizes = [self.ipc.get_batch(i).num_rows for i in range(self.ipc.num_record_batches)]
            self.schema = self.ipc.schema
        self.starts = [0]
        for n in sizes:
            self.starts.append(self.starts[-1] + n)

    @property
    def num_rows(self) -> int:
        return self.starts[-1]

    def chunk_of(self, row: int) -> tuple[int, int]:
        """(chunk index, row within it)."""
        import bisect

        if not 0 <= row < self.num_rows:
            raise DataError(f"{self.file}: no row {row} (it has {self.num_rows})")
        c = bisect.bisect_right(self.starts, row) - 1
        return c, row - self.starts[c]

    def read_chunk(self, chunk: int, columns: list[str]) -> Any:
        with self.lock:
            if self.pq is not None:
                return self.pq.read_row_group(chunk, columns=columns)
            return self.ipc.get_batch(chunk).select(columns)

    def batches(self, columns: list[str]) -> Iterator[Any]:
        """Record batches of `columns`, in order, never the whole file at once."""
        if self.pq is not None:
            yield from self.pq.iter_batches(columns=columns, batch_size=8192)
            return
        for i in range(self.ipc.num_record_batches):
            yield self.ipc.get_batch(i).select(columns)


def _open_ipc(file: Path) -> Any:
    pa = _pyarrow()
    source = pa.memory_map(str(file), "r")
    try:
        return pa.ipc.open_file(source)
    except pa.ArrowInvalid:  # the streaming format (what `datasets` writes): read it whole
        source = pa.memory_map(str(file), "r")
        reader = pa.ipc.open_stream(source)
        batches = list(reader)
        return _Batches(reader.schema, batches)


@dataclass
class _Batches:
    """An Arrow stream's record batches behind open_file's interface (memory-mapped)."""

    schema: Any
    items: list

    @property
    def num_record_batches(self) -> int:
        return len(self.items)

    def get_batch(self, i: int) -> Any:
        return self.items[i]


@functools.lru_cache(maxsize=8)
def _table(file: str, size: int, mtime: int) -> _Table:
    return _Table(Path(file))


@functools.lru_cache(maxsize=4)
def _chunk(file: str, size: int, mtime: int, chunk: int, column: str) -> list:
    """One row group's image column as Python values (bytes, or {bytes, path} structs)."""
    return _table(file, size, mtime).read_chunk(chunk, [column]).column(0).to_pylist()


def read_image(ref: RowRef) -> bytes | Path:
    """The encoded image a row reference names: its bytes, or the file its struct's `path`
    points to (relative to the table's folder). Raises DataError with the reason."""
    file, column, row = ref.table, ref.column, ref.row
    try:
        st = os.stat(file)
    except OSError as e:
        raise DataError(f"table file {file}: {e.strerror}") from e
    try:
        t = _table(str(file), st.st_size, st.st_mtime_ns)
        c, i = t.chunk_of(row)
        value = _chunk(str(file), st.st_size, st.st_mtime_ns, c, column)[i]
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow raises many kinds on damaged files
        raise DataError(f"cannot read row {row} of {file}: {e}") from e
    if isinstance(value, dict):
        data, where = value.get("bytes"), value.get("path")
        if data:
            return bytes(data)
        if where:
            p = Path(where)
            return p if p.is_absolute() else file.parent / p
        raise DataError("no image in this row (bytes and path are empty)")
    if value is None:
        raise DataError("no image in this row (null)")
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        p = Path(value)
        return p if p.is_absolute() else file.parent / p
    raise DataError(f"image column {column!r} holds {type(value).__name__}, not bytes")


# --- listing ------------------------------------------------------------------------------------
def table_files(root: Path) -> list[Path]:
    """The table files of DATA: the file itself, or every .parquet / .arrow under a folder."""
    if root.is_file():
        return [root] if root.suffix in TABLE_SUFFIXES else []
    return sorted(p for p in root.rglob("*") if p.suffix in TABLE_SUFFIXES and p.is_file())


def _split_of_name(file: Path) -> str | None:
    """train / valid / test from a file name as Hugging Face writes them
    (train-00000-of-00001.parquet, validation-..., test-...), else None."""
    stem = file.name.lower()
    for split, names in (("train", TRAIN_SPLITS), ("valid", VALID_SPLITS),
                         ("test", LEFT_OUT_SPLITS)):
        if any(stem.startswith(n + "-") or stem.startswith(n + ".") or stem == n
               for n in names):
            return split
    return None


def _split_value(v: Any, where: str) -> str:
    s = str(v).strip().lower()
    if s in TRAIN_SPLITS:
        return "train"
    if s in VALID_SPLITS:
        return "valid"
    if s in LEFT_OUT_SPLITS:
        return "test"
    raise DataError(f"{where}: split value {v!r}; expected train, validation (valid, val) or "
                    "test")


def _class_names(schema: Any, column: str) -> list[str] | None:
    """Class names of an integer label column from the schema metadata (Hugging Face's
    ClassLabel feature), or None."""
    meta = schema.metadata or {}
    raw = meta.get(b"huggingface")
    if not raw:
        return None
    try:
        info = json.loads(raw)
        feature = info["info"]["features"][column]
        if "feature" in feature:  # a Sequence(ClassLabel) for multi-label
            feature = feature["feature"]
        names = feature.get("names")
        return list(names) if names else None
    except (ValueError, KeyError, TypeError):
        return None


def _pick(schema: Any, given: str | None, options: tuple[str, ...], what: str,
          flag: str, file: Path) -> str | None:
    names = list(schema.names)
    if given is not None:
        if given not in names:
            raise ConfigError(f"{flag} {given!r}: {file} has columns {', '.join(names)}")
        return given
    for o in options:
        if o in names:
            return o
    return None


@dataclass
class TableRows:
    """What the table files of DATA hold: one entry per usable row."""

    paths: list[RowRef]
    names: list[list[str]]  # label names per row
    splits: list[str | None]  # train / valid / None (no split given)
    multi_label: bool
    left_out: int  # test rows


def read_rows(files: list[Path], image_col: str | None, label_col: str | None,
              split_col: str | None) -> TableRows:
    """Every row's reference, labels and split, reading only the label and split columns."""
    out = TableRows([], [], [], False, 0)
    for file in files:
        try:
            t = _Table(file)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - a damaged table file: say which
            raise DataError(f"cannot read table file {file}: {e}") from e
        schema = t.schema
        img = _pick(schema, image_col, ("image", "img", "picture", "jpg", "png"), "image",
                    "--image-col", file)
        lab = _pick(schema, label_col, ("label", "labels", "class", "category", "target"),
                    "label", "--label-col", file)
        if img is None or lab is None:
            raise ConfigError(f"{file}: name the image and label columns with --image-col and "
                              f"--label-col (columns: {', '.join(schema.names)})")
        spl = _pick(schema, split_col, (), "split", "--split-col", file)
        names = _class_names(schema, lab)
        by_name = _split_of_name(file)
        row = 0
        cols = [lab] + ([spl] if spl else [])
        for batch in t.batches(cols):
            labels = batch.column(0).to_pylist()
            splits = batch.column(1).to_pylist() if spl else [by_name] * len(labels)
            for value, split in zip(labels, splits, strict=True):
                split = _split_value(split, f"{file} row {row}") if spl else split
                if split == "test":
                    out.left_out += 1
                else:
                    multi = isinstance(value, list)
                    out.multi_label |= multi
                    vals = value if multi else ([] if value is None else [value])
                    out.names.append([_label_name(v, names, file, row) for v in vals])
                    out.paths.append(RowRef(file, img, row))
                    out.splits.append(split)
                row += 1
    return out


def _label_name(v: Any, names: list[str] | None, file: Path, row: int) -> str:
    if isinstance(v, bool):
        raise DataError(f"{file} row {row}: a label is true/false; expected a class")
    if isinstance(v, int):
        if names is None:
            return str(v)
        if not 0 <= v < len(names):
            raise DataError(f"{file} row {row}: label {v} is outside the {len(names)} class "
                            "names in the schema")
        return names[v]
    if isinstance(v, str) and v.strip():
        return v.strip()
    raise DataError(f"{file} row {row}: label {v!r} is not a class name or index")
