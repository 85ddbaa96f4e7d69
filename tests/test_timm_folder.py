"""The model folder timm and the Hub read: timm's layout, the same logits in plain timm,
its transform, the model card, push offline."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from imageclf.core.errors import ConfigError
from imageclf.core.modelmeta import ModelMeta
from imageclf.jobs.card import CardFacts, base_model, header
from imageclf.jobs.evaluate import calibrate, write_calibration
from imageclf.jobs.share import hub_folder
from imageclf.model.predict import Predictor

from .helpers import COLOURS, make_folder_dataset, run_cli, solid


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run whose model has timm's head (--head auto from scratch), calibrated with knn so
    the folder carries open_set.safetensors."""
    from imageclf.core.config import DataConfig, DataSource, TrainConfig
    from imageclf.run.runs import train_run

    tmp = tmp_path_factory.mktemp("timm")
    data = make_folder_dataset(tmp / "data", n_train=10, n_valid=4)
    res = train_run(DataConfig.build(path=str(data), size=32, presize=40, bs=10,
                                     cache_dir=str(tmp / "cache")),
                    TrainConfig.build(arch="resnet18", pretrained="none", epochs=3, lr="3e-3",
                                      precision="fp32", out=str(tmp / "run")))
    model = res.out / "model"
    write_calibration(model, calibrate(Predictor(model), DataSource(path=str(data)), 0.75,
                                       score="knn", k=2))
    return res.out


def _varied_images(folder: Path, n: int = 60) -> list[Path]:
    """Colour images of many sizes and aspect ratios, both orientations."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = ["blue", "green", "red"]
    out = []
    for i in range(n):
        w, h = (int(v) for v in rng.integers(40, 120, 2))
        p = folder / f"{i}.jpg"
        solid(COLOURS[names[i % 3]], (w, h), seed=i).save(p, quality=90)
        out.append(p)
    return out


def test_folder_is_timm_layout_and_still_an_imageclf_model(timm_run: Path, tmp_path: Path):
    out = hub_folder(timm_run / "model", tmp_path / "hub", license="apache-2.0")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "model.json", "README.md",
            "open_set.safetensors"} <= names
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["architecture"], cfg["num_classes"]) == ("resnet18", 3)
    assert cfg["label_names"] == ["blue", "green", "red"]
    pc = cfg["pretrained_cfg"]
    assert pc["input_size"] == [3, 32, 32] and pc["crop_mode"] == "center"
    assert pc["crop_pct"] == 1.0 and pc["interpolation"] == "bilinear"
    assert pc["mean"] == [0.485, 0.456, 0.406] and pc["classifier"] == "fc"
    keys = set(load_file(out / "model.safetensors"))
    assert "fc.weight" in keys and "conv1.weight" in keys
    assert not any(k.startswith(("body.", "head.")) for k in keys)
    # imageclf reads the exported folder: same answers, same "none of these" rule
    paths = sorted((Path(json.loads((timm_run / "config.json").read_text())["data"]["source"]
                         ["path"]) / "valid").rglob("*.jpg"))
    a = Predictor(timm_run / "model", precision="fp32").predict(paths)
    b = Predictor(out, precision="fp32").predict(paths)
    assert [r.labels for r in a] == [r.labels for r in b]
    np.testing.assert_allclose([r.probs for r in a], [r.probs for r in b], atol=1e-6)
    assert b[0].none_rule == "knn" and b[0].none_score == pytest.approx(a[0].none_score)


@pytest.mark.slow
def test_plain_timm_gives_predictor_logits_and_its_transform_agrees(timm_run: Path,
                                                                    tmp_path: Path):
    """In a process that never imports imageclf: timm.create_model("local-dir:...") gives
    the Predictor's logits on the same tensor, and timm's own transform from config.json
    gives the same top-1 on images of many shapes."""
    out = hub_folder(timm_run / "model", tmp_path / "hub")
    pred = Predictor(out, precision="fp32")
    paths = _varied_images(tmp_path / "imgs")
    x = torch.stack([pred.load(p) for p in paths])
    inputs = pred.inputs(x)[0].contiguous()
    ours = pred.outputs(x).raw
    save_file({"x": inputs}, str(tmp_path / "x.safetensors"))
    script = textwrap.dedent(f"""
        import json, sys
        import timm, torch
        from PIL import Image
        from safetensors.torch import load_file, save_file
        m = timm.create_model("local-dir:{out}", pretrained=True).eval()
        cfg = timm.data.resolve_data_config({{}}, model=m)
        t = timm.data.create_transform(**cfg)
        with torch.inference_mode():
            logits = m(load_file("{tmp_path / 'x.safetensors'}")["x"])
            top = [int(m(t(Image.open(p).convert("RGB"))[None]).argmax())
                   for p in {[str(p) for p in paths]!r}]
        save_file({{"logits": logits.contiguous()}}, "{tmp_path / 'y.safetensors'}")
        print(json.dumps({{"imageclf": "imageclf" in sys.modules, "top": top,
                          "labels": m.pretrained_cfg["label_names"]}}))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["imageclf"] is False and got["labels"] == ["blue", "green", "red"]
    theirs = load_file(tmp_path / "y.safetensors")["logits"]
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    agree = np.mean(np.array(got["top"]) == ours.argmax(1).numpy())
    assert agree >= 0.99, f"timm's transform agrees on top-1 for {agree:.1%}"


