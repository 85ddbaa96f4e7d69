"""Too little disk: refused before the work with one line and the fix; a disk that fills
anyway stops with that kind of line, removes the half-written file and loses nothing."""

from __future__ import annotations

import errno
import json
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imageclf.core.diskspace import check_room, free_bytes, is_disk_full
from imageclf.core.errors import DiskFullError

from .helpers import ARCH, make_folder_dataset, run_cli


def test_check_room_names_need_free_where_and_fix(tmp_path: Path):
    free = free_bytes(tmp_path)
    check_room(1, tmp_path, "the thing", "use another disk")
    with pytest.raises(DiskFullError) as e:
        check_room(free + 10**9, tmp_path / "not" / "yet", "the thing", "use another disk")
    msg = str(e.value)
    assert "not enough disk for the thing" in msg and str(tmp_path) in msg
    assert "free under" in msg and msg.endswith("use another disk")


def test_full_disk_errors_are_recognised():
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(RuntimeError("Error while serializing: I/O error: File too large "
                                     "(os error 27)"))
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = OSError(errno.EDQUOT, "quota")
    assert is_disk_full(wrapped)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))


class _FileSizeLimit:
    """`ulimit -f` for this process, restored after (the hard limit is left alone)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def __enter__(self) -> None:
        self.old = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.old[1]))

    def __exit__(self, *exc: object) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, self.old)


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", str(data), "--arch", ARCH, "--pretrained", "none", "--size", "24",
            "--presize", "32", "--epochs", "1", "--bs", "6", "--lr", "1e-2",
            "--out", str(out), *extra]


def test_cache_too_big_for_the_file_limit_is_refused_at_once(folder_dataset: Path,
                                                             tmp_path: Path):
    cache = tmp_path / "c"
    with _FileSizeLimit(20_000):  # the train split's raw cache is 18 x 3 x 32 x 40 bytes
        r = run_cli(*_train_args(folder_dataset, tmp_path / "run", "--cache", "raw",
                                 "--cache-dir", str(cache)))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "presize cache" in r.stderr
    assert "--cache-dir" in r.stderr and "--cache jpeg" in r.stderr
    assert not list(cache.glob("*.tmp")) and not list(cache.glob("*.u8"))


def test_run_directory_too_big_is_refused_before_training(folder_dataset: Path,
                                                          tmp_path: Path):
    with _FileSizeLimit(1_000_000):  # a checkpoint of the small net is about 14 MB
        r = run_cli(*_train_args(folder_dataset, tmp_path / "run"))
    assert r.returncode == 2 and "run directory" in r.stderr and "--out" in r.stderr
    assert "epoch 0" not in r.stdout  # nothing was trained
    assert not (tmp_path / "run" / "run.json").exists()  # --out is not left claimed


def _tmpfs_script(mb: int, script: str) -> subprocess.CompletedProcess:
    """Run `script` (bash) with $D a fresh tmpfs of `mb` MB, in a mount namespace of its
    own (no root needed where user namespaces are allowed)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare to mount a small tmpfs")
    probe = subprocess.run(["unshare", "-Urm", "sh", "-c", "mount -t tmpfs tmpfs /mnt"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {probe.stderr.decode().strip()}")
    full = (f"set -u; D=$(mktemp -d); mount -t tmpfs -o size={mb}m tmpfs $D; "
            f"PY={sys.executable}; {script}")
    return subprocess.run(["unshare", "-Urm", "bash", "-c", full], capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_cache_on_a_20_mb_disk_is_refused_with_one_line(tmp_path: Path):
    data = make_folder_dataset(tmp_path / "data", n_train=40, n_valid=4, size=(300, 200))
    # 120 images x 3 x 160 x 200: 11.5 MB for train; at presize 256, 29 MB: over 20 MB
    r = _tmpfs_script(20, f"$PY -m imageclf train {data} --pretrained none --size 224 "
                      f"--presize 256 --cache raw --cache-dir $D/cache --out {tmp_path}/run; "
                      "echo rc=$?; ls -A $D/cache")
    assert "rc=2" in r.stdout, r.stderr
    assert "not enough disk for the presize cache" in r.stderr
    assert "--cache-dir" in r.stderr and "Traceback" not in r.stderr
    assert ".tmp" not in r.stdout.split("rc=2", 1)[1]  # nothing left filling the disk


@pytest.mark.slow
def test_disk_filling_during_training_keeps_the_last_checkpoint(tmp_path: Path):
    data = make_folder_dataset(tmp_path / "data", n_train=40, n_valid=4, size=(96, 80))
    args = f"--arch {ARCH} --pretrained none --size 64 --presize 80 --bs 8 --lr 1e-2"
    r = _tmpfs_script(80, f"""
export IMAGECLF_CACHE_DIR={tmp_path}/cache
$PY -m imageclf train {data} {args} --epochs 6 --out $D/run 2>$D/../err1 &
pid=$!
until [ -f $D/run/checkpoints/last.json ] || ! kill -0 $pid 2>/dev/null; do sleep 0.01; done
dd if=/dev/zero of=$D/filler bs=1M 2>/dev/null
wait $pid; echo rc1=$?
cat $D/../err1
ls $D/run/checkpoints
$PY -c "
import sys; from pathlib import Path
from imageclf.learn.checkpoint import read_checkpoint
info, _ = read_checkpoint(Path(sys.argv[1]))
print('checkpoint epoch', info.progress['epochs_done'])" $D/run/checkpoints
rm $D/filler
$PY -m imageclf train --resume $D/run; echo rc2=$?
cat $D/run/metrics.json
""")
    out = r.stdout
    assert "rc1=2" in out, out + r.stderr
    assert "the disk filled while writing" in out and "--resume" in out
    assert "Traceback" not in out
    listing = out.split("rc1=2", 1)[1]
    assert ".tmp" not in listing.split("checkpoint epoch", 1)[0]  # the half-written file went
    assert "checkpoint epoch" in out  # the kept checkpoint reads back whole
    assert "rc2=0" in out, out + r.stderr
    metrics = json.loads(out[out.index("rc2=0") + 6:])
    assert metrics["epochs"] == 6


def test_estimate_covers_a_real_run(folder_dataset: Path, tmp_path: Path):
    """The run directory's estimate is at least what a finished run wrote."""
    from imageclf.core.config import DataConfig, TrainConfig
    from imageclf.run.finish import required_bytes
    from imageclf.run.runs import build_learner

    r = run_cli(*_train_args(folder_dataset, tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    used = sum(f.stat().st_size for f in (tmp_path / "run").rglob("*") if f.is_file())
    learn = build_learner(DataConfig.build(path=str(folder_dataset), size=24, presize=32, bs=6),
                          TrainConfig.build(arch=ARCH, pretrained="none"))
    need = required_bytes(learn)
    assert used <= need
