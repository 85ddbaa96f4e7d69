"""Room on disk: what a job will write is computed before it starts and refused at once
when it does not fit; a disk that fills anyway stops with the same kind of line."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from imageclf.core.errors import DiskFullError

# a file-size limit (RLIMIT_FSIZE, a quota) fails a write like a full disk
FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
FULL_TEXTS = tuple(os.strerror(n) for n in FULL_ERRNOS) + tuple(
    f"(os error {n})" for n in FULL_ERRNOS)


def human(n: float) -> str:
    """Bytes for a person: 1.2 GB, 35 MB, 512 B."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def free_bytes(path: str | Path) -> int:
    """Free bytes on the file system `path` is (or will be) on: its nearest existing
    folder's."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def file_size_limit() -> int | None:
    """The largest file this process may write (`ulimit -f`), or None when unlimited."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else int(soft)


def check_room(need: int, where: str | Path, what: str, fix: str,
               largest: int | None = None) -> None:
    """Raise DiskFullError (one line: what is needed, what is free, where, the fix) when
    `need` bytes do not fit under `where`, or its largest file (`largest`, default all of
    `need`) is over the file-size limit."""
    free = free_bytes(where)
    if need > free:
        raise DiskFullError(f"not enough disk for {what}: it needs {human(need)}, "
                            f"{human(free)} is free under {where}; {fix}")
    limit = file_size_limit()
    big = need if largest is None else largest
    if limit is not None and big > limit:
        raise DiskFullError(f"not enough room for {what}: one file of it takes {human(big)}, "
                            f"over this process's file-size limit of {human(limit)} "
                            f"(ulimit -f); raise the limit, or {fix}")


def is_disk_full(e: BaseException) -> bool:
    """The error is a full disk, a quota or a file-size limit (anywhere in its chain)."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in FULL_ERRNOS:
            return True
        if any(t in str(e) for t in FULL_TEXTS):  # safetensors: its own error type
            return True
        e = e.__cause__ or e.__context__
    return False


def disk_full(e: BaseException, where: str | Path, what: str, fix: str) -> DiskFullError:
    """The one line for a disk that filled while writing `what` under `where`."""
    why = os.strerror(e.errno) if isinstance(e, OSError) and e.errno else str(e)
    return DiskFullError(f"the disk filled while writing {what} under {where} ({why}; "
                         f"{human(free_bytes(where))} free now); {fix}")
