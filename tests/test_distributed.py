"""Two CPU processes with gloo (torchrun) against one process with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .helpers import final_metrics, free_port, make_folder_dataset

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

WORKER = Path(__file__).with_name("ddp_worker.py")
ELASTIC = Path(__file__).with_name("elastic_worker.py")
# LayerNorm body and a plain linear head: no BatchNorm, whose batch statistics would differ
# between 8 images per process and 16 in one process. What remains is the order of sums.
MODEL = ["test_convnext", "timm"]
# The command-line tests check how processes meet, stop, restart and share the run: timm's
# 0.4M-parameter test model keeps their steps and checkpoints small.
TINY = ["--arch", "test_resnet", "--pretrained", "none"]


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


def test_two_nodes_with_c10d_rendezvous_share_one_cache(tmp_path: Path):
    """docs/distributed.md's several-machines command, as two one-process "nodes" on this machine
    meeting through a c10d rendezvous, with --cache-dir on storage both see: one of them
    builds each split's cache under the file lock, the other reuses it; one run directory."""
    import socket

    data = make_folder_dataset(tmp_path / "data", n_train=8, n_valid=3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node",
           "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id",
           "two-nodes", "-m", "imageclf", "train", str(data), *TINY, "--size",
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
    assert m["processes"] == 2 and m["global_batch"] == 8
    assert "processes<b>2</b>" in (tmp_path / "run" / "report.html").read_text()

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

    # --auto-resume the other way round: rank 0's machine has no run, rank 1's has it.
    # Starting afresh would quietly drop the training done: every rank refuses, nothing written.
    port = free_port()
    auto = cmd[cmd.index("imageclf") - 1:cmd.index("--out")] + ["--out", "run", "--auto-resume"]
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node",
         "1", "--node-rank", str(i), "--master-addr", "127.0.0.1", "--master-port", str(port),
         *auto], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
        cwd=cwd) for i, cwd in enumerate((tmp_path / "elsewhere", tmp_path))]
    outs = [p.communicate(timeout=300) for p in nodes]
    for p, (_, err) in zip(nodes, outs, strict=True):
        assert p.returncode != 0
        assert "rank 0's machine has no checkpoint in run, but rank 1's has one (a finished " \
               "run)" in " ".join(err.split()), err[-3000:]
    assert not (tmp_path / "elsewhere" / "run").exists()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == again


