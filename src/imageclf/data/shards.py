"""A store's shards as pack writes them: each a tar of samples in WebDataset's layout,
written under a temporary name, fsynced and renamed whole, then its rows file beside it
(`NAME.rows.json`: its index.csv lines and what it holds). A stopped pack keeps the shards
whose rows file agrees with them (`done_shards`).

The writer's memory is about one index line a sample: it counts each JPEG's offset as the
members are written and empties the tar's member list as it goes (tarfile keeps every
TarInfo otherwise, and the shard's headers would have to be read back for the offsets)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

from imageclf.core.commands import PackSettings
from imageclf.core.fileio import commit, write_json
from imageclf.data.store import IndexRow

if TYPE_CHECKING:
    from imageclf.data.pack import PackItem


def shard_name(split: str, n: int) -> str:
    return f"{split}-{n:06d}.tar"


def rows_file(out: Path, name: str) -> Path:
    return out / (name + ".rows.json")


def without_rows(rec: dict) -> dict:
    """A shard's record without its index rows (read again from its rows file at the end)."""
    return {k: v for k, v in rec.items() if k != "rows"}


def done_shards(out: Path, split: str) -> list[dict]:
    """The complete shards of a split from an earlier, stopped pack: each has its rows file
    and the size they record. Anything after the first incomplete one is removed."""
    done, n = [], 0
    while True:
        name = shard_name(split, n)
        rows = rows_file(out, name)
        try:
            rec = json.loads(rows.read_text())
            ok = (out / name).stat().st_size == rec["bytes"]
        except (OSError, ValueError, KeyError):
            ok = False
        if not ok:
            break
        done.append(without_rows(rec))
        n += 1
    for p in list(out.glob(f"{split}-*")):  # the partial shard and anything after it
        num = p.name.split("-", 1)[1].split(".", 1)[0]
        if num.isdigit() and int(num) >= n:
            p.unlink()
    return done


class ShardWriter:
    """Writes one split's samples into shards of about `shard_bytes`, each committed whole
    with its rows file."""

    def __init__(self, out: Path, split: str, first: int, s: PackSettings,
                 classes: dict[str, int], multi_label: bool) -> None:
        self.out, self.split, self.n, self.s = out, split, first, s
        self.classes, self.multi_label = classes, multi_label
        self.tar = None
        self.records: list[dict] = []

    def _open(self) -> None:
        import webdataset as wds

        self.name = shard_name(self.split, self.n)
        self.tmp = self.out / (self.name + ".tmp")
        self.file = open(self.tmp, "wb")  # noqa: SIM115 - closed in _close
        self.tar = wds.TarWriter(self.file, encoder=False, mtime=0)  # same bytes each run
        self.rows: list[str] = []  # index.csv's lines (a list of 9 str is 3x the memory)
        self.skipped: list[dict] = []
        self.consumed = 0

    def add(self, key: str, item: PackItem, enc: tuple[bytes, int, int] | str) -> None:
        if self.tar is None:
            self._open()
        self.consumed += 1
        if isinstance(enc, str):
            self.skipped.append({"path": item.ref, "reason": enc})
            return
        data, w, h = enc
        # the label only (every tar member costs a 512-byte header and padding): .cls for
        # one class, .json for multi-label or unlabelled; split and source are in index.csv
        sample = {"__key__": key, "jpg": data}
        if not self.multi_label and len(item.labels) == 1:
            sample["cls"] = str(self.classes[item.labels[0]]).encode()
        else:
            sample["json"] = json.dumps({"labels": list(item.labels)}).encode()
        self.rows.append(IndexRow(key, self.split, self.name, self._write(sample), len(data),
                                  w, h, item.labels, item.ref).as_line())
        if self.tar.tarstream.offset >= self.s.shard_bytes:
            self.close()

    def _write(self, sample: dict) -> int:
        """Write one sample; the offset of its JPEG's bytes in the shard. The tar's member
        list is emptied as it goes (a shard of 40k samples would otherwise hold 80k TarInfo,
        about 1 KB a sample, until it closes)."""
        ts = self.tar.tarstream
        pos = ts.offset
        self.tar.write(sample)
        offset = -1
        for ti in ts.members:  # this sample's, in the order written
            pos += len(ti.tobuf(ts.format, ts.encoding, ts.errors))
            if ti.name.endswith(".jpg"):
                offset = pos
            pos += -(-ti.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        ts.members.clear()
        if pos != ts.offset or offset < 0:
            raise RuntimeError(f"{self.tmp}: a tar header's size was not the one written")
        return offset

    def close(self) -> None:
        """Commit the open shard (if any) and its rows."""
        if self.tar is None:
            return
        self.tar.close()
        self.file.close()
        self.tar = None
        commit(self.tmp, self.out / self.name)
        size = (self.out / self.name).stat().st_size
        rec = {"name": self.name, "split": self.split, "count": len(self.rows),
               "consumed": self.consumed, "bytes": size, "rows": self.rows,
               "skipped": self.skipped}
        write_json(rows_file(self.out, self.name), rec)
        self.records.append(without_rows(rec))  # the rows stay on disk: memory stays flat
        self.n += 1

    def abandon(self) -> None:
        """Remove the shard being written (the disk filled, or the pack was stopped)."""
        if self.tar is not None:
            self.file.close()
            self.tmp.unlink(missing_ok=True)
            self.tar = None
