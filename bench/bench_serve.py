"""Serving under load: `imageclf serve` (batched, and with --max-batch 1) against the
endpoint fastai users deploy (FastAPI calling fastai 2.8.12's `learn.predict`), resnet18
at 224 with random weights (latency is measured, not accuracy), driven by an async HTTP load
generator at 1, 8 and 32 concurrent clients, each posting one Imagenette JPEG per request.
Then a soak: 16 clients for 60 s, 5% of the uploads bad files, the server's memory watched.
First, single-client latency: one image per request from a plain blocking client (raw body,
multipart, and the Open Inference Protocol's infer with the binary extension), against
`Predictor.predict` on one image in process, on the same files.

Usage: bench_serve.py [--data DIR] [--seconds 15] [--soak 60] [--single-only]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from common import (
    HERE,
    ROOT,
    cpu_name,
    fastai_python,
    imagenette,
    machine,
    random_resnet18,
    run_json,
    save,
    where,
)

LEVELS = (1, 8, 32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], port: int) -> subprocess.Popen:
    """A server process, once its /health answers. Its output goes to a file: a pipe nobody
    reads would fill with the access log and stall the server."""
    log = tempfile.NamedTemporaryFile("w+", prefix="serve-", suffix=".log", delete=False)
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise SystemExit(f"{cmd[:4]} exited:\n{Path(log.name).read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return p
        except httpx.HTTPError:
            time.sleep(0.5)
    p.kill()
    raise SystemExit(f"{cmd[:4]} did not start")


def stop(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load(url: str, files: list[bytes], clients: int, seconds: float,
               bad: list[bytes] | None = None, bad_share: float = 0.0) -> dict:
    """`clients` concurrent clients posting one image per request for `seconds`."""
    records: list[tuple[bool, int, float]] = []  # (bad upload, status or 0, ms)
    end = time.monotonic() + seconds
    rng = random.Random(0)

    async def client(i: int, http: httpx.AsyncClient) -> None:
        k = i
        while time.monotonic() < end:
            is_bad = bad is not None and rng.random() < bad_share
            data = rng.choice(bad) if is_bad else files[k % len(files)]
            k += clients
            t0 = time.perf_counter()
            try:
                r = await http.post(url + "/predict",
                                    files={"file": ("x.jpg", data, "image/jpeg")})
                status = r.status_code
            except httpx.HTTPError:
                status = 0
            records.append((is_bad, status, (time.perf_counter() - t0) * 1000))

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*[client(i, http) for i in range(clients)])
        wall = time.perf_counter() - t0
    good = sorted(ms for b, s, ms in records if not b and s == 200)
    failed = sum(1 for b, s, _ in records if not b and s != 200)
    bad_ok = sum(1 for b, s, _ in records if b and 400 <= s < 500)
    bad_n = sum(1 for b, _, _ in records if b)

    def q(p: float) -> float:
        return good[min(len(good) - 1, int(p * len(good)))] if good else float("nan")

    return {"clients": clients, "requests": len(records), "req_per_s": len(good) / wall,
            "p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99), "failed": failed,
            "bad_uploads": bad_n, "bad_refused_4xx": bad_ok}


def _v2_body(data: bytes) -> tuple[bytes, str]:
    """An infer request with one image as binary data: (body, its JSON header's length)."""
    raw = len(data).to_bytes(4, "little") + data
    head = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                   "parameters": {"binary_data_size": len(raw)}}],
                       "outputs": [{"name": "probs", "parameters": {"binary_data": True}},
                                   {"name": "labels"}]}).encode()
    return head + raw, str(len(head))


