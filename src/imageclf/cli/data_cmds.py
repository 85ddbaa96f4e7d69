"""Commands about the data: verify, show-batch, bench loader."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from imageclf.cli import options as o
from imageclf.cli.options import console
from imageclf.errors import ConfigError

PROGRESS_FROM = 500  # files: smaller sets are checked before a bar would be read


def print_verify(data: Path, report: object) -> None:
    """The verify table, the class balance, the unreadable files and what was checked."""
    r = report.to_dict()
    table = Table(title=f"{data}: {r['n_usable']} usable of {r['n_items']} files")
    for col, just in (("class", "left"), ("train", "right"), ("valid", "right")):
        table.add_column(col, justify=just)
    for c in r["classes"]:
        table.add_row(c, str(r["counts"]["train"][c]), str(r["counts"]["valid"][c]))
    console.print(table)
    ratios = r["balance"]["ratio"]
    console.print("largest / smallest class: " + ", ".join(
        f"{split} {'-' if v is None else f'{v:g}×'}" for split, v in ratios.items()))
    for w in r["balance"]["warnings"]:
        console.print(f"warning: {w}", style="yellow")
    if r["unreadable"]:
        console.print(f"{len(r['unreadable'])} unreadable file(s), left out:", style="yellow")
        for b in r["unreadable"]:
            console.print(f"  {b['path']}: {b['reason']}")
    else:
        console.print("no unreadable files")
    if not report.full:
        console.print("headers only (--quick); without it every image is decoded, which also "
                      "finds truncated or corrupt image data")


def verify(data: o.DataArg, csv: o.Csv = None, label_regex: o.LabelRegex = None,
           valid_pct: o.ValidPct = 0.2, seed: o.Seed = 0, multi_label: o.MultiLabel = False,
           image_col: o.ImageCol = None, label_col: o.LabelCol = None,
           split_col: o.SplitCol = None, as_json: o.Json = False,
           quick: Annotated[bool, typer.Option(
               "--quick", help="Read only each file's header: much faster on very large "
               "sets, but a truncated or corrupt image passes.")] = False,
           full: Annotated[bool, typer.Option("--full", hidden=True,
                                              help="Decode every image (the default).")
                           ] = False) -> None:
    """Check every file by decoding it as training does (or with --quick its header only);
    print counts per class and split, the class balance, and the unreadable files with the
    reason."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from imageclf.cli.options import err
    from imageclf.data.sources import find_items
    from imageclf.data.verify import verify_items

    if quick and full:
        raise ConfigError("--quick and --full contradict each other: choose one")
    items = find_items(data, csv_file=csv, label_regex=label_regex, valid_pct=valid_pct,
                       seed=seed, multi_label=multi_label, image_col=image_col,
                       label_col=label_col, split_col=split_col)
    show = len(items) >= PROGRESS_FROM
    with Progress(TextColumn("verify"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=err, transient=True, disable=not show) as bar:
        task = bar.add_task("verify", total=len(items))
        report = verify_items(items, full=not quick,
                              progress=lambda n: bar.advance(task, n))
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print_verify(data, report)


def show_batch(data: o.DataArg,
               output: Annotated[Path, typer.Option("-o", "--output")] = Path("batch.png"),
               size: o.Size = 224, presize: o.Presize = 460, bs: o.Bs = 16, csv: o.Csv = None,
               label_regex: o.LabelRegex = None, valid_pct: o.ValidPct = 0.2, seed: o.Seed = 0,
               cache_dir: o.CacheDir = None, resize_method: o.ResizeMethod = "crop",
               multi_label: o.MultiLabel = False, min_scale: o.MinScale = 0.75,
               max_rotate: o.MaxRotate = 10.0, max_zoom: o.MaxZoom = 1.1,
               max_warp: o.MaxWarp = 0.2, max_lighting: o.MaxLighting = 0.2,
               no_flip: o.NoFlip = False, image_col: o.ImageCol = None,
               label_col: o.LabelCol = None, split_col: o.SplitCol = None,
               valid: Annotated[bool, typer.Option("--valid",
                                                   help="Show validation images.")] = False,
               ) -> None:
    """Save a PNG grid of augmented training images with their labels."""
    from imageclf.data.loader import DataLoaders
    from imageclf.plots import show_batch as draw

    dls = DataLoaders.from_config(o.data_config(data, locals()))
    draw(dls, output, n=bs, train=not valid)
    console.print(f"wrote {output}")


def bench_loader(data: o.DataArg, size: o.Size = 128, presize: o.Presize = 160, bs: o.Bs = 64,
                 epochs: Annotated[int, typer.Option("--epochs")] = 3, csv: o.Csv = None,
                 label_regex: o.LabelRegex = None, valid_pct: o.ValidPct = 0.2,
                 seed: o.Seed = 0, cache_dir: o.CacheDir = None,
                 resize_method: o.ResizeMethod = "crop", device: o.Device = "auto",
                 decode: o.Decode = "cpu", decode_workers: o.DecodeWorkers = 0,
                 as_json: o.Json = False) -> None:
    """Iterate the training loader E times with full augmentation; images/s per epoch.

    The first epoch is cold (decodes into the cache) unless the cache already holds the
    data; pass a fresh --cache-dir for a cold start.
    """
    import torch

    from imageclf.data.loader import DataLoaders
    from imageclf.distributed import from_env

    o.check_device(device)
    _, dev = from_env(device)
    opts = locals()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = o.data_config(data, opts, cache_dir=cache_dir or tmp)
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
