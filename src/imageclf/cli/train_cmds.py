"""Commands that train: train, lr-find, demo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from imageclf.cli import options as o
from imageclf.cli.options import console, err
from imageclf.core.config import LR_FIND_STEPS, DataConfig, TrainConfig
from imageclf.core.errors import ConfigError


@o.settings_command(data_required=False)
def train(data: DataConfig, train: TrainConfig, resume: o.Resume = None,
          auto_resume: o.AutoResume = False, checkpoint_every: o.CheckpointEvery = 0.0,
          device: o.Device = "auto") -> None:
    """Train: fine_tune when pretrained, fit_one_cycle from scratch; write a run directory.
    Ctrl-C or SIGTERM stops after the current step with a checkpoint; --resume continues.
    An --out that already holds a run is refused (--resume or --auto-resume continue it)."""
    from imageclf.core.distributed import from_env, shutdown
    from imageclf.learn.callbacks import PrintEpochs
    from imageclf.run.runs import Interrupted, RunContext, auto_run, resume_run, train_run

    if checkpoint_every < 0:
        raise ConfigError(f"--checkpoint-every must be >= 0 minutes; got {checkpoint_every}")
    o.check_device(device)
    if auto_resume and resume is not None:
        raise ConfigError("--resume RUN_DIR continues that run; --auto-resume continues --out's "
                          "run: give one of them")
    if resume is None and data.source.path is None:
        raise ConfigError("DATA is missing: give a data folder or CSV (or --resume RUN_DIR)")
    dist, dev = from_env(device)  # torchrun: join the process group
    ctx = RunContext(dev, [PrintEpochs(console)] if dist.is_main else [], checkpoint_every,
                     dist)
    try:
        if resume is not None:
            res = resume_run(resume, ctx)
        else:
            res = (auto_run if auto_resume else train_run)(data, train, ctx)
        shutdown(wait=True)
    except Interrupted as e:
        if dist.is_main:
            again = ("the same command (--auto-resume)" if auto_resume
                     else f"imageclf train --resume {e.out}")
            err.print(Text.assemble((f"{e.signal_name}:", "yellow"), " stopped after the "
                                    f"current step; checkpoint written to {e.checkpoint}.\n"
                                    f"Resume with: {again}"))
        raise typer.Exit(130 if e.signal_name == "SIGINT" else 143) from None
    finally:
        shutdown()
    if dist.is_main:
        print_result(res)


def print_result(res: object) -> None:
    """What a finished `train` says: the rate, skipped files, accuracy, where the run is."""
    m = res.metrics
    if res.already_done:
        console.print(f"{res.out} is already trained (--auto-resume); nothing to do")
    if res.lr_find is not None:
        rule = m.lr_rule
        picked = f"; trained at {rule} {res.lr_find[rule]:.2e}" if rule else ""
        console.print("lr_find: " + ", ".join(f"{k} {v:.2e}" for k, v in res.lr_find.items())
                      + picked)
    if m.skipped_files:
        from imageclf.data.verify import skipped_by_cause

        totals = {split: sum(per.values()) for split, per in m.class_counts.items()}
        console.print(f"{len(m.skipped_files)} unreadable file(s) skipped:", style="yellow")
        for line in skipped_by_cause(m.skipped_files, totals):
            console.print(f"  {line}", style="yellow")
    if "train" in m.cache:
        console.print(f"presize cache {m.cache['train']}")
    w = m.watched
    best = (f" (best {w.best:.4f} at epoch {w.best_epoch})"
            if w.best is not None and w.best != w.last else "")
    last = "-" if w.last is None else f"{w.last:.4f}"
    console.print(f"precision {m.precision} on {m.device}; {w.name} "
                  f"{last}{best}; run directory: {res.out}")


@o.settings_command(exclude=("decode", "decode_workers", "sampler", "valid_size", "epochs",
                             "lr", "sizes", "clip_grad", "compile", "reg", "output"))
def lr_find(data: DataConfig, train: TrainConfig, output: o.Output = None,
            as_json: o.Json = False) -> None:
    """Run the learning-rate finder as `train --lr auto` would with these settings, and
    print its four suggestions, marking the one auto takes."""
    from imageclf.core.plots import plot_lr_find
    from imageclf.run.runs import build_learner, choose_lr

    learn = build_learner(data, train)
    choice, res = choose_lr(learn, train)
    if output is not None:
        plot_lr_find(res.lrs, res.losses, res.suggestions, output)
    if as_json:
        print(json.dumps({"suggestions": res.suggestions, "auto": choice.rule, "lrs": res.lrs,
                          "losses": res.losses, "images_per_step": res.images_per_step}))
        return
    for name, value in res.suggestions.items():
        console.print(f"{name:8s} {value:.2e}" + ("  <- --lr auto" if name == choice.rule
                                                 else ""))


def demo(out: Annotated[Path, typer.Option("--out", help="Where the data and the run go.")
                        ] = Path("runs/demo"),
         epochs: Annotated[int, typer.Option("--epochs", help="Epochs to train.")] = 10,
         n_train: Annotated[int, typer.Option("--n-train", help="Training images per class.")
                            ] = 250,
         lr_find_steps: Annotated[int, typer.Option(
             "--lr-find-steps", help="Steps of the learning-rate finder's sweep.")
                                  ] = LR_FIND_STEPS) -> None:
    """Draw a shapes data set, then verify → lr_find → train → evaluate → calibrate "none
    of these", offline."""
    from imageclf.cli.data_cmds import print_verify
    from imageclf.jobs.demo import demo as run_demo
    from imageclf.learn.callbacks import PrintEpochs

    run_demo(out, epochs=epochs, n_train=n_train, lr_find_steps=lr_find_steps,
             say=console.print, verified=print_verify, cbs=[PrintEpochs(console)])
