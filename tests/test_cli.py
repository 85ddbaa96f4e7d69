import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from .conftest import add_bad_files


def _run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "imageclf", *args], capture_output=True, text=True,
                       timeout=300)
    if ok:
        assert r.returncode == 0, r.stderr
    return r


def test_verify_json_lists_unreadable(folder_dataset: Path):
    expected = add_bad_files(folder_dataset / "train" / "green")
    r = _run("verify", str(folder_dataset), "--json")
    out = json.loads(r.stdout)
    names = {Path(u["path"]).name for u in out["unreadable"]}
    # the truncated JPEG has a valid header: only the decode finds it
    assert names == set(expected) - {"truncated.jpg"}
    assert all(u["reason"] for u in out["unreadable"])
    assert out["counts"]["train"]["green"] == 7  # 6 good + the truncated one (header ok)
    assert out["classes"] == ["blue", "green", "red"]


def test_show_batch_writes_png(folder_dataset: Path, tmp_path: Path):
    out = tmp_path / "b.png"
    _run("show-batch", str(folder_dataset), "--size", "24", "--presize", "32", "--bs", "8",
         "-o", str(out))
    with Image.open(out) as im:
        assert im.size[0] > 100


def test_bench_loader_json(folder_dataset: Path):
    r = _run("bench", "loader", str(folder_dataset), "--size", "24", "--presize", "32",
             "--bs", "4", "--epochs", "2", "--json")
    out = json.loads(r.stdout)
    assert [e["epoch"] for e in out["epochs"]] == [0, 1]
    assert out["epochs"][0]["images"] == 16 and out["epochs"][0]["img_per_s"] > 0
    assert out["decoded"] == 18


def test_bad_setting_is_one_clear_line(folder_dataset: Path):
    r = _run("show-batch", str(folder_dataset), "--size", "64", "--presize", "32", ok=False)
    assert r.returncode == 2
    assert "--presize (32) must be >= --size (64)" in r.stderr
    assert "Traceback" not in r.stderr
