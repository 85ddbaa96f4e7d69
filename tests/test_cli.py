import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from imageclf.core.config import DataConfig
from imageclf.data.dataloaders import DataLoaders
from imageclf.learn.lr_find import resolve_rule

from .helpers import ARCH, CliResult, add_bad_files, run_cli


def _run(*args: str, ok: bool = True) -> CliResult:
    r = run_cli(*args)
    if ok:
        assert r.returncode == 0, r.stderr
    return r


def test_verify_json_lists_unreadable(folder_dataset: Path):
    expected = add_bad_files(folder_dataset / "train" / "green")
    r = _run("verify", str(folder_dataset), "--json", "--quick")
    out = json.loads(r.stdout)
    names = {Path(u["path"]).name for u in out["unreadable"]}
    # the truncated JPEG has a valid header: --quick (headers only) misses it
    assert names == set(expected) - {"truncated.jpg"}
    assert all(u["reason"] for u in out["unreadable"])
    assert out["counts"]["train"]["green"] == 7  # 6 good + the truncated one (header ok)
    assert out["classes"] == ["blue", "green", "red"] and out["checked"] == "header"
    # by default every image is decoded: the truncated file is found too, with the reason
    # training gives
    full = json.loads(_run("verify", str(folder_dataset), "--json").stdout)
    found = {Path(u["path"]).name: u["reason"] for u in full["unreadable"]}
    assert set(found) == set(expected) and full["checked"] == "decode"
    assert full["counts"]["train"]["green"] == 6
    dls = DataLoaders.from_config(DataConfig.build(path=str(folder_dataset), size=24, presize=32))
    assert found == {Path(u.path).name: u.reason for u in dls.skipped()}


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
    # 16 known images and, in each of the 4 batches, 1 synthetic negative (0.25 per known)
    assert out["epochs"][0]["images"] == 20 and out["epochs"][0]["img_per_s"] > 0
    assert out["decoded"] == 18
    r = _run("bench", "loader", str(folder_dataset), "--size", "24", "--presize", "32",
             "--bs", "4", "--epochs", "1", "--device", "cpu", "--decode", "device", "--json")
    out = json.loads(r.stdout)
    assert (out["device"], out["decode"], out["decoded"]) == ("cpu", "device", 18)
    r = _run("bench", "loader", str(folder_dataset), "--decode", "gpu", ok=False)
    assert r.returncode == 2
    assert "--decode (decode in DataConfig) must be one of cpu, device" in r.stderr


