"""The model/ folder: save and load without pickle."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from imageclf.core.errors import DamagedFileError
from imageclf.model.export import export_learner
from imageclf.model.folder import load_model
from imageclf.model.predict import Predictor, to_probs

from .helpers import ARCH, run_cli


def test_export_round_trip_gives_identical_logits(learn, tmp_path: Path):
    learn.fit(1, 1e-3)
    learn.model.eval()
    x, _ = next(iter(learn.dls.valid))
    with torch.no_grad():
        ref = learn.model(x)
    export_learner(learn, tmp_path / "model")  # arch and head: recorded by the builder
    model, meta = load_model(tmp_path / "model")
    with torch.no_grad():
        out = model(x.contiguous())
    # --head auto from scratch built timm's head, and model.json records the one built
    assert meta.classes == ("blue", "green", "red") and (meta.arch, meta.head) == (
        ARCH, "timm")
    assert (meta.size, meta.presize, meta.resize_method) == (32, 40, "crop")
    assert torch.allclose(out, ref, atol=1e-5)
    (tmp_path / "model" / "model.json").write_text("{broken")
    with pytest.raises(DamagedFileError, match="model.json"):
        load_model(tmp_path / "model")


@pytest.mark.slow
def test_onnx_matches_pytorch(run_dir: Path, tmp_path: Path):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    r = run_cli("export", str(run_dir / "model"), "--onnx", "-o", str(out))
    assert r.returncode == 0 and out.is_file(), r.stderr
    pred = Predictor(run_dir / "model", precision="fp32")  # ONNX runs in fp32
    data = Path(json.loads((run_dir / "config.json").read_text())["data"]["source"]["path"])
    paths = sorted((data / "valid").rglob("*.jpg"))[:5]
    x = torch.stack([pred.load(p) for p in paths])
    ours = to_probs(pred.outputs(x).logits, pred.multi_label)
    rgb = pred.augment.denormalize(pred.augment(x, train=False)).numpy()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    theirs = sess.run(["probs"], {"image": rgb.astype(np.float32)})[0]
    assert theirs.shape == (5, 3)
    np.testing.assert_allclose(theirs, ours.numpy(), atol=1e-4)
    # dynamic batch
    assert sess.run(["probs"], {"image": rgb[:1].astype(np.float32)})[0].shape == (1, 3)


@pytest.mark.parametrize("damage,needle", [
    (lambda d: (d / "model.json").write_text("{not json"), "not valid JSON"),
    (lambda d: (d / "model.json").write_text(json.dumps({"arch": "resnet18"})), "missing field"),
    (lambda d: _edit(d, weights="../../elsewhere.safetensors"), "inside"),
    (lambda d: _edit(d, classes=[]), "'classes'"),
    (lambda d: _edit(d, size="big"), "'size'"),
    (lambda d: (d / "model.safetensors").write_bytes(
        (d / "model.safetensors").read_bytes()[:1000]), "model.safetensors"),
    (lambda d: _edit(d, classes=["a", "b"]), "does not match"),
])
def test_damaged_bundle_gives_a_clear_error(run_dir: Path, tmp_path: Path, damage, needle):
    model = tmp_path / "model"
    shutil.copytree(run_dir / "model", model)
    damage(model)
    with pytest.raises(DamagedFileError, match=needle):
        load_model(model)
    r = run_cli("predict", str(model), str(model / "model.json"))
    assert r.returncode != 0 and "Traceback" not in r.stderr and needle.split()[0] in r.stderr


def _edit(folder: Path, **changes) -> None:
    meta = json.loads((folder / "model.json").read_text())
    meta.update(changes)
    (folder / "model.json").write_text(json.dumps(meta))
