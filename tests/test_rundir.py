"""The run directory: claimed by one run, atomically; its settings read back."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imageclf.core.config import DataConfig, TrainConfig
from imageclf.core.errors import ConfigError, DamagedFileError
from imageclf.run.rundir import CLAIM, claim, read_config, write_config

RACER = """
import sys, time
from imageclf.core.errors import ConfigError
from imageclf.run.rundir import claim
start = float(sys.argv[2])
while time.time() < start:
    pass
try:
    claim(sys.argv[1])
    print("claimed")
except ConfigError as e:
    print("refused:", e)
"""


@pytest.mark.slow
def test_two_runs_started_at_once_into_one_out_claim_it_once(tmp_path: Path):
    """A scheduler's duplicated job: two processes claim the same --out at the same
    moment. Exactly one gets it; the other is refused with the usual message. Repeated, so
    that the processes really do meet at the check."""
    for attempt in range(4):
        out = tmp_path / f"run{attempt}"
        start = time.time() + 3.0  # both processes are up and spinning by then
        procs = [subprocess.Popen([sys.executable, "-c", RACER, str(out), str(start)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        outs = [p.communicate(timeout=60) for p in procs]
        answers = sorted(o.strip() for o, _ in outs)
        assert answers[0] == "claimed", outs
        assert answers[1].startswith(f"refused: --out {out} already holds a run ("), outs
        assert f"imageclf train --resume {out}" in answers[1]
        assert sorted(os.listdir(out)) == [CLAIM]


def test_claim_records_who_and_refuses_a_second_run(tmp_path: Path):
    out = claim(tmp_path / "r")
    info = json.loads((out / CLAIM).read_text())
    assert info["pid"] == os.getpid() and info["host"] and info["started"]
    with pytest.raises(ConfigError, match="already holds a run \\(run.json\\)"):
        claim(out)
    assert claim(out, overwrite=True) == out  # a run restarted in its own directory


def test_without_out_each_run_gets_its_own_folder(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = claim(None), claim(None)
    assert a != b and a.parent == b.parent == Path("runs")


def test_an_unwritable_out_is_refused_early(tmp_path: Path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        with pytest.raises(ConfigError, match="is not writable"):
            claim(ro / "run")
    finally:
        ro.chmod(0o700)


def test_config_round_trip_and_a_damaged_one(tmp_path: Path):
    d, t = DataConfig.build(path="x", size=32, presize=40), TrainConfig.build(epochs=2, lr="1e-3")
    write_config(tmp_path, d, t)
    assert read_config(tmp_path) == (d, t)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(DamagedFileError, match="config.json"):
        read_config(tmp_path)


def test_run_directory_has_everything(run_dir: Path):
    for name in ("config.json", "metrics.csv", "metrics.json", "losses.png", "report.html",
                 "interpretation.json", "confusion_matrix.png", "top_losses.png",
                 "model/model.safetensors", "model/model.json"):
        assert (run_dir / name).is_file(), name
    m = json.loads((run_dir / "metrics.json").read_text())
    for key in ("valid_loss", "valid_accuracy", "epochs", "train_seconds", "train_img_per_s",
                "precision", "device"):
        assert key in m
    assert m["global_batch"] == 10 and m["processes"] == 1  # bs 10, no accumulation
    interp = json.loads((run_dir / "interpretation.json").read_text())
    assert interp["n"] == 12 and len(interp["per_class"]) == 3
    assert sum(map(sum, interp["confusion_matrix"])) == 12
    html = (run_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3  # losses, confusion matrix, top losses
    assert "Skipped files (0)" in html
    assert "images per step<b>10</b>" in html and "processes<b>1</b>" in html
