"""Atomic writes: a file is the old one or the whole new one, never a part."""

import os
import stat
from pathlib import Path

import pytest

from imageclf.core.fileio import atomic_write, write_json


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path):
    path = tmp_path / "f.json"
    write_json(path, {"a": 1})

    def half(p: str) -> None:
        Path(p).write_text('{"a": ')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half)
    assert path.read_text() == '{\n  "a": 1\n}\n'
    assert os.listdir(tmp_path) == ["f.json"]


def test_permissions_are_those_of_a_plain_file(tmp_path: Path):
    umask = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", [])
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
