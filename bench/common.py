"""Shared helpers of the side-by-side benchmarks: the reference tool's venv, data, results."""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
BENCH_OUTPUTS = ("bench/results", "docs/benchmarks.md", "docs/images_per_s.png")
FASTAI_VENV = HERE / ".venv-fastai"
FASTAI_VERSION = "2.8.12"
DEFAULT_TAR = ROOT.parent / "shared" / "data" / "imagenette-224.tar"


def fastai_python() -> Path:
    """The reference tool's interpreter, in its own virtual environment (made on first use)."""
    py = FASTAI_VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(FASTAI_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", f"fastai=={FASTAI_VERSION}",
                        "torch", "torchvision"], check=True)
    return py


def recipe_parser() -> argparse.ArgumentParser:
    """The options of the shared Imagenette recipe (--data, and size 128, presize 160,
    batch 64 unless given), for a benchmark to add its own to."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--data")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--presize", type=int, default=160)
    ap.add_argument("--bs", type=int, default=64)
    return ap


def imagenette(data: str | None) -> Path:
    """An extracted Imagenette folder (train/, val/), extracting the shared tar if needed."""
    if data:
        return Path(data)
    out = HERE / "work" / "imagenette"
    if not (out / "train").is_dir():
        out.mkdir(parents=True, exist_ok=True)
        with tarfile.open(DEFAULT_TAR) as tar:
            tar.extractall(out, filter="data")
    return out


def widened(data: Path, aspect: str) -> Path:
    """A copy of `data` with every image stretched back from square to `aspect` (W:H, e.g.
    4:3): the shared Imagenette copy squeezed each whole photo to 224x224, and most ImageNet
    photos are 4:3 landscapes. Height kept, width scaled, one bicubic resample, JPEG q95.
    Portrait originals, which the squeeze cannot tell apart, come out stretched."""
    from PIL import Image

    w, h = (int(v) for v in aspect.split(":"))
    out = HERE / "work" / f"{data.name}-widened-{w}x{h}"
    done = out.parent / f"{out.name}.complete"
    if done.exists():
        return out
    for src in sorted(data.glob("*/*/*")):
        dst = out / src.relative_to(data)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(src) as im:
            im = im.convert("RGB")
            size = (round(im.height * w / h), im.height)
            im.resize(size, Image.Resampling.BICUBIC).save(dst, "JPEG", quality=95)
    done.write_text(aspect)
    return out


PRESIZED_MARK = "PRESIZED.json"


def presized_copy(data: Path, presize: int, out: Path, quality: int = 90,
                  widen: str | None = None) -> Path:
    """A small copy of `data` for a machine the whole data cannot travel to: each image
    replaced by exactly the slot training's presize cache keeps of it (short side →
    `presize`, long side up to 1.25 × presize, one antialiased resample: the loader's own
    `load_presized`), saved as JPEG at `quality`. Loaded with the same presize, such an image
    is used as it is, with no second resample; what differs from the full copy is one JPEG
    encode. The copy's PRESIZED.json says what it is (`widen`: the aspect `data` was widened
