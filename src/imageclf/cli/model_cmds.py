"""Commands that use a trained model: predict, evaluate, calibrate, export, push, report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from imageclf.cli import options as o
from imageclf.cli.options import console, err
from imageclf.cli.printer import print_open_set, score_table
from imageclf.core.commands import BatchOptions, CalibrateSettings, PredictOptions
from imageclf.core.config import DataSource
from imageclf.core.errors import ConfigError


def _expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given; folders walked for image files (sorted)."""
    from imageclf.data.sources import list_images

    out: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            out += list_images(p)
        else:
            out.append(p)
    return out


@o.settings_command
def predict(model: o.ModelArg,
            inputs: Annotated[list[str], typer.Argument(
                help="Image files or folders; with -o one source (a folder, CSV, store, "
                "a store's URL, Parquet files).", metavar="INPUTS")],
            opts: PredictOptions,
            batch: BatchOptions,
            top_k: Annotated[int, typer.Option("--top-k", help="Labels listed per image.")] = 3,
            min_confidence: o.MinConfidence = None,
            output: Annotated[Path | None, typer.Option(
                "-o", "--output", help="Batch mode: predict every image of one source (a "
                "folder, CSV, store or Parquet files) into Parquet parts in this folder; "
                "rerun to resume, torchrun to share it (docs/batch-predict.md).")] = None,
            as_json: o.Json = False) -> None:
    """Top-k labels per image; unreadable files are reported per file, never a crash.
    With -o OUT, a whole source into Parquet (batch mode)."""
    from imageclf.model.predict import Predictor

    if output is not None:
        if len(inputs) != 1:
            raise ConfigError(f"-o predicts one source (a folder, CSV, store or Parquet "
                              f"files); got {len(inputs)} inputs")
        from imageclf.cli.batch_cmd import predict_to_parquet

        predict_to_parquet(model, inputs[0], output, (opts, batch),
                           top_k=top_k, min_confidence=min_confidence, as_json=as_json)
        return
    pred = Predictor(model, min_confidence=min_confidence, precision=opts.precision,
                     size=opts.size)
    paths = _expand_inputs(inputs)
    if not paths:
        raise ConfigError("no image files found in the given inputs")
    results = pred.predict(paths, top_k=top_k, bs=opts.bs, tta=opts.tta)
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


@o.settings_command(exclude=("valid_pct", "multi_label"))
def evaluate(model: o.ModelArg, data: DataSource, opts: PredictOptions,
             output: Annotated[Path | None, typer.Option(
                 "-o", "--output", help="Folder for confusion_matrix.png, top_losses.png "
                 "(and open_set.png with --ood)."
             )] = None,
             ood: o.Ood = None, keep: o.Keep = 0.95,
             as_json: o.Json = False) -> None:
    """Accuracy, per-class table and most-confused pairs on DATA's validation split (or every
    labelled image when DATA has no split); with --ood, the open-set figures on unknowns."""
    from imageclf.jobs.evaluate import evaluate as run_evaluate
    from imageclf.jobs.evaluate import evaluate_open_set
    from imageclf.model.predict import Predictor

    pred = Predictor(model, precision=opts.precision, size=opts.size)
    open_set = None
    if ood is not None:
        interp, open_set = evaluate_open_set(pred, data, ood, keep=keep, tta=opts.tta,
                                             bs=opts.bs, out_dir=output)
    else:
        interp = run_evaluate(pred, data, tta=opts.tta, bs=opts.bs, out_dir=output)
    s = interp.summary()
    if open_set is not None:
        s["open_set"] = open_set
    if as_json:
        print(json.dumps(s))
        return
    console.print(f"{s['n']} images; accuracy {s['accuracy']:.4f}; loss {s['loss']:.4f}"
                  + ("  (TTA)" if opts.tta else ""))
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
    if open_set is not None:
        print_open_set(console, open_set)
    if output is not None:
        console.print(f"pictures in {output}")


