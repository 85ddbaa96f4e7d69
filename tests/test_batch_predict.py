"""Batch prediction (predict -o): Parquet parts that match the Predictor, unreadable rows,
two ranks once each, resume after kill -9, a changed model refused, embeddings equal to
evaluate's features, a lazy listing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from imageclf.core.commands import BatchOptions, PredictOptions
from imageclf.core.distributed import Dist
from imageclf.core.errors import ConfigError
from imageclf.data.listing import Listing
from imageclf.data.sources import list_images
from imageclf.jobs.batch_predict import (
    JOB,
    MANIFEST,
    _claim,
    finish,
    part_name,
    predict_batch,
    run_chunks,
)
from imageclf.model.predict import Predictor

from .helpers import add_bad_files, make_folder_dataset, run_cli


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 images in nested folders, and the unreadable kinds."""
    root = tmp_path_factory.mktemp("batch") / "imgs"
    make_folder_dataset(root / "a", n_train=4, n_valid=2)
    make_folder_dataset(root / "b" / "deeper", n_train=2, n_valid=2)
    add_bad_files(root / "bad")
    return root


def _rows(out: Path) -> dict[str, dict]:
    """Every row of the output, read by pyarrow alone (the _ files are not parts)."""
    t = pq.read_table(out)
    return {r["path"]: r for r in t.to_pylist()}


def _run(model: Path, source: Path, out: Path, chunk: int = 8, **kw):
    pred = Predictor(model)
    return predict_batch(pred, source, out, PredictOptions(bs=5),
                         BatchOptions(chunk=chunk, **kw), top_k=2)