to, if it was); `presized_source` reads it back."""
    from PIL import Image

    from imageclf.data.images import load_presized

    done = out / PRESIZED_MARK
    if done.exists():
        return out
    for src in sorted(data.glob("*/*/*")):
        slot = load_presized(src, presize)
        dst = (out / src.relative_to(data)).with_suffix(".jpg")
        dst.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(slot.hwc()).save(dst, "JPEG", quality=quality)
    done.write_text(json.dumps({"presize": presize, "quality": quality, "widen": widen,
                                "source": data.name}))
    return out


def presized_source(data: Path) -> dict | None:
    """What a `presized_copy` folder was made from, or None for a plain data folder."""
    mark = data / PRESIZED_MARK
    return json.loads(mark.read_text()) if mark.exists() else None


def subset(data: Path, per_class: int) -> Path:
    """A copy of `data` with the first `per_class` files of every class folder of each split."""
    out = HERE / "work" / f"subset-{per_class}"
    if out.is_dir():
        return out
    for split in sorted(p for p in data.iterdir() if p.is_dir()):
        for cls in sorted(p for p in split.iterdir() if p.is_dir()):
            dst = out / split.name / cls.name
            dst.mkdir(parents=True)
            for f in sorted(cls.iterdir())[:per_class]:
                shutil.copy2(f, dst / f.name)
    return out


ENV_WORD = re.compile(r"^[A-Z][A-Z0-9_]*=")


def split_env(args: str) -> tuple[dict[str, str], list[str]]:
    """A recipe's words: its leading NAME=VALUE words (environment variables, e.g.
    IMAGECLF_CONV_GRAD=native) and the command-line words."""
    words = shlex.split(args)
    env = dict(w.split("=", 1) for w in words if ENV_WORD.match(w))
    return env, [w for w in words if not ENV_WORD.match(w)]


def run(cmd: list[str], env: dict[str, str] | None = None) -> str:
    """Run one tool in its own process and return its stdout; stop the benchmark with the
    tail of its output when it fails."""
    full_env = {**os.environ, **(env or {})}
    r = subprocess.run(cmd, capture_output=True, text=True, env=full_env)
    if r.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return r.stdout


def pretrain_body(full: Path, data: Path, tmp: str, train_args: list[str], epochs: int
                  ) -> tuple[Path, Path, dict]:
    """The fine-tuning setting without hub weights: resnet-style body trained from scratch on
    the first half of `full`'s classes (all their images), the other half of `data`'s kept to
    fine-tune on. Returns (fine-tuning data, the body's model/ folder, what it reached)."""
    classes = sorted(p.name for p in (full / "train").iterdir() if p.is_dir())
    half = len(classes) // 2
    for split in (p.name for p in full.iterdir() if p.is_dir()):
        for i, c in enumerate(classes):
            src, dst = (full, "pre") if i < half else (data, "fine")
            (Path(tmp) / dst / split).mkdir(parents=True, exist_ok=True)
            (Path(tmp) / dst / split / c).symlink_to((src / split / c).resolve())
    run([sys.executable, "-m", "imageclf", "train", f"{tmp}/pre", "--pretrained", "none",
         *train_args, "--epochs", str(epochs), "--out", f"{tmp}/pre-run"])
    m = json.loads(Path(f"{tmp}/pre-run/metrics.json").read_text())
    info = {"classes": classes[:half], "epochs": epochs, "valid_accuracy": m["valid_accuracy"],
            "lr": m["lr"]}
    print("pretrained body:", info, flush=True)
    return Path(f"{tmp}/fine"), Path(f"{tmp}/pre-run/model"), info


def run_json(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    """Run one tool in its own process and parse the JSON object of its last output line."""
    return json.loads(run(cmd, env).strip().splitlines()[-1])


def machine() -> dict:
    """Where a figure was measured."""
    cpu = cpuinfo().get("model name") or platform.processor()
    cpu_id = cpu_generation()
    # BENCH_COMMIT: a copy of the tree whose .git, if any, is not its own (a lent machine's)
    commit = os.environ.get("BENCH_COMMIT") or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
        cwd=ROOT).stdout.strip()
    # "+changes" means code or settings differ from the commit; the files benchmarks write
    # themselves (results saved after each seed, the report) don't count
    dirty = not os.environ.get("BENCH_COMMIT") and subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
         *(f":!{p}" for p in BENCH_OUTPUTS)], capture_output=True, text=True,
        cwd=ROOT).stdout.strip()
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")  # an approximation of a smaller CPU
    gpu = cuda_gpu()
    return {"cpu": cpu, **({"cpu_id": cpu_id} if cpu_id else {}), "isa": cpu_isa(),
            "cores": os.cpu_count(),
            **({"isa_cap": cap} if cap else {}), **({"gpu": gpu} if gpu else {}),
            "python": platform.python_version(), "date": dt.date.today().isoformat(),
            "commit": commit + ("+changes" if dirty else "")}


def cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo ({} where there is none)."""
    try:
        block = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return {}
    pairs = (line.split(":", 1) for line in block.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def cpu_generation() -> str | None:
    """"family F model M" from /proc/cpuinfo. "AMD EPYC" with AVX512-BF16 alone named two
    machines 1.8x apart in a training epoch; this tells them apart (26 is Zen 5)."""
    info = cpuinfo()
    if "cpu family" not in info or "model" not in info:
        return None
    return f"family {info['cpu family']} model {info['model']}"


def cuda_gpu() -> str | None:
    """The first visible NVIDIA GPU's name (what `imageclf train --device auto` trains on),
    from nvidia-smi, so that the benchmark's own process need not start CUDA; None if none."""
    if not shutil.which("nvidia-smi") or os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return None
    r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                       capture_output=True, text=True)
    names = r.stdout.strip().splitlines() if r.returncode == 0 else []
    return names[0].strip() if names else None


def cpu_isa() -> str:
    """The CPU's best matrix instructions, which decide its bf16 speed: the same model name
    ("Intel(R) Xeon(R) Processor") has come with and without AMX."""
    if "flags" not in (info := cpuinfo()):
        return "unknown"
    flags = set(info["flags"].split())
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    return "AVX2" if "avx2" in flags else "no AVX2"


def save(name: str, result: dict) -> Path:
    """Write bench/results/<name>.json."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def random_resnet18(folder: Path, size: int, presize: int) -> Path:
    """A model/ folder of resnet18 over 10 classes with seeded random weights: for the
    benchmarks that measure speed, not accuracy."""
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from imageclf.core.modelmeta import ModelMeta
    from imageclf.model.classifier import create_model
    from imageclf.model.export import save_model

    torch.manual_seed(0)
    return save_model(create_model("resnet18", 10, "none"), folder, ModelMeta(
        arch="resnet18", head="concat", classes=tuple(f"c{i}" for i in range(10)),
        size=size, presize=presize, resize_method="crop", mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225), loss="cross_entropy"))


def cpu_name(m: dict) -> str:
    """The CPU's name, with its family and model where recorded (one name covers machines
    of different speeds)."""
    return f"{m['cpu']} {m['cpu_id']}" if m.get("cpu_id") else m["cpu"]


def where(r: dict) -> str:
    """The device a result was measured on: the GPU, or the CPU with its ISA; its cores."""
    m = r["machine"]
    isa = f" ({m['isa']})" if m.get("isa") and not m.get("gpu") else ""
    return f"{m.get('gpu') or cpu_name(m)}{isa}, {m['cores']} cores"


def measured(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    """Wall seconds and peak memory of a command's whole process tree, sampled every 0.2 s:
    the sum of each process's PSS (its private pages plus its share of the pages it shares),
    so that forked workers' shared pages count once, as RSS would count them N times."""
    import psutil

    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env)
    peak = 0
    proc = psutil.Process(p.pid)
    while p.poll() is None:
        try:
            tree = [proc, *proc.children(recursive=True)]
            peak = max(peak, sum(q.memory_full_info().pss for q in tree if q.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.2)
    out, err = p.communicate()
    if p.returncode != 0:
        raise SystemExit(f"{cmd[:5]} failed:\n{out[-2000:]}\n{err[-3000:]}")
    return {"seconds": round(time.perf_counter() - t0, 1), "peak_mb": round(peak / 2**20),
            "stdout": out}


def spread_csv(data: Path, n: int, path: Path, pattern: str = "*.jpg") -> Path:
    """A CSV (filename,label) of n images (`pattern`) of a class-folder set, evenly spread."""
    files = sorted(data.rglob(pattern))
    files = files[:: max(1, len(files) // n)][:n]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "label"])
        for p in files:
            w.writerow([str(p), p.parent.name])
    return path
