"""Commands that train: train, lr-find, demo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
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
        console.print(f"{len(m.skipped_files)} unreadable file(s) skipped", style="yellow")
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


# The demo's recipe, chosen by measurement on 2 cores capped at AVX2 in fp32 (docs/recipes.md,
# "The demo"): timm's resnet10t at half width trains 6x as many images a second as resnet18,
# and at 48 px, batch 16, 10 epochs and 1e-2, without warp or lighting changes (the shapes'
# colours are random already), it reached 97.5, 95.0, 94.0% (seeds 0-2).
DEMO_ARCH, DEMO_SIZE, DEMO_PRESIZE, DEMO_BS, DEMO_LR = "resnet10t_narrow", 48, 64, 16, 1e-2


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
    from imageclf.core.hardware import pick_device
    from imageclf.data.sources import resolve
    from imageclf.data.verify import verify_items
    from imageclf.jobs.demo import draw_negative, make_negatives, make_shapes_dataset
    from imageclf.jobs.evaluate import calibrate, evaluate, write_calibration
    from imageclf.learn.callbacks import PrintEpochs
    from imageclf.model.predict import Predictor
    from imageclf.run.report import build_report
    from imageclf.run.runs import RunContext, build_learner, run_lr_find, train_run

    data, none = out / "data", out / "none"
    if not (data / "train").is_dir() or not (none / "valid").is_dir():
        console.print(f"drawing a shapes data set into {data}, and images of none of the "
                      f"shapes into {none} ...")
        make_shapes_dataset(data, n_train=n_train, n_valid=max(10, n_train // 5))
        make_negatives(none, n_train=0, n_valid=max(10, n_train // 5))
    print_verify(data, verify_items(resolve(data), full=True))
    dcfg = DataConfig.build(path=str(data), size=DEMO_SIZE, presize=DEMO_PRESIZE, bs=DEMO_BS,
                            max_warp=0.0, max_lighting=0.0)
    tcfg = TrainConfig.build(arch=DEMO_ARCH, pretrained="none", head="timm", epochs=epochs,
                             lr=str(DEMO_LR), out=str(out / "run"),
                             lr_find_steps=lr_find_steps)
    # The sweep is shown, but the demo trains at its measured rate: in 100 steps this model
    # from scratch learns nothing yet (with a zero head its loss stays at ln 4 until the
    # blow-up), so the suggestions are noise here (docs/recipes.md, "The demo")
    (out / "lr_find").mkdir(exist_ok=True)
    dev = pick_device("auto")  # the GPU when there is one, as `imageclf train` takes it
    found = run_lr_find(build_learner(dcfg, tcfg, RunContext(dev)), tcfg, out / "lr_find")
    console.print("lr_find: " + ", ".join(f"{k} {v:.2e}" for k, v in found.suggestions.items())
                  + f"; plot: {out / 'lr_find' / 'lr_find.png'}")
    console.print(f"training {DEMO_ARCH} from scratch at {DEMO_LR:.0e}, {DEMO_SIZE} px, the "
                  "rate measured for this net and task")
    # the last demo's run is replaced
    res = train_run(dcfg, tcfg, RunContext(dev, cbs=[PrintEpochs(console)]), overwrite=True)
    model = res.out / "model"
    pred = Predictor(model)
    interp = evaluate(pred, data)
    console.print(f"evaluate {model}: valid accuracy {interp.accuracy():.3f} on "
                  f"{len(interp.targets)} images ({res.metrics.precision} on "
                  f"{res.metrics.device})")
    chosen = calibrate(pred, data, ood=none / "valid")
    write_calibration(model, chosen)
    build_report(res.out)
    fig = chosen.ood["scores"][chosen.score]
    console.print(f'"none of these": {chosen.score} below {chosen.threshold:.4g} keeps '
                  f"{chosen.keep:.0%} of the known images and answers none for "
                  f"{1 - fig['fpr']:.0%} of {chosen.ood['n']} drawn images of no shape")
    # fresh images of no shape, never seen in calibration: the first answered none is shown
    rng = np.random.default_rng(12345)
    fresh = [none / f"example-{i}.jpg" for i in range(8)]
    for path in fresh:
        draw_negative(rng).save(path, quality=90)
    answers = Predictor(model).predict(fresh)  # loaded again: with the rule just stored
    refused = [p for p in answers if p.labels == ["none"]]
    console.print(f"{len(refused)} of {len(fresh)} fresh images of no shape answered none")
    for p in refused[:1]:
        console.print(f"predict {p.path}: none (top: {p.top[0][0]} {p.top[0][1]:.1%}; "
                      f"{p.none_rule} {p.none_score:.3g} < {p.none_threshold:.3g})")
    console.print(f"run directory: {res.out}; report: {res.out / 'report.html'}; "
                  f"model: {model}")
    console.print(f"next: imageclf serve {res.out}   (or: imageclf predict {model} "
                  f"{data / 'valid'} --top-k 2)")