def test_torchrun_cli_and_a_job_restarted_from_its_checkpoint(tmp_path: Path):
    """1) docs/distributed.md's command: rank 0 runs lr_find alone and broadcasts the rate
    (the other rank waits), only rank 0 prints and writes the run directory.
    2) The same with torchrun --max-restarts: a process dies in the middle of epoch 1,
    torchrun restarts both, and --auto-resume goes on from the checkpoint of epoch 0's end
    (without a second lr_find) to the same end as the job never interrupted."""
    data = make_folder_dataset(tmp_path / "data", n_train=8, n_valid=3)
    args = ["train", str(data), *TINY, "--size", "32", "--presize", "40",
            "--bs", "4", "--epochs", "2", "--lr", "auto", "--lr-find-steps", "30",
            "--precision", "fp32", "--auto-resume", "--out"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    r = subprocess.run([*torchrun, "-m", "imageclf", *args, str(ref)], capture_output=True,
                       text=True, timeout=300, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("lr_find: valley") == 1
    assert r.stdout.count("epoch 0 ") == 1 and r.stdout.count("epoch 1 ") == 1
    m = json.loads((ref / "metrics.json").read_text())
    assert m["lr"] == m["lr_find"][m["lr_rule"]] and m["epochs"] == 2
    assert (ref / "report.html").is_file() and (ref / "model" / "model.safetensors").is_file()
    # rank 0 sweeps alone, adding up 2 of its batches of 4 a step (the job's global batch),
    # each with 1 synthetic negative beside them
    assert json.loads((ref / "lr_find.json").read_text())["images_per_step"] == 10

    r = subprocess.run([*torchrun, "--max-restarts", "1", str(ELASTIC), "-v", *args, str(run)],
                       capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming {run} at epoch 1, batch 0" in r.stderr, r.stderr[-3000:]
    assert r.stdout.count("lr_find: valley") == 1  # not again after the restart
    assert r.stdout.count("epoch 0 ") == 1 and r.stdout.count("epoch 1 ") == 1  # none twice
    assert final_metrics(run) == final_metrics(ref)



def _wait_for(mark: Path, *procs: subprocess.Popen) -> None:
    """Until `mark` exists; fails if a process ends first or a minute and a half passes."""
    import time

    deadline = time.monotonic() + 90
    while not mark.exists():
        for p in procs:
            assert p.poll() is None, p.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{mark} never appeared"
        time.sleep(0.1)


def test_an_elastic_job_grows_and_shrinks(tmp_path: Path):
    """`torchrun --nnodes 1:2` starts alone. A second node joins in epoch 1: torchrun stops
    the first process (SIGTERM: a checkpoint after the current step), starts both, and
    --auto-resume goes on with 2; the batches are dealt out differently, so the interrupted
    epoch starts again from its beginning. In epoch 2 the second node is lost (torchrun and
    its process killed): the first fails its next exchange, torchrun restarts it alone, and
    it goes on from the checkpoint of epoch 1's end. The log says each change."""
    data = make_folder_dataset(tmp_path / "data", n_train=8, n_valid=3)  # 24 train images
    mark, run = tmp_path / "waiting", tmp_path / "run"
    # torch 2.14's shared rendezvous store loses a joining node (it waits for keys the
    # first node never writes again): docs/distributed.md's elastic command turns the sharing off
    env = _env() | {"IMAGECLF_TEST_EVENT": "grow", "IMAGECLF_TEST_MARK": str(mark),
                    "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1:2",
            "--nproc_per_node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
            f"127.0.0.1:{free_port()}", "--rdzv-id", "grow", "--rdzv-conf",
            "last_call_timeout=1", "--max-restarts", "1", str(ELASTIC), "-v", "train",
            str(data), *TINY, "--size", "32", "--presize", "40", "--bs", "4",
            "--epochs", "3", "--lr", "2e-3", "--precision", "fp32", "--out", str(run),
            "--auto-resume"]
    first = subprocess.Popen(node, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    _wait_for(mark, first)  # alone, it waits at batch 2 of epoch 1
    second = subprocess.Popen(node, env=env | {"IMAGECLF_TEST_DOOMED": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    doomed = mark.with_suffix(".doomed")
    _wait_for(doomed, first, second)  # at batch 1 of epoch 2, the second node waits
    for pid in doomed.read_text().split():  # its process and its torchrun
        os.kill(int(pid), 9)
    outs = [p.communicate(timeout=300) for p in (first, second)]
    assert first.returncode == 0, outs[0][1][-3000:]
    assert second.returncode == -9
    out, err = "".join(o for o, _ in outs), "".join(e for _, e in outs)
    assert "SIGTERM: stopped after the current step" in err
    assert "Resume with: the same command (--auto-resume)" in err
    assert "written by 1 process(es) and this job has 2: each step now sees 8 images " \
           "instead of 4, and epoch 1 starts again from its beginning" in err
    assert err.count(f"resuming {run} at epoch 1, batch 0") == 2  # both processes
    assert "written by 2 process(es) and this job has 1: each step now sees 4 images " \
           "instead of 8\n" in err
    assert err.count(f"resuming {run} at epoch 2, batch 0") == 1
    for e in range(3):  # each epoch's line once: none lost, none twice
        assert out.count(f"epoch {e} ") == 1, out
    m = json.loads((run / "metrics.json").read_text())
    assert m["epochs"] == 3 and [row["epoch"] for row in m["history"]] == [0, 1, 2]
    assert m["global_batch"] == 4 and m["processes"] == 1  # the job's last number
    # the step losses: epoch 0's 6 batches of 4, epoch 1's 3 of 8 (without the 2 steps taken
    # alone before the restart), epoch 2's 6 of 4
    info = json.loads((run / "checkpoints" / "last.json").read_text())
    assert len(info["history"]["batch_losses"]) == 6 + 3 + 6
    # images/s count the whole job's images: 24 known and 6 synthetic negatives (1 beside
    # each batch of 4) an epoch, whatever the number of processes
    assert info["progress"]["train_images"] == 3 * (24 + 6)


def test_more_processes_than_gpus_is_one_clear_error(monkeypatch: pytest.MonkeyPatch):
    """torchrun --nproc_per_node 2 on a machine with one GPU: the second process says what
    is wrong before touching the device (CUDA would answer "invalid device ordinal")."""
    from imageclf.core.distributed import from_env
    from imageclf.core.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ConfigError, match="LOCAL_RANK 1, but only 1 CUDA GPU"):
        from_env("auto")
