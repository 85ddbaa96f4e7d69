"""Writing files so that a crash never leaves half of one: temporary name, fsync, rename."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from imageclf.core.errors import ConfigError


def commit(tmp: str | Path, path: str | Path) -> None:
    """fsync `tmp`, then rename it over `path`: readers see the old file or the whole new
    one, never a part."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write(path: str | Path, write: Callable[[str], Any]) -> None:
    """Write `path` through `write(tmp_path)` on a temporary name beside it, then commit it.
    The file gets the permissions a plain open() would give it (not mkstemp's 0600)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        commit(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    atomic_write(path, lambda p: Path(p).write_text(text))


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Write a CSV (a header, then the rows; "\\n" line ends) atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    write_text(path, buf.getvalue())


def write_json(path: str | Path, obj: Any, sort_keys: bool = False) -> None:
    """Write indented JSON atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")


def file_sha256(path: str | Path, what: str = "file") -> str:
    """The sha256 of a file's bytes (hex); a file that cannot be read is a ConfigError
    naming `what`."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    except OSError as e:
        raise ConfigError(f"{what} {path}: cannot be read ({e.strerror or e})") from e
    return h.hexdigest()
