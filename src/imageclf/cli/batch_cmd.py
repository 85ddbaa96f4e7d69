"""`imageclf predict MODEL SOURCE -o OUT`: batch mode's progress bar and summary (the work
is jobs/batch_predict.py's). Under torchrun each process predicts its share; rank 0 shows
the bar (its own share) and writes the manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path

from imageclf.cli.options import console, err
from imageclf.core.commands import BatchOptions, PredictOptions


def _threads(local_world: int) -> None:
    """CPU processes on one machine split its cores (torchrun --nproc-per-node N)."""
    from imageclf.core.hardware import torch_threads

    if local_world > 1:
        torch_threads(max(1, (os.cpu_count() or 1) // local_world))


def predict_to_parquet(model: Path, source: str, output: Path,
                       settings: tuple[PredictOptions, BatchOptions], *, top_k: int,
                       min_confidence: float | None, as_json: bool) -> None:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from imageclf.core.distributed import from_env, shutdown
    from imageclf.jobs.batch_predict import BatchProgress, predict_batch
    from imageclf.model.predict import Predictor

    opts, batch = settings
    dist, device = from_env("auto")
    if device.type == "cpu":
        _threads(int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    pred = Predictor(model, device=device, precision=opts.precision,
                     min_confidence=min_confidence, size=opts.size)
    with Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=err,
                  transient=True, disable=not dist.is_main) as bar:
        task = bar.add_task("predict", total=None, rate="")

        def progress(p: BatchProgress) -> None:
            bar.update(task, completed=p.done, total=p.total, rate=f"{p.rate():.1f} images/s")

        m, state = predict_batch(pred, source, output, opts, batch, top_k, dist, progress)
    shutdown(wait=True)
    if m is None:
        return
    if as_json:
        print(json.dumps(m.to_json() | {"images_per_s": round(state.rate(), 2)}, indent=2))
        return
    resumed = f", {state.skipped_parts} part(s) kept from before" if state.skipped_parts else ""
    console.print(f"{output}: {m.predicted} images predicted, {m.unreadable} unreadable, in "
                  f"{len(m.parts)} Parquet part(s){resumed}; {state.rate():.1f} images/s "
                  f"on this process. Read it with pandas.read_parquet('{output}') or duckdb.")
    for b in m.unreadable_files[:10]:
        console.print(f"  {b.path}: {b.reason}", style="yellow")
