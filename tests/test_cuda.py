"""The GPU path on a CUDA device; every test here is skipped where no CUDA GPU is visible.

What they check there: the training loop never waits for the device between steps (CUDA's
sync debug mode turns any wait into an error), fp16 with gradient scaling trains, the
Predictor gives the GPU's answer within bf16 tolerance of the CPU's, and the process-group
backend chosen for GPUs takes both the CPU and the GPU tensors the loop exchanges."""

from pathlib import Path

import pytest
import torch

from imageclf.core.config import DataConfig, TrainConfig
from imageclf.learn.callbacks import Callback
from imageclf.run.runs import RunContext, build_learner

from .helpers import make_folder_dataset

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


class NoWaitBetweenSteps(Callback):
    """From the second batch's start to the last batch's end, with the loader's work between
    steps included, any operation that makes the host wait for the GPU raises."""

    order = -100

    def __init__(self) -> None:
        self.checked = 0

    def on_batch_start(self, learn) -> None:  # noqa: ANN001
        if learn.progress.batch_in_epoch == 1:
            torch.cuda.set_sync_debug_mode("error")

    def on_batch_end(self, learn) -> None:  # noqa: ANN001
        if learn.progress.batch_in_epoch >= 2:
            self.checked += 1
        if learn.progress.batch_in_epoch == len(learn.dls.train):
            torch.cuda.set_sync_debug_mode("default")

    def on_fit_end(self, learn) -> None:  # noqa: ANN001
        torch.cuda.set_sync_debug_mode("default")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_folder_dataset(tmp_path / "data", n_train=16, n_valid=4)  # 48 train


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_training_steps_never_wait_for_the_gpu(data: Path, precision: str):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    learn = build_learner(DataConfig.build(path=str(data), size=32, presize=40, bs=8),
                          TrainConfig.build(arch="resnet18", pretrained="none",
                                            precision=precision),
                          RunContext("cuda"))
    assert learn.precision.name == precision and learn.scaler.is_enabled() == (
        precision == "fp16")
    watch = NoWaitBetweenSteps()
    learn.cbs.append(watch)
    learn.fit_one_cycle(5, 1e-3)
    assert watch.checked == 5 * (len(learn.dls.train) - 1)
    rows = learn.history.rows
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in rows)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]  # it learned (colours are easy)
    assert rows[-1]["valid_accuracy"] > 0.8
    for p in learn.model.parameters():
        assert torch.isfinite(p).all()


def test_predictor_on_the_gpu_agrees_with_the_cpu(data: Path, tmp_path: Path):
    from imageclf.model.predict import Predictor
    from imageclf.run.runs import train_run

    res = train_run(DataConfig.build(path=str(data), size=32, presize=40, bs=8),
                    TrainConfig.build(arch="resnet18", pretrained="none", epochs=2, lr="1e-2",
                                out=str(tmp_path / "run")), RunContext("cuda"))
    gpu = Predictor(res.out / "model", device="cuda", precision="fp32")
    cpu = Predictor(res.out / "model", device="cpu", precision="fp32")
    x = torch.stack([cpu.load(f) for f in sorted((data / "valid").rglob("*.jpg"))])
    assert torch.allclose(gpu.outputs(x).logits, cpu.outputs(x).logits, atol=1e-3, rtol=1e-3)
    assert [p.labels for p in gpu.predict(sorted((data / "valid").rglob("*.jpg")))] == [
        p.labels for p in cpu.predict(sorted((data / "valid").rglob("*.jpg")))]


def test_the_gpu_backend_takes_cpu_and_gpu_tensors(tmp_path: Path):
    import torch.distributed as tdist

    from imageclf.core.distributed import backend_for

    dev = torch.device("cuda:0")
    tdist.init_process_group(backend_for(dev), init_method=f"file://{tmp_path / 'rdv'}",
                             rank=0, world_size=1)
    try:
        flag = torch.tensor([1.0])  # the stop flag and the epoch's loss travel on the CPU
        tdist.all_reduce(flag)
        grads = torch.ones(4, device=dev)  # DDP's gradients on the GPU
        tdist.all_reduce(grads)
        box = [{"lr": 1e-3}]
        tdist.broadcast_object_list(box, src=0)
        assert float(flag) == 1.0 and grads.sum().item() == 4.0 and box[0]["lr"] == 1e-3
    finally:
        tdist.destroy_process_group()
