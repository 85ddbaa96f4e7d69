"""The demo: draw a shapes data set, then verify → lr_find → train → evaluate → calibrate
"none of these" → predict fresh images of no shape, offline. The command line shows what
it says; the library prints nothing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imageclf.core.config import DataConfig, TrainConfig
from imageclf.core.hardware import pick_device
from imageclf.data.shapes import draw_negative, make_negatives, make_shapes_dataset
from imageclf.data.sources import resolve
from imageclf.data.verify import VerifyReport, verify_items
from imageclf.jobs.evaluate import calibrate, evaluate, write_calibration
from imageclf.learn.callbacks import Callback
from imageclf.model.predict import Predictor
from imageclf.run.report import build_report
from imageclf.run.runs import RunContext, RunResult, build_learner, run_lr_find, train_run

# The demo's recipe, chosen by measurement on 2 cores capped at AVX2 in fp32 (docs/recipes.md,
# "The demo"): timm's resnet10t at half width trains 6x as many images a second as resnet18,
# and at 48 px, batch 16, 10 epochs and 1e-2, without warp or lighting changes (the shapes'
# colours are random already), it reached 97.5, 95.0, 94.0% (seeds 0-2).
DEMO_ARCH, DEMO_SIZE, DEMO_PRESIZE, DEMO_BS, DEMO_LR = "resnet10t_narrow", 48, 64, 16, 1e-2

Say = Callable[[str], None]


@dataclass
class DemoResult:
    """What the demo made: its run, the model folder, the valid accuracy, and how many of
    the fresh images of no shape were answered none."""

    run: RunResult
    model: Path
    accuracy: float
    fresh_none: int
    fresh: int


def demo(out: Path, *, epochs: int = 10, n_train: int = 250, lr_find_steps: int = 100,
         say: Say = lambda _: None,
         verified: Callable[[Path, VerifyReport], None] = lambda *_: None,
         cbs: Sequence[Callback] = ()) -> DemoResult:
    """The whole demo in `out` (data/, none/, lr_find/, run/): `say` receives each line a
    person reads, `verified` the data's verify report, `cbs` the training callbacks."""
    data, none = out / "data", out / "none"
    _draw(data, none, n_train, say)
    verified(data, verify_items(resolve(data), full=True))
    dcfg = DataConfig.build(path=str(data), size=DEMO_SIZE, presize=DEMO_PRESIZE, bs=DEMO_BS,
                            max_warp=0.0, max_lighting=0.0)
    tcfg = TrainConfig.build(arch=DEMO_ARCH, pretrained="none", head="timm", epochs=epochs,
                             lr=str(DEMO_LR), out=str(out / "run"),
                             lr_find_steps=lr_find_steps)
    res = _train(dcfg, tcfg, out, say, cbs)
    model = res.out / "model"
    pred = Predictor(model)
    interp = evaluate(pred, data)
    say(f"evaluate {model}: valid accuracy {interp.accuracy():.3f} on "
        f"{len(interp.targets)} images ({res.metrics.precision} on {res.metrics.device})")
    _calibrate(pred, model, data, none, say)
    build_report(res.out)
    refused, fresh = _fresh(model, none, say)
    say(f"run directory: {res.out}; report: {res.out / 'report.html'}; model: {model}")
    say(f"next: imageclf serve {res.out}   (or: imageclf predict {model} "
        f"{data / 'valid'} --top-k 2)")
    return DemoResult(res, model, interp.accuracy(), refused, fresh)


def _draw(data: Path, none: Path, n_train: int, say: Say) -> None:
    """The shapes and the images of no shape, unless a previous demo drew them."""
    if not (data / "train").is_dir() or not (none / "valid").is_dir():
        say(f"drawing a shapes data set into {data}, and images of none of the shapes "
            f"into {none} ...")
        make_shapes_dataset(data, n_train=n_train, n_valid=max(10, n_train // 5))
        make_negatives(none, n_train=0, n_valid=max(10, n_train // 5))


def _train(dcfg: DataConfig, tcfg: TrainConfig, out: Path, say: Say,
           cbs: Sequence[Callback]) -> RunResult:
    """The lr finder's sweep, shown, then training at the demo's measured rate."""
    # The sweep is shown, but the demo trains at its measured rate: in 100 steps this model
    # from scratch learns nothing yet (with a zero head its loss stays at ln 4 until the
    # blow-up), so the suggestions are noise here (docs/recipes.md, "The demo")
    (out / "lr_find").mkdir(exist_ok=True)
    dev = pick_device("auto")  # the GPU when there is one, as `imageclf train` takes it
    found = run_lr_find(build_learner(dcfg, tcfg, RunContext(dev)), tcfg, out / "lr_find")
    say("lr_find: " + ", ".join(f"{k} {v:.2e}" for k, v in found.suggestions.items())
        + f"; plot: {out / 'lr_find' / 'lr_find.png'}")
    say(f"training {DEMO_ARCH} from scratch at {DEMO_LR:.0e}, {DEMO_SIZE} px, the rate "
        "measured for this net and task")
    # the last demo's run is replaced
    return train_run(dcfg, tcfg, RunContext(dev, cbs=list(cbs)), overwrite=True)


def _calibrate(pred: Predictor, model: Path, data: Path, none: Path, say: Say) -> None:
    """"None of these", calibrated on the drawn images of no shape."""
    chosen = calibrate(pred, data, ood=none / "valid")
    write_calibration(model, chosen)
    fig = chosen.ood["scores"][chosen.score]
    say(f'"none of these": {chosen.score} below {chosen.threshold:.4g} keeps '
        f"{chosen.keep:.0%} of the known images and answers none for "
        f"{1 - fig['fpr']:.0%} of {chosen.ood['n']} drawn images of no shape")


def _fresh(model: Path, none: Path, say: Say) -> tuple[int, int]:
    """Fresh images of no shape, never seen in calibration: how many are answered none (the
    first of them is shown)."""
    rng = np.random.default_rng(12345)
    fresh = [none / f"example-{i}.jpg" for i in range(8)]
    for path in fresh:
        draw_negative(rng).save(path, quality=90)
    answers = Predictor(model).predict(fresh)  # loaded again: with the rule just stored
    refused = [p for p in answers if p.labels == ["none"]]
    say(f"{len(refused)} of {len(fresh)} fresh images of no shape answered none")
    for p in refused[:1]:
        say(f"predict {p.path}: none (top: {p.top[0][0]} {p.top[0][1]:.1%}; "
            f"{p.none_rule} {p.none_score:.3g} < {p.none_threshold:.3g})")
    return len(refused), len(fresh)