@o.settings_command(exclude=("valid_pct", "multi_label", "tta", "precision", "size"))
def calibrate(model: o.ModelArg, data: DataSource, settings: CalibrateSettings,
              opts: PredictOptions, ood: o.Ood = None,
              dry_run: Annotated[bool, typer.Option("--dry-run",
                                                    help="Print, do not store.")] = False,
              as_json: o.Json = False) -> None:
    """Choose the "none of these" rule on DATA (thresholds from its validation split, knn's
    feature bank from its training split) and store it in the model folder. Without --ood,
    a model trained with --negatives is measured on their held-out part."""
    from imageclf.jobs.evaluate import calibrate as run_calibrate
    from imageclf.jobs.evaluate import write_calibration
    from imageclf.model.predict import Predictor

    keep = settings.keep
    chosen = run_calibrate(Predictor(model), data, keep, score=settings.score, ood=ood,
                           bank_rows=settings.bank_rows, k=settings.k, bs=opts.bs)
    report = None
    if not dry_run:
        write_calibration(model, chosen)
        if (model.parent / "metrics.json").exists():  # a run's model: its report shows it
            from imageclf.run.report import build_report

            report = build_report(model.parent)
    if as_json:
        print(json.dumps(chosen.to_dict()))
        return
    far = chosen.far
    far_words = (f"{far['n']} drawn images of no kind ({', '.join(far['families'])}; no "
                 "training draws them)") if far else ""
    if chosen.ood is not None:
        where = (f"the {chosen.ood['folder']} (no --ood given)" if chosen.ood["negatives"]
                 else str(ood))
        console.print(f"on {chosen.ood['n']} unknown images from {where}"
                      + (f", and far: on {far_words}" if far else "") + ":")
        console.print(score_table(chosen.ood["scores"], keep, chosen.score,
                                  far["scores"] if far else None))
    elif far:
        console.print(f"far: on {far_words}:")
        console.print(score_table(far["scores"], keep, chosen.score))
    if chosen.score is not None:
        console.print(f"{chosen.score} below {chosen.threshold:.4g} answers none: keeps "
                      f"{keep:.0%} of {chosen.n} validation images")
    if chosen.thresholds is not None:
        console.print("per-class thresholds: " + ", ".join(f"{t:.3f}"
                                                          for t in chosen.thresholds))
    console.print("not stored (--dry-run)" if dry_run else f"stored in {model}")
    if report is not None:
        console.print(f"updated {report}")


License = Annotated[str | None, typer.Option(
    "--license", help="The card's license, a Hub license id such as apache-2.0 (default: "
    "none stated).")]
Dataset = Annotated[list[str] | None, typer.Option(
    "--dataset", help="A Hub data set id the card names as the training data (repeatable).")]
CardName = Annotated[str | None, typer.Option(
    "--name", help="The card's title (default: the run's folder name).")]


def export(model: o.ModelArg,
           onnx: Annotated[bool, typer.Option("--onnx", help="Write an ONNX file.")] = False,
           timm: Annotated[bool, typer.Option(
               "--timm", help="Write a folder timm and the Hub load: config.json, "
               "model.safetensors in timm's layout, model.json and the card README.md."
           )] = False,
           output: Annotated[Path | None, typer.Option(
               "-o", "--output", help="The ONNX file (default MODEL/model.onnx) or, with "
               "--timm, the folder (required).")] = None,
           license: License = None, dataset: Dataset = None, name: CardName = None) -> None:
    """Export a model/ folder: ONNX (normalisation inside, dynamic batch, probabilities out)
    or a timm / Hub folder with its model card."""
    if onnx == timm:
        raise ConfigError("choose one export format: --onnx or --timm")
    if timm:
        if output is None:
            raise ConfigError("--timm needs -o DIR, the folder to write")
        from imageclf.jobs.share import hub_folder

        out = hub_folder(model, output, name=name, license=license,
                         datasets=tuple(dataset or ()))
        console.print(f"wrote {out} (timm.create_model('local-dir:{out}', pretrained=True))")
        return
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"--onnx needs the ONNX exporter ({e.name} is not installed): "
                          "pip install 'imageclf[onnx]'") from e
    from imageclf.model.export import export_onnx

    console.print(f"wrote {export_onnx(model, output)}")


def push(model: o.ModelArg,
         repo_id: Annotated[str, typer.Argument(help="The Hub repository, as user/name.",
                                                    metavar="REPO_ID")],
         private: Annotated[bool, typer.Option("--private", help="Create it private.")
                            ] = False,
         token: Annotated[str | None, typer.Option(
             "--token", help="A Hub token (default: $HF_TOKEN or the saved login).")] = None,
         license: License = None, dataset: Dataset = None) -> None:
    """Upload MODEL to the Hugging Face Hub as a timm model with its card (what
    `export --timm` writes)."""
    from imageclf.jobs.share import push as run_push

    url = run_push(model, repo_id, private=private, token=token, license=license,
                   datasets=tuple(dataset or ()))
    console.print(f"uploaded: {url}")


def report(run_dir: Annotated[Path, typer.Argument(help="A run directory.",
                                                                   metavar="RUN_DIR")]) -> None:
    """Rebuild RUN_DIR/report.html from the run's files."""
    from imageclf.run.report import build_report

    console.print(f"wrote {build_report(run_dir)}")
