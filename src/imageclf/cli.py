"""The command line: flags map 1:1 onto the config dataclasses; only this module prints."""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from imageclf.config import LR_FIND_STEPS, AugConfig, ConfigError, DataConfig

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Train, inspect and use image classifiers.")
bench_app = typer.Typer(no_args_is_help=True, help="Measure parts of the pipeline.")
app.add_typer(bench_app, name="bench")
# no markup or emoji codes in what is printed: paths, class names and error messages are
# the user's text ("runs/[v2]", a gloo error naming "[pair.cc:152]") and print as they are
console = Console(soft_wrap=True, markup=False, emoji=False)
err = Console(stderr=True, soft_wrap=True, markup=False, emoji=False)
_state = {"debug": False}

DataArg = Annotated[Path, typer.Argument(help="A folder of class folders (train/ + valid/ or "
                                         "val/ inside, or one folder per class), or a CSV.")]
SizeOpt = Annotated[int, typer.Option("--size", help="Side of the images the model sees.")]
PresizeOpt = Annotated[int, typer.Option("--presize", help="Side of the CPU presize (>= size).")]
BsOpt = Annotated[int, typer.Option("--bs", help="Batch size.")]
CsvOpt = Annotated[str | None, typer.Option("--csv", help="CSV of filename,label[,is_valid].")]
RegexOpt = Annotated[str | None, typer.Option(
    "--label-regex", help="Label = group 1 of this regex on each file name.")]
ValidPctOpt = Annotated[float, typer.Option("--valid-pct",
                                            help="Random validation share when no split.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for the split and augmentation.")]
CacheOpt = Annotated[str | None, typer.Option(
    "--cache-dir", help="Presize cache folder (default $IMAGECLF_CACHE_DIR, "
    "$XDG_CACHE_HOME/imageclf or ~/.cache/imageclf).")]
MethodOpt = Annotated[str, typer.Option("--resize-method", help="crop, squish or pad.")]
MultiOpt = Annotated[bool, typer.Option("--multi-label", help="Several labels per image.")]


def _data_config(data: Path, size: int, presize: int, bs: int, csv: str | None,
                 label_regex: str | None, valid_pct: float, seed: int, cache_dir: str | None,
                 resize_method: str, multi_label: bool, decode: str = "cpu") -> DataConfig:
    return DataConfig(path=str(data), size=size, presize=presize, bs=bs, csv=csv,
                      label_regex=label_regex, valid_pct=valid_pct, seed=seed,
                      cache_dir=cache_dir, resize_method=resize_method, multi_label=multi_label,
                      decode=decode, aug=AugConfig())


def _check_device(device: str) -> None:
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda; got {device!r}")


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
          verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    _state["debug"] = debug
    logging.basicConfig(level=logging.INFO if verbose or debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


@app.command()
def verify(data: DataArg, csv: CsvOpt = None, label_regex: RegexOpt = None,
           valid_pct: ValidPctOpt = 0.2, seed: SeedOpt = 0, multi_label: MultiOpt = False,
           as_json: Annotated[bool, typer.Option("--json")] = False,
           full: Annotated[bool, typer.Option(
               "--full", help="Decode every image, not only its header: also finds truncated "
               "or corrupt image data (slower).")] = False) -> None:
    """Check every file (its header, or with --full the whole image); print counts per
    class and split, and the unreadable files with the reason."""
    import functools
    import os

    from imageclf.data.images import verify_file
    from imageclf.data.sources import find_items

    items = find_items(data, csv_file=csv, label_regex=label_regex, valid_pct=valid_pct,
                       seed=seed, multi_label=multi_label)
    # Pillow decodes with the GIL released: threads keep every core busy
    with ThreadPoolExecutor(max(4, os.cpu_count() or 1)) as pool:
        reasons = list(pool.map(functools.partial(verify_file, full=full), items.paths))
    bad = [{"path": str(p), "reason": r} for p, r in zip(items.paths, reasons, strict=True) if r]
    good = items.subset([i for i, r in enumerate(reasons) if r is None])
    counts = good.counts()
    result = {"n_items": len(items), "n_usable": len(good), "classes": list(items.classes),
              "multi_label": items.multi_label, "counts": counts, "unreadable": bad,
              "checked": "decode" if full else "header"}
    if as_json:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"{data}: {len(good)} usable of {len(items)} files")
    table.add_column("class")
    table.add_column("train", justify="right")
    table.add_column("valid", justify="right")
    for c in items.classes:
        table.add_row(c, str(counts["train"][c]), str(counts["valid"][c]))
    console.print(table)
    if bad:
        console.print(f"{len(bad)} unreadable file(s), left out:", style="yellow")
        for b in bad:
            console.print(f"  {b['path']}: {b['reason']}")
    else:
        console.print("no unreadable files")
    if not full:
        console.print("headers checked; --full decodes every image (finds truncated data)")


