"""Data health: `audit` (find wrong labels, duplicates, strays) and `review` (decide on them
in the browser, into fixes.csv)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from imageclf.cli import options as o
from imageclf.cli.options import console, err
from imageclf.core.commands import AuditSettings, ServeConfig
from imageclf.core.config import DataConfig, TrainConfig
from imageclf.core.errors import ConfigError

# the audit's own training: the fastest recipe (docs/benchmarks.md, time to accuracy)
AUDIT_DEFAULTS = {"size": 64, "presize": 112, "epochs": 2, "lr": "3e-3", "pretrained": "none"}


@o.settings_command(exclude=("out", "tensorboard", "metric", "sizes", "negatives",
                             "negatives_ratio", "synthetic", "valid_size"),
                    defaults=AUDIT_DEFAULTS)
def audit(data: DataConfig, train: TrainConfig, settings: AuditSettings,
          output: Annotated[Path, typer.Option(
              "-o", "--output", help="The audit's folder (issues.csv, summary.json); with "
              "--apply, the labels CSV to write.")] = Path("audit"),
          apply: Annotated[Path | None, typer.Option(
              "--apply", help="Write DATA's labels with this fixes file applied, as a CSV "
              "(filename,label,is_valid) at -o, and stop.")] = None,
          device: o.Device = "auto", as_json: o.Json = False) -> None:
    """Find the images that need a person's look: likely wrong labels (out-of-sample
    probabilities and confident learning), duplicates within a split and across train and
    valid, and strays that look like no class. Writes AUDIT/issues.csv, issues.parquet and
    summary.json; `imageclf review AUDIT` shows them.

    The probabilities come from a cross-validated linear head on a body's features (--model,
    --pretrained, or a model the audit trains on the given labels with the fastest recipe),
    or with --folds K from K models each judging the fold it did not see."""
    if apply is not None:
        _apply(data, apply, output)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.progress import TimeRemainingColumn as Eta

    from imageclf.core.distributed import from_env
    from imageclf.jobs.audit import audit as run_audit
    from imageclf.learn.callbacks import PrintEpochs

    o.check_device(device)
    _, dev = from_env(device)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Eta(),
                  console=err, transient=True) as bar:
        tasks: dict[str, int] = {}

        def progress(step: str, done: int, total: int | None) -> None:
            if step not in tasks:
                tasks[step] = bar.add_task(step, total=total)
            bar.update(tasks[step], completed=done, total=total)

        res = run_audit(data, train, settings, output, device=dev,
                        cbs=[PrintEpochs(err if as_json else console)], progress=progress)
    s = res.summary
    if as_json:
        print(json.dumps(s.to_json(), indent=2))
        return
    console.print(f"{output}: {s.sentence()}")
    console.print(f"  probabilities from {s.features}; {s.seconds:.0f} s")
    table = Table("kind", "image", "score", "given", "suggested / copy of")
    for kind in ("label", "leak", "duplicate", "stray"):
        for r in [r for r in res.issues if r.kind == kind][:5]:
            table.add_row(kind, r.image, f"{r.score:.3f}", r.given,
                          r.suggested or r.duplicate_of)
    if res.issues:
        console.print(table)
    for b in s.unreadable[:10]:
        console.print(f"  unreadable: {b.path}: {b.reason}", style="yellow")
    console.print(f"review them: imageclf review {output}")


def _apply(data: DataConfig, fixes: Path, output: Path) -> None:
    import dataclasses

    from imageclf.data.fixes import key_root, write_labels
    from imageclf.data.sources import resolve

    if data.source.fixes is not None:
        raise ConfigError("--apply names the fixes file to apply; leave out --fixes")
    if output.suffix.lower() != ".csv":
        raise ConfigError(f"--apply writes a CSV: give -o labels.csv (got {output})")
    # replace() checks the settings again, which records the file's hash
    src = dataclasses.replace(data.source, fixes=str(fixes), fixes_sha256=None)
    items = resolve(src, data.seed)
    write_labels(output, items, key_root(src.path))
    console.print(f"{output}: {len(items)} images; {items.fixed_by.sentence()}. Train on it "
                  f"with: imageclf train {src.path} --csv {output}")


@o.settings_command(only=("host", "port", "token", "max_upload_mb"), data_required=False)
def review(folder: Annotated[Path, typer.Argument(help="An audit's folder (imageclf audit "
                                                   "-o).", metavar="AUDIT")],
           config: ServeConfig, host: o.Host = "127.0.0.1", port: o.Port = 8001) -> None:
    """A page to go through an audit's findings, worst first: keep, relabel or exclude each
    image. Every decision is saved at once to AUDIT/fixes.csv; train on them with --fixes
    AUDIT/fixes.csv (the image files are never moved or deleted)."""
    import dataclasses
    import os

    import uvicorn

    from imageclf.cli.serve_cmd import check_port
    from imageclf.serve.review import create_review_app

    cfg = dataclasses.replace(config, token=config.token or os.environ.get("IMAGECLF_TOKEN")
                              or None)
    check_port(host, port)
    app = create_review_app(folder, cfg)
    console.print(f"review {folder} at http://{host}:{port}/ ; decisions go to "
                  f"{folder / 'fixes.csv'}")
    uvicorn.run(app, host=host, port=port, log_level="warning")
