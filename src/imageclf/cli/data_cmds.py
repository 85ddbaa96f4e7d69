"""Commands about the data: verify, show-batch, bench loader."""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from imageclf.cli import options as o
from imageclf.cli.options import console, err
from imageclf.core.commands import PackSettings
from imageclf.core.config import DataConfig, DataSource
from imageclf.core.errors import ConfigError

if TYPE_CHECKING:
    from imageclf.data.store import StoreManifest

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
    if r["left_out_by_pack"]:
        console.print(f"{len(r['left_out_by_pack'])} file(s) left out when the store was "
                      "packed:", style="yellow")
        for b in r["left_out_by_pack"]:
            console.print(f"  {b['path']}: {b['reason']}")
    if not report.full:
        console.print("headers only (--quick); without it every image is decoded, which also "
                      "finds truncated or corrupt image data")


@o.settings_command(only=("source", "seed"))
def verify(data: DataConfig, as_json: o.Json = False,
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
    from imageclf.data.sources import resolve
    from imageclf.data.verify import left_out_by_pack, verify_items

    if quick and full:
        raise ConfigError("--quick and --full contradict each other: choose one")
    items = resolve(data.source, data.seed)
    show = len(items) >= PROGRESS_FROM
    with Progress(TextColumn("verify"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=err, transient=True, disable=not show) as bar:
        task = bar.add_task("verify", total=len(items))
        report = verify_items(items, full=not quick,
                              progress=lambda n: bar.advance(task, n))
    report = dataclasses.replace(report, left_out=left_out_by_pack(data.source.path))
    fixed = items.fixed_by
    if as_json:
        print(json.dumps(report.to_dict() | ({"fixes": dataclasses.asdict(fixed)} if fixed
                                             else {}), indent=2))
    else:
        print_verify(Path(data.source.path), report)
        if fixed is not None:
            console.print(fixed.sentence())


@o.settings_command(exclude=("decode", "decode_workers", "sampler", "valid_size"),
                    defaults={"bs": 16})
def show_batch(data: DataConfig,
               output: Annotated[Path, typer.Option("-o", "--output",
                                                    help="The PNG to write.")
                                 ] = Path("batch.png"),
               valid: Annotated[bool, typer.Option("--valid",
                                                   help="Show validation images.")] = False,
               ) -> None:
    """Save a PNG grid of augmented training images with their labels."""
    from imageclf.data.dataloaders import DataLoaders
    from imageclf.data.show import show_batch as draw

    dls = DataLoaders.from_config(data)
    draw(dls, output, n=data.bs, train=not valid)
    console.print(f"wrote {output}")


@o.settings_command(exclude=("multi_label", "image_col", "label_col", "split_col", "sampler",
                             "valid_size", "aug"), defaults={"size": 128, "presize": 160})
def bench_loader(data: DataConfig, epochs: Annotated[int, typer.Option(
                     "--epochs", help="Passes over the training split.")] = 3,
                 device: o.Device = "auto", as_json: o.Json = False) -> None:
    """Iterate the training loader E times with full augmentation; images/s per epoch.

    The first epoch is cold (decodes into the cache) unless the cache already holds the
    data; pass a fresh --cache-dir for a cold start.
    """
    import torch

    from imageclf.core.distributed import from_env
    from imageclf.data.dataloaders import DataLoaders

    o.check_device(device)
    _, dev = from_env(device)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = dataclasses.replace(data, cache_dir=data.cache_dir or tmp)
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
                         "cache": "cold" if epoch == 0 and dls.train.source.stats.decoded
                         else "warm"})
        dls.train.source.wait()
    result = {"tool": "imageclf", "size": data.size, "presize": data.presize, "bs": data.bs,
              "epochs": rows, "device": str(dev), "decode": data.decode,
              "decoded": dls.train.source.stats.decoded}
    if as_json:
        print(json.dumps(result))
        return
    for r in rows:
        console.print(f"epoch {r['epoch']} ({r['cache']}): {r['images']} images in "
                      f"{r['seconds']:.2f} s = {r['img_per_s']:.0f} img/s")


@o.settings_command
def pack(source: DataSource, settings: PackSettings,
         out: Annotated[Path, typer.Option("-o", "--out", help="The store's folder.")],
         overwrite: Annotated[bool, typer.Option(
             "--overwrite", help="Replace a store of other data in --out.")] = False,
         as_json: o.Json = False) -> None:
    """Presize every image once and write a store: JPEGs in WebDataset tar shards, an
    index and a manifest (docs/data-at-scale.md). Unreadable files are listed and left
    out; a pack stopped at any point continues when run again."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from imageclf.data.pack import pack as run_pack

    t0 = time.perf_counter()
    with Progress(TextColumn("pack"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=err, transient=True) as bar:
        task = bar.add_task("pack", total=None)
        m = run_pack(source, out, settings,
                     progress=lambda n, total: bar.update(task, completed=n, total=total),
                     overwrite=overwrite)
    if as_json:
        print(json.dumps(m.to_json() | {"seconds": round(time.perf_counter() - t0, 2)},
                         indent=2))
        return
    print_store(out, m)


def print_store(out: Path, m: StoreManifest) -> None:
    """What `pack` wrote: counts, shards, size per image, and the files left out."""
    from imageclf.core.diskspace import human

    size = sum(sh.bytes for sh in m.shards)
    n = sum(m.counts.values())
    console.print(f"{out}: {n} images ({m.counts['train']} train, {m.counts['valid']} valid) "
                  f"in {len(m.shards)} shard(s), {human(size)}, "
                  f"{human(size / max(n, 1))} an image at presize {m.presize}, "
                  f"JPEG quality {m.quality} {m.subsampling}")
    if m.psnr is not None:
        verdict = "reaches" if m.psnr["median"] >= m.psnr["target"] else "falls short of"
        console.print(f"--quality auto chose {m.quality} {m.subsampling}: median PSNR "
                      f"{m.psnr['median']:.1f} dB (10th percentile {m.psnr['p10']:.1f}) on a "
                      f"sample of {m.psnr['sample']:g} images, which {verdict} the target "
                      f"{m.psnr['target']:g} dB")
    if m.skipped:
        console.print(f"{len(m.skipped)} unreadable file(s), left out:", style="yellow")
        for b in m.skipped:
            console.print(f"  {b.path}: {b.reason}")
