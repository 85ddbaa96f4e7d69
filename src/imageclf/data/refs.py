"""Image references: what names one image of a data set. A file on disk is its `Path`; an
image in a store is a `StoreRef`, a row of a Parquet/Arrow table a `RowRef`. Each has its
backing file, `str`, `parse` and a reader; the decoders read any of them through `read`."""

from __future__ import annotations

from pathlib import Path

from imageclf.data.store import MARK as STORE_MARK
from imageclf.data.store import StoreRef
from imageclf.data.tables import MARK as ROW_MARK
from imageclf.data.tables import RowRef

FileRef = Path  # a file on disk names itself
ImageRef = Path | StoreRef | RowRef


def parse(text: str | Path) -> ImageRef:
    """The reference `str(ref)` wrote: a store's or a table's, else a file's path."""
    s = str(text)
    if STORE_MARK in s:
        return StoreRef.parse(s)
    if ROW_MARK in s:
        return RowRef.parse(s)
    return Path(text)


def as_ref(ref: str | ImageRef) -> ImageRef:
    """A reference as given, or parsed from its text."""
    return ref if isinstance(ref, StoreRef | RowRef | Path) else parse(ref)


def read(ref: ImageRef) -> bytes | Path:
    """What a decoder opens: the image's bytes, or the file that holds it."""
    return ref if isinstance(ref, Path) else ref.read()


def backing_file(ref: ImageRef) -> Path:
    """The file on disk whose size and mtime say whether the image changed."""
    return ref if isinstance(ref, Path) else ref.file


def text(ref: ImageRef) -> str:
    """The absolute text of a reference: what a cache keys on."""
    return str(ref.absolute()) if isinstance(ref, Path) else str(ref)