def single_client(port: int, files: list[bytes], passes: int = 1) -> dict[str, list[float]]:
    """ms of each request, one at a time from http.client (a keep-alive connection), per
    kind of request, every kind sent in turn for each file so that they share the noise."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    boundary = "imageclfbench"

    def multipart(data: bytes) -> bytes:
        return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                'filename="x.jpg"\r\nContent-Type: image/jpeg\r\n\r\n').encode() + data + (
                    f"\r\n--{boundary}--\r\n").encode()

    def kinds(data: bytes) -> dict[str, tuple[str, bytes, dict]]:
        v2, n = _v2_body(data)
        return {"raw body": ("/predict", data, {"Content-Type": "image/jpeg"}),
                "multipart": ("/predict", multipart(data), {
                    "Content-Type": f"multipart/form-data; boundary={boundary}"}),
                "v2 infer": ("/v2/models/model/infer", v2, {
                    "Inference-Header-Content-Length": n,
                    "Content-Type": "application/octet-stream"})}

    times: dict[str, list[float]] = {k: [] for k in kinds(b"")}
    for _ in range(passes):
        for data in files:
            for kind, (url, body, headers) in kinds(data).items():
                t0 = time.perf_counter()
                conn.request("POST", url, body=body, headers=headers)
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    raise SystemExit(f"{kind}: HTTP {r.status}")
                times[kind].append((time.perf_counter() - t0) * 1000)
    conn.close()
    return times


def single_client_rounds(serve: list[str], model: Path, precision: str, paths: list[Path],
                         rounds: int = 3) -> dict[str, float]:
    """Median ms per request kind and for Predictor.predict, measured in turns (an HTTP
    pass over the files, then Predictor.predict over them in its own process) so that a
    slow spell of the shared machine falls on both."""
    files = [p.read_bytes() for p in paths]
    port = free_port()
    proc = start([*serve, "--port", str(port), "--precision", precision], port)
    times: dict[str, list[float]] = {}
    try:
        single_client(port, files[:10])  # warm-up
        for _ in range(rounds):
            for k, v in single_client(port, files).items():
                times.setdefault(k, []).extend(v)
            times.setdefault("predictor", []).append(run_json([
                sys.executable, str(HERE / "imageclf_predict.py"), str(model), precision,
                *map(str, paths)])["median_ms"])
    finally:
        stop(proc)
    return {k: statistics.median(v) for k, v in times.items()}


def measure(name: str, cmd: list[str], port: int, files: list[bytes], seconds: float
            ) -> dict:
    p = start(cmd, port)
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(load(url, files, 4, 3.0))  # warm-up
        rows = []
        for n in LEVELS:
            row = asyncio.run(load(url, files, n, seconds))
            print(f"{name:24s} {n:3d} clients: {row['req_per_s']:6.1f} req/s, p50 "
                  f"{row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms, {row['failed']} "
                  "failed", flush=True)
            rows.append(row)
    finally:
        stop(p)
    return {"name": name, "levels": rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--soak", type=float, default=60.0)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--presize", type=int, default=460)
    ap.add_argument("--single-only", action="store_true",
                    help="Only the single-client latency against Predictor.predict.")
    a = ap.parse_args()
    data = imagenette(a.data)
    paths = sorted((data / "val").rglob("*.JPEG"))[::37][:64]
    files = [p.read_bytes() for p in paths]
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from imageclf.core.hardware import resolve_precision

    auto = resolve_precision("auto", torch.device("cpu"), training=False).name
    results: dict = {"machine": machine(), "settings": vars(a) | {"data": str(data),
                                                                   "auto_precision": auto}}
    with tempfile.TemporaryDirectory() as tmp:
        model = random_resnet18(Path(tmp) / "model", a.size, a.presize)
        # the floor under HTTP: Predictor.predict on one image, as bench_predict times it
        results["predictor_ms"] = {
            p: run_json([sys.executable, str(HERE / "imageclf_predict.py"), str(model), p,
                         *map(str, paths[:40])])["median_ms"] for p in sorted({auto, "fp32"})}
        serve = [sys.executable, "-m", "imageclf", "serve", str(model)]
        results["single_client"] = single = {}
        for p in sorted({auto, "fp32"}):
            single[p] = single_client_rounds(serve, model, p, paths[:40])
            print(f"single client, {p}: " + ", ".join(f"{k} {v:.1f} ms"
                                                       for k, v in single[p].items()))
        if a.single_only:
            save("serve_single", results)
            return
        runs = []
        for name, extra in ((f"imageclf {auto}", ["--precision", auto]),
                            (f"imageclf {auto} --max-batch 1", ["--precision", auto,
                                                                "--max-batch", "1"]),
                            ("imageclf fp32", ["--precision", "fp32"])):
            if name == "imageclf fp32" and auto == "fp32":
                continue
            port = free_port()
            runs.append(measure(name, [*serve, "--port", str(port), *extra], port, files,
                                a.seconds))
        port = free_port()
        runs.append(measure("fastai fp32", [str(fastai_python()), str(Path(__file__).parent
                                                                     / "fastai_serve.py"),
                                            str(data), str(a.size), str(a.presize),
                                            str(port)], port, files, a.seconds))
        results["runs"] = runs
        # soak: the batched server, 16 clients, 5% bad uploads, memory watched
        bad = [os.urandom(3000), files[0][: len(files[0]) // 3], b"", b"GIF89a" + bytes(50)]
        port = free_port()
        p = start([*serve, "--port", str(port), "--precision", auto], port)
        try:
            url = f"http://127.0.0.1:{port}"
            asyncio.run(load(url, files, 16, 10.0, bad, 0.05))  # reach a steady state
            before = rss_mb(p.pid)
            series: list[float] = []

            async def soak_run() -> dict:
                async def watch() -> None:  # the server's memory every 5 s
                    while True:
                        await asyncio.sleep(5)
                        series.append(rss_mb(p.pid))

                watcher = asyncio.ensure_future(watch())
                try:
                    return await load(url, files, 16, a.soak, bad, 0.05)
                finally:
                    watcher.cancel()

            soak = asyncio.run(soak_run())
            half = series[len(series) // 2] if series else before
            soak |= {"rss_before_mb": before, "rss_after_mb": rss_mb(p.pid),
                     "rss_series_mb": series, "rss_second_half_growth_mb":
                     rss_mb(p.pid) - half, "seconds": a.soak}
        finally:
            stop(p)
        print(f"soak: {soak}", flush=True)
        results["soak"] = soak
    by = {r["name"]: {row["clients"]: row for row in r["levels"]} for r in runs}
    top = max(LEVELS)
    batched, single = by[f"imageclf {auto}"], by[f"imageclf {auto} --max-batch 1"]
    results["summary"] = {
        "vs_fastai_at_32": batched[top]["req_per_s"] / by["fastai fp32"][top]["req_per_s"],
        "vs_unbatched_at_32": batched[top]["req_per_s"] / single[top]["req_per_s"],
        "single_client_p50_ms": batched[1]["p50_ms"],
        "single_client": {p: {k: v / d["predictor"] for k, v in d.items() if k != "predictor"}
                          for p, d in single.items()},
        "predictor_ms": results["predictor_ms"][auto],
        "failed": sum(row["failed"] for r in runs for row in r["levels"]) + soak["failed"],
        "soak_rss_growth_mb": soak["rss_after_mb"] - soak["rss_before_mb"],
        "soak_rss_second_half_growth_mb": soak["rss_second_half_growth_mb"]}
    print(results["summary"])
    save("serve", results)
    from report import render

    render()


# --- its part of docs/benchmarks.md --------------------------------------------------------
def section(r: dict) -> str:
    m, st, s = r["machine"], r["settings"], r["summary"]
    lines = [
        "## Serving: requests per second and latency under concurrent clients",
        "",
        f"resnet18 at {st['size']} (presize {st['presize']}), random weights; an async HTTP"
        " load generator on the same machine, each client posting one Imagenette JPEG per"
        f" request, {st['seconds']:g} s per level. imageclf serve batches concurrent requests"
        " (--max-batch 32, --max-wait-ms 5; also shown with --max-batch 1); fastai 2.8.12:"
        " a FastAPI endpoint calling `learn.predict` on the uploaded bytes. imageclf's"
        f" precision is auto ({st['auto_precision']} here). Measured {m['date']} on"
        f" {cpu_name(m)} ({m['cores']} cores), commit {m['commit']}.",
        "",
        "| server | clients | req/s | p50 (ms) | p90 (ms) | p99 (ms) | failed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in r["runs"]:
        for row in run["levels"]:
            lines.append(f"| {run['name']} | {row['clients']} | {row['req_per_s']:.1f} |"
                         f" {row['p50_ms']:.0f} | {row['p90_ms']:.0f} | {row['p99_ms']:.0f} |"
                         f" {row['failed']} |")
    k = r["soak"]
    lines += [
        "",
        f"At 32 clients: **{s['vs_fastai_at_32']:.1f}×** fastai's throughput and"
        f" **{s['vs_unbatched_at_32']:.1f}×** imageclf's without batching. One client: p50"
        f" {s['single_client_p50_ms']:.0f} ms over HTTP, against"
        f" {s['predictor_ms']:.0f} ms for `Predictor.predict` on one image in process.",
        "",
        f"Soak: {k['seconds']:g} s at {k['clients']} clients with 5% bad uploads:"
        f" {k['requests']} requests, {k['failed']} good ones failed, {k['bad_refused_4xx']} of"
        f" {k['bad_uploads']} bad ones refused with a 4xx; the server's RSS went from"
        f" {k['rss_before_mb']:.0f} MB to {k['rss_after_mb']:.0f} MB"
        + (f" ({k['rss_second_half_growth_mb']:+.0f} MB over the second half; every 5 s: "
           + ", ".join(f"{v:.0f}" for v in k["rss_series_mb"]) + ")"
           if "rss_series_mb" in k else "") + ".",
        "",
    ]
    return "\n".join(lines)


def section_single(r: dict) -> str:
    m, st = r["machine"], r["settings"]
    lines = [
        "## Serving: one client against Predictor.predict",
        "",
        f"resnet18 at {st['size']} (presize {st['presize']}), random weights. A blocking"
        " client (http.client, one keep-alive connection) sends one Imagenette JPEG per"
        " request, each kind of request in turn per file, over 40 files; then"
        " `Predictor.predict` on the same files, one at a time, in its own process; three"
        f" such rounds, medians (of every request, and of the rounds' Predictor medians)."
        f" Measured {m['date']} on {where(r)}, commit {m['commit']}.",
        "",
        "| precision | raw body (ms) | multipart (ms) | v2 infer, binary (ms) |"
        " Predictor.predict (ms) | raw body / predict | goal: ≤ 1.1 × predict + 3 ms |",
        "|---|---:|---:|---:|---:|---:|---|"]
    for p, d in r["single_client"].items():
        worst = max(d["raw body"], d["multipart"], d["v2 infer"])
        goal = 1.1 * d["predictor"] + 3
        lines.append(f"| {p} | {d['raw body']:.1f} | {d['multipart']:.1f} |"
                     f" {d['v2 infer']:.1f} | {d['predictor']:.1f} |"
                     f" {d['raw body'] / d['predictor']:.2f}× |"
                     f" {'met' if worst <= goal else 'missed'} ({goal:.1f} ms) |")
    return "\n".join([*lines, "", ""])


def headline(r: dict) -> str:
    """The row of docs/benchmarks.md's summary table."""
    s = r.get("summary") or {}
    return (f"at 32 clients {s['vs_fastai_at_32']:.1f}× fastai's req/s, "
            f"{s['vs_unbatched_at_32']:.1f}× unbatched; {s['failed']} failed")


def headline_single(r: dict) -> str:
    """The summary row of the single-client figures."""
    return "one client, HTTP p50 / Predictor.predict: " + ", ".join(
        f"{p} {d['raw body'] / d['predictor']:.2f}×"
        for p, d in r["single_client"].items())


if __name__ == "__main__":
    main()