@pytest.mark.slow
def test_bad_setting_is_one_clear_line(folder_dataset: Path):
    """Through the installed entry point, in a process of its own."""
    r = subprocess.run([sys.executable, "-m", "imageclf", "show-batch", str(folder_dataset),
                        "--size", "64", "--presize", "32"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2
    assert "--presize (presize in DataConfig) must be >= --size (64)" in r.stderr
    assert "Traceback" not in r.stderr


def test_train_and_lr_find_cli(folder_dataset: Path, tmp_path: Path):
    out = tmp_path / "run"
    r = _run("train", str(folder_dataset), "--arch", ARCH, "--pretrained", "none", "--size", "32",
             "--presize", "40", "--bs", "6", "--epochs", "2", "--lr", "auto", "--precision",
             "fp32", "--out", str(out), "--lr-find-steps", "30")
    assert "epoch 0" in r.stdout and "epoch 1" in r.stdout and "img/s" in r.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["epochs"] == 2 and set(m["lr_find"]) == {"valley", "slide", "minimum", "steep"}
    # auto from scratch trains at minimum (valley when minimum lies below it), and says so
    rule = resolve_rule("auto", m["lr_find"], pretrained=False)
    assert m["lr_rule"] == rule and m["lr"] == m["lr_find"][rule]
    assert f"trained at {rule} {m['lr']:.2e}" in r.stdout
    assert f"used {m['lr']:.2e} ({rule})." in (out / "report.html").read_text()
    assert (out / "lr_find.png").is_file() and (out / "report.html").is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["model"]["pretrained"] == "none" and cfg["data"]["size"] == 32
    r = _run("lr-find", str(folder_dataset), "--arch", ARCH, "--pretrained", "none", "--size", "32",
             "--presize", "40", "--bs", "6", "--json", "-o", str(tmp_path / "lr.png"),
             "--lr-find-steps", "25", "--accum-steps", "2")
    res = json.loads(r.stdout)
    # a training step's: 2 batches of 6 known images and 2 synthetic negatives
    assert res["images_per_step"] == 16
    assert set(res["suggestions"]) == {"valley", "slide", "minimum", "steep"}
    assert res["auto"] == resolve_rule("auto", res["suggestions"], pretrained=False)
    assert 3 < len(res["lrs"]) == len(res["losses"]) <= 25 and (tmp_path / "lr.png").is_file()
    found = json.loads((out / "lr_find.json").read_text())
    assert len(found["lrs"]) <= 30 and found["images_per_step"] == 8  # 6 known, 2 synthetic
    r = _run("lr-find", str(folder_dataset), "--lr-find-steps", "5", ok=False)
    assert r.returncode == 2
    assert "--lr-find-steps (lr_find_steps in ScheduleConfig) must be >= 10" in r.stderr
    r = _run("report", str(out))
    assert "report.html" in r.stdout


def test_evaluate_cli_json(folder_dataset: Path, tmp_path: Path):
    out = tmp_path / "run"
    _run("train", str(folder_dataset), "--arch", ARCH,
         "--pretrained", "none", "--size", "32", "--presize",
         "40", "--bs", "6", "--epochs", "1", "--lr", "1e-3", "--out", str(out))
    r = _run("evaluate", str(out / "model"), str(folder_dataset), "--json", "-o",
             str(tmp_path / "ev"))
    res = json.loads(r.stdout)
    for key in ("accuracy", "n", "per_class", "most_confused"):
        assert key in res
    assert res["n"] == 9 and (tmp_path / "ev" / "confusion_matrix.png").is_file()
    r = _run("evaluate", str(out / "model"), str(folder_dataset / "valid"), "--tta")
    assert "accuracy" in r.stdout and "(TTA)" in r.stdout


def test_unknown_arch_and_hub_errors_are_one_line(folder_dataset: Path):
    r = _run("train", str(folder_dataset), "--arch", "resnet-18", "--pretrained", "none",
             ok=False)
    assert r.returncode == 2 and "did you mean" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_demo_runs_end_to_end_offline(tmp_path: Path):
    """The README's first command, small: draws shapes and images of none of them, verifies,
    shows lr_find's sweep, trains at the demo's rate, evaluates, calibrates "none of these"
    and shows it answering none for an image of no shape."""
    r = _run("demo", "--out", str(tmp_path / "demo"), "--epochs", "1", "--n-train", "12",
             "--lr-find-steps", "30")
    run = tmp_path / "demo" / "run"
    m = json.loads((run / "metrics.json").read_text())
    assert m["lr"] == 1e-2 and "lr_find: valley" in r.stdout
    assert json.loads((tmp_path / "demo" / "lr_find" / "lr_find.json").read_text())["lrs"]
    for name in ("report.html", "model/model.json", "metrics.json"):
        assert (run / name).is_file(), name
    assert 0.0 <= m["valid_accuracy"] <= 1.0
    rule = json.loads((run / "model" / "model.json").read_text())["open_set"]
    assert rule["ood"]["folder"].endswith("valid") and rule["ood"]["n"] >= 10
    assert f"{rule['score']} below" in r.stdout and "answers none for" in r.stdout
    shown = re.search(r"(\d) of 8 fresh images of no shape answered none", r.stdout)
    assert shown, r.stdout
    if int(shown.group(1)):  # the first one refused is shown with its score and threshold
        assert re.search(r"predict \S+example-\d\.jpg: none \(top: \w+ [0-9.]+%; \S+ "
                         r"\S+ < \S+\)", r.stdout), r.stdout


def test_a_new_run_never_replaces_an_earlier_one(folder_dataset: Path, tmp_path: Path):
    """train into an --out that holds a run: refused, nothing touched; --auto-resume with
    the same settings finds it finished and trains nothing, with others it is refused.
    The brackets in the folder's name print as they are (no console markup)."""
    out = tmp_path / "[v2] run"

    def train(*extra: str, epochs: str = "1", ok: bool = True) -> CliResult:
        return _run("train", str(folder_dataset), "--arch", ARCH,
                    "--pretrained", "none", "--size", "32",
                    "--presize", "40", "--bs", "6", "--epochs", epochs, "--lr", "1e-3",
                    "--out", str(out), *extra, ok=ok)

    assert f"run directory: {out}" in train().stdout
    files = {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in out.rglob("*") if f.is_file()}
    r = train(ok=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"--out {out} already holds a run" in r.stderr
    assert f"imageclf train --resume {out}" in r.stderr
    r = train("--auto-resume")
    assert f"{out} is already trained (--auto-resume); nothing to do" in r.stdout
    r = train("--auto-resume", epochs="2", ok=False)
    assert r.returncode == 2 and "--epochs: 1 there, 2 now" in r.stderr
    assert {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in out.rglob("*")
            if f.is_file()} == files


@pytest.mark.slow
def test_train_imbalance_options_and_watched_metric(folder_dataset: Path, tmp_path: Path):
    run = tmp_path / "run"
    _run("train", str(folder_dataset), "--arch", ARCH,
         "--pretrained", "none", "--size", "24", "--presize",
         "32", "--bs", "6", "--epochs", "1", "--lr", "1e-3", "--class-weights", "auto",
         "--sampler", "balanced", "--metric", "macro_f1", "--out", str(run))
    m = json.loads((run / "metrics.json").read_text())
    assert m["metric"]["name"] == "macro_f1" and m["metric"]["last"] == m["macro_f1"]
    assert m["class_counts"]["train"] == {"blue": 6, "green": 6, "red": 6}
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["reg"]["class_weights"] == "auto" and cfg["data"]["sampler"] == "balanced"
    interp = json.loads((run / "interpretation.json").read_text())
    assert {"macro_f1", "balanced_accuracy"} <= set(interp)
    html = (run / "report.html").read_text()
    assert "<h2>Classes</h2>" in html and "Largest / smallest class" in html
    bad = _run("train", str(folder_dataset), "--arch", ARCH, "--pretrained", "none", "--size", "24",
               "--presize", "32", "--epochs", "1", "--lr", "1e-3", "--metric", "top5_accuracy",
               "--out", str(tmp_path / "bad"), ok=False)
    assert bad.returncode == 2 and "--metric 'top5_accuracy'" in bad.stderr
    assert not (tmp_path / "bad").exists()  # the claim is given back: --out can be reused
    bad = _run("train", str(folder_dataset), "--sampler", "weighted", ok=False)
    assert bad.returncode == 2 and "--sampler (sampler in DataConfig) must be one of " \
        "shuffle, balanced" in bad.stderr


def _all_commands():
    """(name, click command) of every command and sub-command."""
    import typer

    from imageclf.cli import app

    def walk(cmd, prefix: str):
        if hasattr(cmd, "commands"):  # a group (typer's own click)
            for name, sub in cmd.commands.items():
                yield from walk(sub, f"{prefix} {name}".strip())
        else:
            yield prefix, cmd

    root = typer.main.get_command(app)
    return [("", root), *walk(root, "")]


_SENTENCE_END = (".", ")", "?", "!")


def test_every_option_has_help_and_no_help_breaks_mid_sentence():
    """Help text as a person wrote it: every option explained, and no line of a command's or
    an option's help ending mid-sentence (the docstrings' own line breaks are joined)."""
    problems = []
    for name, cmd in _all_commands():
        for text in filter(None, (cmd.help, cmd.short_help)):
            for para in text.split("\n\n"):
                if "\n" in para or not para.rstrip().endswith(_SENTENCE_END):
                    problems.append(f"{name or 'imageclf'}: {para!r}")
        for p in cmd.params:
            if getattr(p, "hidden", False) or p.name == "help":
                continue
            text = (getattr(p, "help", None) or "").strip()
            if not text:
                problems.append(f"{name}: {p.opts[0]} has no help")
            elif "\n" in text or not text.endswith(_SENTENCE_END):
                problems.append(f"{name}: {p.opts[0]}: {text!r}")
    assert not problems, "\n".join(problems)


def test_root_help_lists_one_sentence_per_command_and_version():
    r = run_cli("--help")
    assert r.returncode == 0 and "--version" in r.stdout
    assert "Log what the library does" in r.stdout  # --verbose explained
    v = run_cli("--version")
    from imageclf import __version__

    assert v.returncode == 0 and v.stdout.startswith(f"imageclf {__version__}")
    for name, cmd in _all_commands():
        if name:
            short = cmd.get_short_help_str(limit=1000)
            assert "\n" not in short and short.endswith("."), (name, short)