@app.command("show-batch")
def show_batch_cmd(data: DataArg,
                   output: Annotated[Path, typer.Option("-o", "--output")] = Path("batch.png"),
                   size: SizeOpt = 224, presize: PresizeOpt = 460, bs: BsOpt = 16,
                   csv: CsvOpt = None, label_regex: RegexOpt = None,
                   valid_pct: ValidPctOpt = 0.2, seed: SeedOpt = 0, cache_dir: CacheOpt = None,
                   resize_method: MethodOpt = "crop", multi_label: MultiOpt = False,
                   valid: Annotated[bool, typer.Option("--valid",
                                                       help="Show validation images.")] = False,
                   ) -> None:
    """Save a PNG grid of augmented training images with their labels."""
    from imageclf.data.loader import DataLoaders
    from imageclf.plots import show_batch

    cfg = _data_config(data, size, presize, bs, csv, label_regex, valid_pct, seed, cache_dir,
                       resize_method, multi_label)
    dls = DataLoaders.from_config(cfg)
    path = show_batch(dls, output, n=bs, train=not valid)
    console.print(f"wrote {path}")


@bench_app.command("loader")
def bench_loader(data: DataArg, size: SizeOpt = 128, presize: PresizeOpt = 160, bs: BsOpt = 64,
                 epochs: Annotated[int, typer.Option("--epochs")] = 3,
                 csv: CsvOpt = None, label_regex: RegexOpt = None, valid_pct: ValidPctOpt = 0.2,
                 seed: SeedOpt = 0, cache_dir: CacheOpt = None,
                 resize_method: MethodOpt = "crop", device: DeviceOpt = "auto",
                 decode: DecodeOpt = "cpu",
                 as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Iterate the training loader E times with full augmentation; images/s per epoch.

    The first epoch is cold (decodes into the cache) unless the cache already holds the
    data; pass a fresh --cache-dir for a cold start.
    """
    import torch

    from imageclf.data.loader import DataLoaders
    from imageclf.distributed import from_env

    _check_device(device)
    _, dev = from_env(device)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _data_config(data, size, presize, bs, csv, label_regex, valid_pct, seed,
                           cache_dir or tmp, resize_method, False, decode)
        dls = DataLoaders.from_config(cfg, device=dev)
        rows = []
        for epoch in range(epochs):
            t0 = time.perf_counter()
            n = 0
            dls.train.set_epoch(epoch)
            for x, _y in dls.train:
                n += x.shape[0]
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)  # the last batch's augmentation has finished
            dt = time.perf_counter() - t0
            rows.append({"epoch": epoch, "images": n, "seconds": round(dt, 3),
                         "img_per_s": round(n / dt, 1),
                         "cache": "cold" if epoch == 0 and dls.train.cache.stats.decoded
                         else "warm"})
        dls.train.cache.wait()
    result = {"tool": "imageclf", "size": size, "presize": presize, "bs": bs, "epochs": rows,
              "device": str(dev), "decode": decode,
              "decoded": dls.train.cache.stats.decoded}
    if as_json:
        print(json.dumps(result))
        return
    for r in rows:
        console.print(f"epoch {r['epoch']} ({r['cache']}): {r['images']} images in "
                      f"{r['seconds']:.2f} s = {r['img_per_s']:.0f} img/s")


def main() -> None:
    """Entry point: run the app; a bad setting is one clear line, not a traceback."""
    try:
        rc = app(standalone_mode=False)  # a typer.Exit comes back as its exit code
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except ConfigError as e:
        if _state["debug"]:
            raise
        err.print(Text.assemble(("error:", "red"), f" {e}"))
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted")
        sys.exit(130)
    except Exception as e:  # click's usage errors carry their own message and exit code
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if _state["debug"]:
            raise
        err.print(Text.assemble(("error:", "red"),
                                f" {type(e).__name__}: {e}  (run with --debug for details)"))
        sys.exit(1)


ArchOpt = Annotated[str, typer.Option("--arch", help="Any timm architecture name.")]
PretrainedOpt = Annotated[str, typer.Option(
    "--pretrained", help="hub, none, a .safetensors/.pth file, or an imageclf model/ folder.")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="auto, bf16, fp16 or fp32.")]
DecodeOpt = Annotated[str, typer.Option(
    "--decode", help="How the first pass decodes: cpu (Pillow, JPEG draft mode, one process "
    "per core) or device (JPEGs decoded and presized on the training device: nvJPEG on a "
    "GPU; other formats still by Pillow).")]
DeviceOpt = Annotated[str, typer.Option(
    "--device", help="auto (the GPU when there is one), cuda or cpu.")]
LrFindStepsOpt = Annotated[int, typer.Option(
    "--lr-find-steps", help="Optimiser steps in the learning-rate finder's sweep (fewer: "
    "faster, coarser curve).")]
AccumOpt = Annotated[int, typer.Option(
    "--accum-steps", help="Batches whose gradients add up to one optimiser step: each step "
    "sees bs x N images per process, for a larger batch than memory holds.")]


def _epoch_printer() -> object:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from imageclf.callbacks import Callback

    class PrintEpochs(Callback):
        """A progress bar per epoch (on a terminal) and a table row per epoch, like fastai's,
        with images/s (after History has added the epoch's row)."""

        order = 20

        def __init__(self) -> None:
            self.bar: Progress | None = None

        def on_epoch_start(self, learn) -> None:  # noqa: ANN001
            if not console.is_terminal:
                return
            self.bar = Progress("epoch", "{task.fields[epoch]}", BarColumn(),
                                MofNCompleteColumn(), "loss {task.fields[loss]}",
                                TimeRemainingColumn(), console=console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("", total=len(learn.dls.train), epoch=learn.epoch,
                                          loss="-")
            self._shown = 0.0

        def on_batch_end(self, learn) -> None:  # noqa: ANN001
            if self.bar is None:
                return
            # reading the loss waits for the device: twice a second, not at every step
            now = time.monotonic()
            if now - self._shown >= 0.5:
                self._shown = now
                self.bar.update(self.task, loss=f"{float(learn.loss.detach()):.3f}")
            self.bar.update(self.task, advance=1)

        def _close(self) -> None:
            if self.bar is not None:
                self.bar.stop()
                self.bar = None

        def on_validation_end(self, learn) -> None:  # noqa: ANN001
            self._close()
            row = learn.history.rows[-1] if learn.history.rows else {}
            if not row:
                return
            cells = [f"{k}={v:.4f}" for k, v in row.items()
                     if k not in ("epoch", "seconds", "img_per_s")]
            console.print(f"epoch {row['epoch']}  " + "  ".join(cells)
                          + f"  {row['seconds']:.1f}s  {row['img_per_s']:.0f} img/s")

        def on_fit_end(self, learn) -> None:  # noqa: ANN001
            self._close()

    return PrintEpochs()


@app.command()
def train(data: Annotated[Path | None, typer.Argument(
              help="A folder of class folders, or a CSV (not needed with --resume).")] = None,
          arch: ArchOpt = "resnet18", pretrained: PretrainedOpt = "hub",
          size: SizeOpt = 224, presize: PresizeOpt = 460,
          epochs: Annotated[int, typer.Option("--epochs")] = 4,
          freeze_epochs: Annotated[int, typer.Option("--freeze-epochs")] = 1,
          lr: Annotated[str, typer.Option(
              "--lr", help="A number, or run lr_find and take its suggestion: valley, slide, "
              "minimum (a tenth of the rate at the lowest loss) or steep; auto: valley when "
              "pretrained, minimum from scratch.")] = "auto",
          bs: BsOpt = 64, precision: PrecisionOpt = "auto",
          label_smoothing: Annotated[float, typer.Option("--label-smoothing")] = 0.0,
          multi_label: MultiOpt = False, seed: SeedOpt = 0,
          out: Annotated[str | None, typer.Option("--out", help="Run directory.")] = None,
          head: Annotated[str, typer.Option("--head", help="concat or timm.")] = "concat",
          csv: CsvOpt = None, label_regex: RegexOpt = None, valid_pct: ValidPctOpt = 0.2,
          cache_dir: CacheOpt = None, resize_method: MethodOpt = "crop",
          resume: Annotated[Path | None, typer.Option(
              "--resume", help="Continue this run directory from its last checkpoint.")] = None,
          auto_resume: Annotated[bool, typer.Option(
              "--auto-resume", help="For jobs that may be restarted (torchrun --max-restarts, "
              "preemptible machines): continue --out's run from its last checkpoint when it "
              "has one, start it otherwise; a finished run is left as it is.")] = False,
          checkpoint_every: Annotated[float, typer.Option(
              "--checkpoint-every", help="Minutes between checkpoints within an epoch "
              "(0: only at epoch ends).")] = 0.0,
          device: DeviceOpt = "auto", decode: DecodeOpt = "cpu",
          compile: Annotated[bool, typer.Option(
              "--compile", help="torch.compile the training step: a slower start (compiling, "
              "again after unfreezing), faster steps after; for GPUs and long runs.")] = False,
          lr_find_steps: LrFindStepsOpt = LR_FIND_STEPS, accum_steps: AccumOpt = 1,
          ) -> None:
    """Train: fine_tune when pretrained, fit_one_cycle from scratch; write a run directory.
    Ctrl-C or SIGTERM stops after the current step with a checkpoint; --resume continues.
    An --out that already holds a run is refused (--resume or --auto-resume continue it)."""
    from imageclf.config import TrainConfig
    from imageclf.distributed import from_env, shutdown
    from imageclf.runs import Interrupted, auto_run, resume_run, train_run

    if checkpoint_every < 0:
        raise ConfigError(f"--checkpoint-every must be >= 0 minutes; got {checkpoint_every}")
    _check_device(device)
    if auto_resume and resume is not None:
        raise ConfigError("--resume RUN_DIR continues that run; --auto-resume continues --out's "
                          "run: give one of them")
    dist, dev = from_env(device)  # torchrun: join the process group
    cbs = [_epoch_printer()] if dist.is_main else []
    try:
        if resume is not None:
            res = resume_run(resume, dev, cbs, checkpoint_every, dist)
        else:
            if data is None:
                raise ConfigError("DATA is missing: give a data folder or CSV (or --resume "
                                  "RUN_DIR)")
            dcfg = _data_config(data, size, presize, bs, csv, label_regex, valid_pct, seed,
                                cache_dir, resize_method, multi_label, decode)
            tcfg = TrainConfig(arch=arch, pretrained=pretrained, head=head, epochs=epochs,
                               freeze_epochs=freeze_epochs, lr=lr, precision=precision,
                               label_smoothing=label_smoothing, seed=seed, out=out,
                               compile=compile, lr_find_steps=lr_find_steps,
                               accum=accum_steps)
            start = auto_run if auto_resume else train_run
            res = start(dcfg, tcfg, dev, cbs, checkpoint_every, dist)
        shutdown(wait=True)
    except Interrupted as e:
        if dist.is_main:
            err.print(Text.assemble((f"{e.signal_name}:", "yellow"), " stopped after the "
                                    f"current step; checkpoint written to {e.checkpoint}.\n"
                                    "Resume with: " + ("the same command (--auto-resume)"
                                                       if auto_resume else
                                                       f"imageclf train --resume {e.out}")))
        raise typer.Exit(130 if e.signal_name == "SIGINT" else 143) from None
    finally:
        shutdown()
    if not dist.is_main:
        return
    m = res.metrics
    if res.already_done:
        console.print(f"{res.out} is already trained (--auto-resume); nothing to do")
    if res.lr_find is not None:
        rule = m.get("lr_rule")
        picked = f"; trained at {rule} {res.lr_find[rule]:.2e}" if rule else ""
        console.print("lr_find: " + ", ".join(f"{k} {v:.2e}" for k, v in res.lr_find.items())
                      + picked)
    if m.get("skipped_files"):
        console.print(f"{len(m['skipped_files'])} unreadable file(s) skipped", style="yellow")
    acc = m.get("valid_accuracy", m.get("accuracy_multi"))
    console.print(f"precision {m['precision']} on {m['device']}; valid accuracy {acc:.3f}; "
                  f"run directory: {res.out}")


@app.command("lr-find")
def lr_find_cmd(data: DataArg, arch: ArchOpt = "resnet18", pretrained: PretrainedOpt = "hub",
                size: SizeOpt = 224, presize: PresizeOpt = 460, bs: BsOpt = 64,
                precision: PrecisionOpt = "auto", seed: SeedOpt = 0,
                output: Annotated[Path | None, typer.Option("-o", "--output")] = None,
                csv: CsvOpt = None, label_regex: RegexOpt = None,
                valid_pct: ValidPctOpt = 0.2, cache_dir: CacheOpt = None,
                multi_label: MultiOpt = False, lr_find_steps: LrFindStepsOpt = LR_FIND_STEPS,
                accum_steps: AccumOpt = 1,
                as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Run the learning-rate finder and print its four suggestions."""
    from imageclf.config import TrainConfig
    from imageclf.lr_finder import resolve_rule
    from imageclf.plots import plot_lr_find
    from imageclf.runs import build_learner

    dcfg = _data_config(data, size, presize, bs, csv, label_regex, valid_pct, seed, cache_dir,
                        "crop", multi_label)
    tcfg = TrainConfig(arch=arch, pretrained=pretrained, precision=precision, seed=seed,
                       lr_find_steps=lr_find_steps, accum=accum_steps)
    learn = build_learner(dcfg, tcfg)
    if tcfg.sweeps_frozen:
        learn.freeze()  # what `train` sweeps when fine-tuning
    res = learn.lr_find(num_it=tcfg.lr_find_steps)
    if output is not None:
        plot_lr_find(res.lrs, res.losses, res.suggestions, output)
    # what `train --lr auto` would take with these settings
    auto = resolve_rule("auto", res.suggestions, tcfg.fine_tunes)
    if as_json:
        print(json.dumps({"suggestions": res.suggestions, "auto": auto, "lrs": res.lrs,
                          "losses": res.losses, "images_per_step": res.images_per_step}))
        return
    for name, value in res.suggestions.items():
        console.print(f"{name:8s} {value:.2e}" + ("  <- --lr auto" if name == auto else ""))


@app.command()
def demo(out: Annotated[Path, typer.Option("--out")] = Path("runs/demo"),
         epochs: Annotated[int, typer.Option("--epochs")] = 10,
         n_train: Annotated[int, typer.Option("--n-train", help="Training images per class.")
                            ] = 250,
         lr_find_steps: LrFindStepsOpt = LR_FIND_STEPS) -> None:
    """Draw a shapes data set, then verify → lr_find → train → evaluate, offline."""
    from imageclf.config import TrainConfig
    from imageclf.demo import make_shapes_dataset
    from imageclf.runs import train_run

    data = out / "data"
    if not (data / "train").is_dir():
        console.print(f"drawing a shapes data set into {data} ...")
        make_shapes_dataset(data, n_train=n_train, n_valid=max(10, n_train // 5))
    verify(data, None, None, 0.2, 0, False, False, full=True)
    dcfg = _data_config(data, 64, 80, 32, None, None, 0.2, 0, None, "crop", False)
    # from scratch on 1000 small images, timm's plain head learns much sooner than the
    # concat head with its dropout (measured: 82% vs 32% valid after 8 vs 4 epochs).
    # The rate: auto, from scratch lr_find's `minimum`; its valley (3.0e-4 on one draw)
    # reached 47.5% valid, 1e-3 68.5%, 3e-3 90.5% (10 epochs each)
    tcfg = TrainConfig(arch="resnet18", pretrained="none", head="timm", epochs=epochs,
                       lr="auto", out=str(out / "run"), lr_find_steps=lr_find_steps)
    res = train_run(dcfg, tcfg, cbs=[_epoch_printer()], overwrite=True)  # the last demo's run
    rule = res.metrics["lr_rule"]
    console.print(f"lr_find: trained at {rule} {res.lr_find[rule]:.2e} (valley "
                  f"{res.lr_find['valley']:.2e}, minimum {res.lr_find['minimum']:.2e}); "
                  f"plot: {res.out / 'lr_find.png'}")
    console.print(f"valid accuracy {res.metrics['valid_accuracy']:.3f} "
                  f"({res.metrics['precision']} on {res.metrics['device']})")
    console.print(f"run directory: {res.out}; report: {res.out / 'report.html'}; "
                  f"model: {res.out / 'model'}")
    console.print(f"next: imageclf predict {res.out / 'model'} {data / 'valid'} --top-k 2")


ModelArg = Annotated[Path, typer.Argument(help="A model/ folder written by `imageclf train`.")]


def _expand_inputs(inputs: list[Path]) -> list[Path]:
    """Files as given; folders walked for image files (sorted)."""
    from imageclf.data.sources import list_images

    out: list[Path] = []
    for p in inputs:
        if p.is_dir():
            out += list_images(p)
        else:
            out.append(p)
    return out


@app.command()
def predict(model: ModelArg,
            inputs: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
            top_k: Annotated[int, typer.Option("--top-k")] = 3,
            min_confidence: Annotated[float | None, typer.Option(
                "--min-confidence", help="Answer 'none' when the top softmax probability is "
                "below this (overrides model.json).")] = None,
            tta: Annotated[bool, typer.Option("--tta", help="Average flipped/zoomed views.")
                           ] = False,
            bs: BsOpt = 32, precision: PrecisionOpt = "auto",
            as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Top-k labels per image; unreadable files are reported per file, never a crash."""
    from imageclf.predict import Predictor

    pred = Predictor(model, min_confidence=min_confidence, precision=precision)
    paths = _expand_inputs(inputs)
    if not paths:
        raise ConfigError("no image files found in the given inputs")
    results = pred.predict(paths, top_k=top_k, bs=bs, tta=tta)
    n_ok = 0
    for r in results:
        n_ok += r.error is None
        if as_json:
            print(json.dumps(r.to_dict()))
        elif r.error is not None:
            err.print(Text.assemble(f"{r.path}: ", ("unreadable", "yellow"), f" ({r.error})"))
        else:
            tops = "  ".join(f"{k} {p:.3f}" for k, p in r.top)
            console.print(Text.assemble(f"{r.path}: ", (";".join(r.labels), "bold"),
                                        f"  ({tops})"))
    if n_ok == 0:
        err.print(Text.assemble(("error:", "red"), " no image could be predicted"))
        raise typer.Exit(1)


@app.command()
def evaluate(model: ModelArg, data: DataArg,
             output: Annotated[Path | None, typer.Option(
                 "-o", "--output", help="Folder for confusion_matrix.png and top_losses.png."
             )] = None,
             csv: CsvOpt = None, label_regex: RegexOpt = None,
             tta: Annotated[bool, typer.Option("--tta")] = False, bs: BsOpt = 32,
             precision: PrecisionOpt = "auto",
             as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Accuracy, per-class table and most-confused pairs on DATA's validation split (or every
    labelled image when DATA has no split)."""
    from imageclf.evaluate import evaluate as run_evaluate
    from imageclf.predict import Predictor

    pred = Predictor(model, precision=precision)
    interp = run_evaluate(pred, data, csv=csv, label_regex=label_regex, tta=tta, bs=bs,
                          out_dir=output)
    s = interp.summary()
    if as_json:
        print(json.dumps(s))
        return
    console.print(f"{s['n']} images; accuracy {s['accuracy']:.4f}; loss {s['loss']:.4f}"
                  + ("  (TTA)" if tta else ""))
    table = Table()
    for c in ("class", "precision", "recall", "f1", "support"):
        table.add_column(c, justify="left" if c == "class" else "right")
    for r in s["per_class"]:
        table.add_row(r["class"], f"{r['precision']:.3f}", f"{r['recall']:.3f}",
                      f"{r['f1']:.3f}", str(r["support"]))
    console.print(table)
    if s["most_confused"]:
        console.print("most confused (actual → predicted: count):")
        for m in s["most_confused"][:10]:
            console.print(f"  {m['actual']} → {m['predicted']}: {m['count']}")
    if s["skipped_files"]:
        console.print(f"{len(s['skipped_files'])} unreadable file(s) skipped", style="yellow")
        for b in s["skipped_files"]:
            console.print(f"  {b['path']}: {b['reason']}")
    if output is not None:
        console.print(f"pictures in {output}")


@app.command()
def calibrate(model: ModelArg, data: DataArg,
              keep: Annotated[float, typer.Option(
                  "--keep", help="Share of in-distribution images that must keep a label.")
              ] = 0.95,
              csv: CsvOpt = None, label_regex: RegexOpt = None,
              dry_run: Annotated[bool, typer.Option("--dry-run",
                                                    help="Print, do not store.")] = False,
              as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Choose the "none of these" thresholds on DATA's validation split; store them in
    model.json (softmax: min_confidence; multi-label: per-class thresholds)."""
    from imageclf.evaluate import calibrate as run_calibrate
    from imageclf.evaluate import write_calibration
    from imageclf.predict import Predictor

    chosen = run_calibrate(Predictor(model), data, keep, csv=csv, label_regex=label_regex)
    if not dry_run:
        write_calibration(model, chosen)
    if as_json:
        print(json.dumps(chosen))
        return
    if "min_confidence" in chosen:
        console.print(f"min_confidence {chosen['min_confidence']:.4f}: keeps {keep:.0%} of "
                      f"{chosen['n']} validation images")
    else:
        console.print("per-class thresholds: " + ", ".join(f"{t:.3f}"
                                                          for t in chosen["thresholds"]))
    console.print("not stored (--dry-run)" if dry_run else f"stored in {model / 'model.json'}")


@app.command()
def export(model: ModelArg,
           onnx: Annotated[bool, typer.Option("--onnx", help="Write an ONNX file.")] = False,
           output: Annotated[Path | None, typer.Option("-o", "--output")] = None) -> None:
    """Export a model/ folder (ONNX: normalisation inside, dynamic batch, probabilities out)."""
    if not onnx:
        raise ConfigError("choose an export format: --onnx")
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"--onnx needs the ONNX exporter ({e.name} is not installed): "
                          "pip install 'imageclf[onnx]'") from e
    from imageclf.export import export_onnx

    console.print(f"wrote {export_onnx(model, output)}")


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A run directory.")]) -> None:
    """Rebuild RUN_DIR/report.html from the run's files."""
    from imageclf.report import build_report

    console.print(f"wrote {build_report(run_dir)}")
