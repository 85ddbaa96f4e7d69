"""Two CPU processes with gloo (torchrun) against one process with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .conftest import final_metrics, make_folder_dataset

WORKER = Path(__file__).with_name("ddp_worker.py")
ELASTIC = Path(__file__).with_name("elastic_worker.py")
# LayerNorm body and a plain linear head: no BatchNorm, whose batch statistics would differ
# between 8 images per process and 16 in one process. What remains is the order of sums.
MODEL = ["convnext_atto", "timm"]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return env | {"OMP_NUM_THREADS": "1"}


def test_two_gloo_processes_match_one_process(tmp_path: Path):
    data = make_folder_dataset(tmp_path / "data", n_train=16, n_valid=5)  # 48 train, 15 valid
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    r = subprocess.run([sys.executable, str(WORKER), str(data), "16", str(one), *MODEL],
                       capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--standalone", str(WORKER), str(data), "8", str(two), *MODEL],
                       capture_output=True, text=True, timeout=300, env=_env())
    if r.returncode != 0 and "errno" in r.stderr.lower() and "socket" in r.stderr.lower():
        pytest.skip(f"no local sockets for gloo: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr[-3000:]
    w0, w1 = load_file(two / "rank0.safetensors"), load_file(two / "rank1.safetensors")
    for k in w0:  # DistributedDataParallel keeps the replicas identical
        assert torch.equal(w0[k], w1[k]), k
    m0, m1 = (json.loads((two / f"rank{r}.json").read_text()) for r in (0, 1))
    ref = json.loads((one / "rank0.json").read_text())
    assert m0["world_size"] == 2 and ref["world_size"] == 1
    assert m0["n_train_batches"] == ref["n_train_batches"] == 3  # same global batches
    assert (m0["valid_shard"], m1["valid_shard"]) == (8, 8)  # 15 images, one repeated (sampler)
    assert m0["valid_gathered"] == m1["valid_gathered"] == 15  # and the metrics see them all
    for a, b in zip(m0["rows"], m1["rows"], strict=True):  # metrics reduced: same everywhere
        assert a["valid_loss"] == b["valid_loss"] and a["train_loss"] == b["train_loss"]
    # same images, same augmentation, same global batch, no batch statistics: the same run
    for a, b in zip(m0["rows"], ref["rows"], strict=True):
        assert a["valid_accuracy"] == b["valid_accuracy"]
        assert a["valid_loss"] == pytest.approx(b["valid_loss"], rel=1e-3)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
    w = load_file(one / "rank0.safetensors")
    diff = sum(float((w0[k] - w[k]).pow(2).sum()) for k in w) ** 0.5
    norm = sum(float(w[k].pow(2).sum()) for k in w) ** 0.5
    assert diff / norm < 1e-3, diff / norm


def test_two_processes_accumulating_match_one_large_batch(tmp_path: Path):
    """2 gloo processes x bs 4 x --accum-steps 2 (gradients exchanged once per step) against
    1 process at bs 16: the same 16 images and rate per step. No augmentation, so only the
    order of sums differs."""
    data = make_folder_dataset(tmp_path / "data", n_train=16, n_valid=5)  # 48 train, 15 valid
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    for out, launch, bs in ((one, [], "16"), (two, ["-m", "torch.distributed.run",
                            "--nproc_per_node", "2", "--standalone"], "4")):
        r = subprocess.run([sys.executable, *launch, str(WORKER), str(data), bs, str(out),
                            *MODEL, "1" if out == one else "2"],
                           capture_output=True, text=True, timeout=300, env=_env())
        assert r.returncode == 0, r.stderr[-3000:]
    w = load_file(one / "rank0.safetensors")
    w0, w1 = load_file(two / "rank0.safetensors"), load_file(two / "rank1.safetensors")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    m0, ref = (json.loads((d / "rank0.json").read_text()) for d in (two, one))
    assert (m0["n_train_batches"], ref["n_train_batches"]) == (6, 3)  # 3 steps an epoch
    for a, b in zip(m0["rows"], ref["rows"], strict=True):
        assert a["valid_loss"] == pytest.approx(b["valid_loss"], rel=1e-3)
    diff = sum(float((w0[k] - w[k]).pow(2).sum()) for k in w) ** 0.5
    norm = sum(float(w[k].pow(2).sum()) for k in w) ** 0.5
    assert diff / norm < 1e-4, diff / norm


def test_torchrun_train_cli_with_lr_find_on_rank_0(tmp_path: Path):
    """The README's command: rank 0 runs lr_find alone and broadcasts the rate (the other
    rank waits), only rank 0 prints and writes the run directory."""
    data = make_folder_dataset(tmp_path / "data", n_train=8, n_valid=3)
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node", "2", "-m", "imageclf", "train", str(data),
                        "--pretrained", "none", "--size", "32", "--presize", "40", "--bs", "4",
                        "--epochs", "1", "--lr", "auto", "--lr-find-steps", "30", "--out",
                        str(out)],
                       capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("epoch 0 ") == 1 and r.stdout.count("lr_find: valley") == 1
    m = json.loads((out / "metrics.json").read_text())
    assert m["lr"] == m["lr_find"][m["lr_rule"]] and m["epochs"] == 1
    assert (out / "report.html").is_file() and (out / "model" / "model.safetensors").is_file()


def test_two_nodes_with_c10d_rendezvous_share_one_cache(tmp_path: Path):
    """The README's several-machines command, as two one-process "nodes" on this machine
    meeting through a c10d rendezvous, with --cache-dir on storage both see: one of them
    builds each split's cache under the file lock, the other reuses it; one run directory."""
    import socket

    data = make_folder_dataset(tmp_path / "data", n_train=8, n_valid=3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node",
           "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id",
           "two-nodes", "-m", "imageclf", "train", str(data), "--pretrained", "none", "--size",
           "32", "--presize", "40", "--bs", "4", "--epochs", "1", "--lr", "1e-3",
           "--cache-dir", str(tmp_path / "shared-cache"), "--out", str(tmp_path / "run")]
    nodes = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_env(), cwd=tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in nodes]
    for p, (_, err) in zip(nodes, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert sum(o.count("epoch 0 ") for o, _ in outs) == 1  # only global rank 0 prints
    assert len(list((tmp_path / "shared-cache").glob("*.u8"))) == 2  # train + valid, once
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["epochs"] == 1 and (tmp_path / "run" / "model" / "model.safetensors").is_file()

    # --resume where only rank 0's machine sees the run directory (node 1 runs in a folder
    # without it; static rendezvous makes node 0 rank 0): rank 0 reads the checkpoint and
    # sends it to the other. The run is finished: both only validate, and agree.
    (tmp_path / "elsewhere").mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node",
         "1", "--node-rank", str(i), "--master-addr", "127.0.0.1", "--master-port", str(port),
         "-m", "imageclf", "train", "--resume", "run"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=_env(), cwd=cwd)
        for i, cwd in enumerate((tmp_path, tmp_path / "elsewhere"))]
    outs = [p.communicate(timeout=300) for p in nodes]
    for p, (_, err) in zip(nodes, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    again = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert again["valid_loss"] == m["valid_loss"] and again["epochs"] == 1
    assert not (tmp_path / "elsewhere" / "run").exists()


def test_a_job_restarted_by_torchrun_continues_from_its_checkpoint(tmp_path: Path):
    """torchrun --max-restarts with --auto-resume: a process dies in the middle of epoch 1,
    torchrun restarts both, and the job goes on from the checkpoint of epoch 0's end to the
    same end as a job never interrupted."""
    data = make_folder_dataset(tmp_path / "data", n_train=8, n_valid=3)
    args = ["train", str(data), "--pretrained", "none", "--size", "32", "--presize", "40",
            "--bs", "4", "--epochs", "2", "--lr", "2e-3", "--precision", "fp32",
            "--auto-resume", "--out"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    r = subprocess.run([*torchrun, "-m", "imageclf", *args, str(ref)], capture_output=True,
                       text=True, timeout=300, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([*torchrun, "--max-restarts", "1", str(ELASTIC), "-v", *args, str(run)],
                       capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming {run} at epoch 1, batch 0" in r.stderr, r.stderr[-3000:]
    assert r.stdout.count("epoch 0 ") == 1 and r.stdout.count("epoch 1 ") == 1  # none twice
    assert final_metrics(run) == final_metrics(ref)


def test_resume_with_another_number_of_processes(tmp_path: Path):
    """A checkpoint from 1 process, mid-epoch, resumed by 2 (a lost GPU given back, a
    job re-run with other --nproc_per_node): the batches are dealt out differently, so the
    interrupted epoch starts again from its beginning, and the log says so."""
    import imageclf.runs as runs
    from imageclf.callbacks import Callback
    from imageclf.checkpoint import STOP
    from imageclf.config import DataConfig, TrainConfig

    class StopAt(Callback):
        def on_batch_end(self, learn):
            if learn.epochs_done == 1 and learn.batch_in_epoch == 2:
                STOP.requested = "SIGTERM"

    data = make_folder_dataset(tmp_path / "data", n_train=8, n_valid=3)
    run = tmp_path / "run"
    train = TrainConfig(pretrained="none", precision="fp32", epochs=2, lr="2e-3", out=str(run))
    with pytest.raises(runs.Interrupted):
        runs.train_run(DataConfig(path=str(data), size=32, presize=40, bs=4), train,
                       cbs=[StopAt()])
    info = json.loads((run / "checkpoints" / "last.json").read_text())
    assert (info["epoch"], info["batch"], info["world_size"]) == (1, 2, 1)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node", "2", "-m", "imageclf", "-v", "train", "--resume",
                        str(run)], capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert "written by 1 process(es) and this job has 2: each step now sees 8 images " \
           "instead of 4, and epoch 1 starts again from its beginning" in r.stderr
    assert f"resuming {run} at epoch 1, batch 0" in r.stderr
    m = json.loads((run / "metrics.json").read_text())
    assert m["epochs"] == 2 and [row["epoch"] for row in m["history"]] == [0, 1]
    assert m["global_batch"] == 8