def test_listing_walks_the_folder_in_order_and_its_fingerprint_sees_a_change(images: Path):
    listing = Listing.of(images)
    assert list(listing) == [str(p) for p in list_images(images)]
    assert [len(c) for c in listing.chunks(8)][:-1] == [8] * (len(list(listing)) // 8)
    fp, n = listing.fingerprint()
    assert n == len(list_images(images))
    victim = next(p for p in list_images(images) if p.is_file() and p.stat().st_size > 100)
    os.utime(victim, ns=(1, 1))
    assert listing.fingerprint()[0] != fp


def test_batch_rows_match_the_predictor_and_unreadables_have_reasons(run_dir: Path,
                                                                      images: Path,
                                                                      tmp_path: Path):
    m, state = _run(run_dir / "model", images, tmp_path / "out")
    files = list_images(images)
    assert m.job.images == len(files) == state.done
    assert m.parts == [part_name(k) for k in range(-(-len(files) // 8))]
    rows = _rows(tmp_path / "out")
    assert sorted(rows) == sorted(str(p) for p in files)
    pred = Predictor(run_dir / "model")
    for p in pred.predict(files, top_k=2):
        r = rows[p.path]
        if p.error is not None:
            assert r["error"] == p.error and r["decision"] is None
            continue
        assert r["error"] is None and r["decision"] == ";".join(p.labels)
        assert r["top_labels"] == [k for k, _ in p.top]
        assert r["top_probs"] == pytest.approx([v for _, v in p.top], abs=1e-6)
    bad = [r for r in rows.values() if r["error"] is not None]
    assert len(bad) == m.unreadable >= 6 and m.predicted == len(rows) - len(bad)
    assert {b.path for b in m.unreadable_files} == {r["path"] for r in bad}
    on_disk = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert on_disk["predicted"] == m.predicted and on_disk["job"]["images"] == len(files)


def test_two_ranks_predict_every_image_once(run_dir: Path, images: Path, tmp_path: Path):
    out = tmp_path / "out"
    pred = Predictor(run_dir / "model")
    _, job_state = _run(run_dir / "model", images, tmp_path / "whole")
    job = json.loads((tmp_path / "whole" / JOB).read_text())
    from imageclf.jobs.batch_predict import BatchJob, _Plan

    job = BatchJob.from_json(job, "job")
    _claim(out, job)
    plan = _Plan(5, 2, False, False, 0)
    done = []
    for rank in (0, 1):
        state = run_chunks(pred, Listing.of(images), out, job, plan, Dist(rank, 2))
        done.append(state.done)
    parts = sorted(p.name for p in out.glob("part-*.parquet"))
    assert parts == [part_name(k) for k in range(-(-job.images // job.chunk))]
    assert sum(done) == job.images and min(done) > 0
    m = finish(out, job, Dist(0, 2), 1.0)
    rows = pq.read_table(out).column("path").to_pylist()
    assert sorted(rows) == sorted(set(rows)) and len(rows) == job.images
    assert _rows(out).keys() == _rows(tmp_path / "whole").keys() and m.world_size == 2


KILLER = """
import os, signal, sys
from imageclf.core.commands import BatchOptions, PredictOptions
from imageclf.jobs.batch_predict import predict_batch
from imageclf.model.predict import Predictor

model, source, out, after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def progress(state):
    if state.done >= after:  # mid-chunk: a part half done, earlier parts written
        os.kill(os.getpid(), signal.SIGKILL)

predict_batch(Predictor(model), source, out, PredictOptions(bs=3), BatchOptions(chunk=8),
              top_k=2, progress=progress)
"""


@pytest.mark.slow
def test_a_killed_job_resumes_to_the_rows_of_an_uninterrupted_one(run_dir: Path,
                                                                  images: Path,
                                                                  tmp_path: Path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-c", KILLER, str(run_dir / "model"), str(images),
                        str(out), "12"], capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr
    kept = sorted(p.name for p in out.glob("part-*.parquet"))
    assert kept == [part_name(0)] and not (out / MANIFEST).exists()
    r = run_cli("predict", str(run_dir / "model"), str(images), "-o", str(out), "--chunk",
                "8", "--bs", "3", "--top-k", "2")
    assert r.returncode == 0, r.stderr
    assert "1 part(s) kept from before" in r.stdout
    assert not list(out.glob("*.tmp"))
    whole = tmp_path / "whole"
    r = run_cli("predict", str(run_dir / "model"), str(images), "-o", str(whole), "--chunk",
                "8", "--bs", "3", "--top-k", "2")
    assert r.returncode == 0, r.stderr
    assert _rows(out) == _rows(whole)


def test_a_changed_model_or_settings_is_refused_on_resume(run_dir: Path, images: Path,
                                                          tmp_path: Path):
    out = tmp_path / "out"
    _run(run_dir / "model", images, out)
    other = tmp_path / "model"
    shutil.copytree(run_dir / "model", other)
    meta = json.loads((other / "model.json").read_text())
    (other / "model.json").write_text(json.dumps(meta, indent=1))  # same model, new bytes
    with pytest.raises(ConfigError, match="the model changed: model"):
        _run(other, images, out)
    with pytest.raises(ConfigError, match="the settings changed: chunk: 8 then, 4 now"):
        _run(run_dir / "model", images, out, chunk=4)
    r = run_cli("predict", str(other), str(images), "-o", str(out))
    assert r.returncode == 2 and "holds another job's output" in r.stderr
    assert "Traceback" not in r.stderr


def test_embeddings_are_the_features_evaluate_uses(run_dir: Path, images: Path,
                                                   tmp_path: Path):
    import torch

    from imageclf.jobs.evaluate import run_images

    _run(run_dir / "model", images, tmp_path / "out", embeddings=True)
    rows = _rows(tmp_path / "out")
    pred = Predictor(run_dir / "model")
    files = [p for p in list_images(images) if rows[str(p)]["error"] is None]
    seen = run_images(pred, files, bs=5, features=True)
    got = torch.tensor([rows[str(p)]["embedding"] for p in files])
    assert got.shape == seen.outputs.features.shape
    assert torch.allclose(got, seen.outputs.features, atol=1e-5)


def test_a_source_that_is_not_one_is_one_line(run_dir: Path, tmp_path: Path):
    r = run_cli("predict", str(run_dir / "model"), str(tmp_path / "nothing"), "-o",
                str(tmp_path / "out"))
    assert r.returncode == 2 and "nothing is there" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_torchrun_two_processes_predict_every_image_once(run_dir: Path, images: Path,
                                                        tmp_path: Path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                        "2", "--standalone", "-m", "imageclf", "predict",
                        str(run_dir / "model"), str(images), "-o", str(out), "--chunk", "4",
                        "--top-k", "2", "--json"], capture_output=True, text=True, timeout=180,
                       env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(r.stdout[r.stdout.index("{"):])
    assert m["world_size"] == 2
    rows = pq.read_table(out).column("path").to_pylist()
    assert sorted(rows) == sorted(str(p) for p in list_images(images))  # once each
    whole = tmp_path / "whole"
    _run(run_dir / "model", images, whole, chunk=4)
    one = _rows(whole)
    for path, row in _rows(out).items():
        assert row["decision"] == one[path]["decision"]
        assert row["top_probs"] == pytest.approx(one[path]["top_probs"], abs=1e-5)


def test_decode_on_the_device_gives_the_rows_of_the_cpu_path(run_dir: Path, images: Path,
                                                             tmp_path: Path):
    """--decode device on a CPU runs the same code as on a GPU (torchvision's decoder in
    place of nvJPEG): the same readable images, the same answers."""
    _run(run_dir / "model", images, tmp_path / "cpu")
    _run(run_dir / "model", images, tmp_path / "dev", decode="device")
    cpu, dev = _rows(tmp_path / "cpu"), _rows(tmp_path / "dev")
    assert cpu.keys() == dev.keys()
    assert json.loads((tmp_path / "dev" / JOB).read_text())["decode"] == "device"
    for path, a in cpu.items():
        b = dev[path]
        assert (a["error"] is None) == (b["error"] is None), path
        if a["error"] is None:
            assert a["top_probs"][0] == pytest.approx(b["top_probs"][0], abs=0.05), path


@pytest.mark.slow
def test_a_store_at_a_url_is_predicted_with_ranged_reads(run_dir: Path, tmp_path: Path):
    import functools
    import http.server
    import threading

    from imageclf.core.config import DataConfig
    from imageclf.data.pack import PackSettings, pack

    data = make_folder_dataset(tmp_path / "data", n_train=3, n_valid=2)
    pack(DataConfig.build(path=str(data)).source, tmp_path / "srv" / "store",
         PackSettings(presize=40, shard_bytes=8 * 1024))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(tmp_path / "srv"))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/store/"
        r = run_cli("predict", str(run_dir / "model"), url, "-o", str(tmp_path / "out"),
                    "--top-k", "2", "--json")
        assert r.returncode == 0, r.stderr
        m = json.loads(r.stdout)
        assert m["predicted"] == 15 and m["unreadable"] == 0 and m["job"]["source"] == url
        local = tmp_path / "local"
        _run(run_dir / "model", tmp_path / "srv" / "store", local)
        def key(ref: str) -> str:  # the shard's name and the place in it
            shard, place = ref.split("::store::")
            return Path(shard).name + "::" + place

        by_local = {key(row["path"]): row for row in _rows(local).values()}
        assert len(by_local) == 15
        for row in _rows(tmp_path / "out").values():
            same = by_local[key(row["path"])]
            assert row["decision"] == same["decision"]
            assert row["top_probs"] == pytest.approx(same["top_probs"], abs=1e-6)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_a_rank_that_fails_stops_the_others_with_a_message_of_ours(
        run_dir: Path, images: Path, tmp_path: Path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    out = tmp_path / "out"
    (out / part_name(1)).mkdir(parents=True)  # rank 1's first part cannot be written
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                        "2", "--standalone", "-m", "imageclf", "predict",
                        str(run_dir / "model"), str(images), "-o", str(out), "--chunk", "4"],
                       capture_output=True, text=True, timeout=180,
                       env=env | {"OMP_NUM_THREADS": "1"})
    assert r.returncode != 0
    assert "another process of this job stopped" in r.stderr, r.stderr[-3000:]
    assert (out / part_name(0)).is_file() and not (out / MANIFEST).exists()