def test_concat_head_is_refused_naming_head_timm(run_dir: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match="--head timm"):
        hub_folder(run_dir / "model", tmp_path / "hub")
    assert not (tmp_path / "hub").exists()  # refused before anything was written


def test_cli_export_timm_and_its_errors(timm_run: Path, tmp_path: Path):
    r = run_cli("export", str(timm_run / "model"), "--timm", "-o", str(tmp_path / "t"))
    assert r.returncode == 0 and (tmp_path / "t" / "config.json").is_file(), r.stderr
    r = run_cli("export", str(timm_run / "model"), "--timm")
    assert r.returncode == 2 and "--timm needs -o DIR" in r.stderr
    r = run_cli("export", str(timm_run / "model"))
    assert r.returncode == 2 and "--onnx or --timm" in r.stderr


def _card(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    _, head, body = text.split("---\n", 2)
    return yaml.safe_load(head), body


def test_model_card_header_and_text(timm_run: Path, tmp_path: Path):
    out = hub_folder(timm_run / "model", tmp_path / "hub", license="mit",
                     datasets=("user/colours",), repo_id="user/colour-net")
    head, body = _card(out)
    assert head["library_name"] == "timm" and head["pipeline_tag"] == "image-classification"
    assert {"image-classification", "timm", "imageclf"} <= set(head["tags"])
    assert head["license"] == "mit" and head["datasets"] == ["user/colours"]
    assert "base_model" not in head  # trained from scratch
    m = json.loads((timm_run / "metrics.json").read_text())
    values = {x["type"]: x["value"] for x in
              head["model-index"][0]["results"][0]["metrics"]}
    assert values["accuracy"] == pytest.approx(m["valid_accuracy"], abs=1e-4)
    assert values["f1"] == pytest.approx(m["macro_f1"], abs=1e-4)
    assert head["model-index"][0]["name"] == "colour-net"
    for c in ("blue", "green", "red"):
        assert f"| {c} |" in body  # the per-class table
    assert "shorter side is resized to 40 px" in body and "32 × 32" in body
    assert "`knn` score" in body and "keeps 75%" in body
    assert 'timm.create_model("hf-hub:user/colour-net", pretrained=True)' in body
    assert "--onnx" in body and "imageclf predict" in body


def test_card_license_unset_by_default_and_base_model_from_hub(timm_run: Path,
                                                               tmp_path: Path):
    head, _ = _card(hub_folder(timm_run / "model", tmp_path / "hub"))
    assert "license" not in head and "datasets" not in head
    meta = ModelMeta.read(timm_run / "model")
    facts = CardFacts(meta, "x", settings={"pretrained": "hub"})
    assert base_model(facts) == "timm/resnet18.a1_in1k"  # timm's default weights' Hub id
    assert header(facts)["base_model"] == "timm/resnet18.a1_in1k"


def test_card_of_a_bare_model_folder(timm_run: Path, tmp_path: Path):
    bare = tmp_path / "bare"
    shutil.copytree(timm_run / "model", bare)  # no run files beside it
    head, body = _card(hub_folder(bare, tmp_path / "hub"))
    assert "model-index" not in head and "not written by a run" in body


def test_push_offline_fails_at_once_in_one_line(timm_run: Path,
                                                monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused
    r = run_cli("push", str(timm_run / "model"), "user/x")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be reached" in lines[0] and "export --timm" in lines[0]


def test_timm_named_weights_without_their_config_are_a_clear_error(timm_run: Path,
                                                                    tmp_path: Path):
    from imageclf.core.errors import DamagedFileError
    from imageclf.model.folder import load_model

    out = hub_folder(timm_run / "model", tmp_path / "hub")
    (out / "config.json").unlink()
    with pytest.raises(DamagedFileError, match="config.json"):
        load_model(out)
