"""The Imagenette leaderboard's own setting: random initialisation, 5 epochs, final size 128,
accuracy on the whole validation set, the mean over seeds (the leaderboard: 85.77% for
128 px and 5 epochs, a mean of 5 runs on a GPU).

    python bench/bench_leaderboard.py --label NAME --recipe "ARGS" --seeds 0,1 [--data DIR]

Each seed is a whole `imageclf train` process from a cold cache, timed, with its accuracy
after every epoch (read as it happens); the final model is then evaluated without and with
test-time augmentation (`evaluate --tta`, untimed). Runs accumulate in
bench/results/leaderboard.json under their label and seed, each with the machine and commit
it ran on; a second call with other seeds or labels adds to it. --adopt takes one row of a
`bench_time_to_accuracy.py` results file (the same process, timing and evaluation) as a
seed's run. --widen 4:3 runs on a copy of the data stretched back to 4:3 (the shared copy
squeezed every photo square; the leaderboard's own crops a square from each photo).
--export-presized DIR --presize N writes a small copy of the (widened) data for a machine
the whole copy cannot travel to, e.g. a lent GPU (common.presized_copy: each image as the
presize cache keeps it, one JPEG encode); --data DIR on such a copy runs as on the copy it
was made from, the runs' rows saying which data they saw.
Regenerates docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from bench_time_to_accuracy import curve, evaluate_views
from common import (
    FASTAI_VERSION,
    RESULTS,
    cpu_name,
    fastai_python,
    imagenette,
    machine,
    presized_copy,
    presized_source,
    save,
    split_env,
    widened,
)
from report import render

NAME = "leaderboard"


def one_run(data: Path, args: str, seed: int, tmp: str) -> dict:
    env, words = split_env(args)
    out = Path(tmp) / f"run-{seed}"
    row = curve([sys.executable, "-m", "imageclf", "train", str(data),
                 "--no-synthetic", "--pretrained", "none",
                 *words, "--seed", str(seed), "--cache-dir", f"{tmp}/cache-{seed}",
                 "--out", str(out)], env)
    row |= evaluate_views(out / "model", data,
                          [("final_accuracy", []), ("tta_accuracy", ["--tta"])])
    row["train_args"] = json.loads((out / "config.json").read_text())
    return row


FASTAI_ARGS = "bench/fastai_mininet.py: the record's notebook in fastai {version}, fp32, bs 32"


def one_fastai_run(data: Path, seed: int) -> dict:
    """The record's own code (fastai_mininet.py, in fastai's venv): its accuracy after each
    epoch; no TTA row (fastai's TTA is another view than `evaluate --tta`)."""
    row = curve([str(fastai_python()), str(Path(__file__).parent / "fastai_mininet.py"),
                 str(data), str(seed)])
    return row | {"final_accuracy": row["points"][-1]["valid_accuracy"], "tta_accuracy": None}


def check_presize(args: str, source: dict) -> None:
    """A presized copy is the data only for a recipe of the same presize."""
    words = split_env(args)[1]
    given = words[words.index("--presize") + 1] if "--presize" in words else None
    if given is None or int(given) != source["presize"]:
        raise SystemExit(f"this data is presized to {source['presize']} px; the recipe must"
                         f" say --presize {source['presize']} (it says {given})")


def summarise(runs: dict[str, dict]) -> dict:
    acc = [r["final_accuracy"] for r in runs.values()]
    tta = [r["tta_accuracy"] for r in runs.values() if r["tta_accuracy"] is not None]
    return {"seeds": sorted(runs, key=int), "mean_accuracy": round(statistics.mean(acc), 4),
            "mean_tta_accuracy": round(statistics.mean(tta), 4) if tta else None,
            "median_wall_seconds": statistics.median(r["wall_seconds"] for r in runs.values())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data")
    ap.add_argument("--label", required=True, help="The recipe's row name.")
    ap.add_argument("--recipe", help="imageclf train's words (leading NAME=VALUE words set "
                    "environment variables).")
    ap.add_argument("--seeds", default="0", help="Comma-separated seeds to run.")
    ap.add_argument("--adopt", help="FILE:ROW:SEED: a bench_time_to_accuracy results row.")
    ap.add_argument("--note", help="A sentence for the docs section.")
    ap.add_argument("--widen", metavar="W:H", help="Train and validate on a copy with every "
                    "image stretched back to this aspect (the shared copy is squeezed square).")
    ap.add_argument("--export-presized", metavar="DIR", help="Write the presized copy of the "
                    "(widened) data to DIR and stop; needs --presize.")
    ap.add_argument("--presize", type=int, help="The presize of --export-presized.")
    ap.add_argument("--quality", type=int, default=90, help="Its JPEG quality.")
    ap.add_argument("--tool", choices=("imageclf", "fastai"), default="imageclf",
                    help="fastai: the record's own code (fastai_mininet.py) instead of a"
                    " recipe of imageclf's; its label needs no --recipe.")
    a = ap.parse_args()
    if a.tool == "fastai":
        a.recipe = FASTAI_ARGS.format(version=FASTAI_VERSION)
    if a.export_presized:
        if not a.presize:
            raise SystemExit("--export-presized needs --presize (the recipe's)")
        data = imagenette(a.data)
        data = widened(data, a.widen) if a.widen else data
        out = presized_copy(data, a.presize, Path(a.export_presized), a.quality, a.widen)
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        print(f"{out}: {size / 2**20:.1f} MiB")
        return
    data = imagenette(a.data) if not a.adopt else None
    source = presized_source(data) if data else None
    if source:
        if a.widen and a.widen != source["widen"]:
            raise SystemExit(f"{data} was made from the copy widened to {source['widen']}")
        a.widen = source["widen"]
    path = RESULTS / f"{NAME}.json"
    result = json.loads(path.read_text()) if path.exists() else {"recipes": {}}
    entry = result["recipes"].setdefault(a.label, {"args": a.recipe, "runs": {}})
    if a.widen:
        entry.setdefault("widen", a.widen)
    if entry.get("widen") != a.widen and not a.adopt:
        raise SystemExit(f"{a.label} holds runs with --widen {entry.get('widen')}; "
                         "give this data a label of its own")
    if a.recipe and entry["args"] and a.recipe != entry["args"]:
        raise SystemExit(f"{a.label} already holds runs of other args: {entry['args']}\n"
                         "give this recipe a label of its own")
    if a.adopt:
        file, row_name, seed = a.adopt.rsplit(":", 2)
        src = json.loads(Path(file).read_text())
        row = src["rows"][row_name]
        entry["args"] = entry["args"] or row["args"]
        entry["runs"][seed] = row | {"machine": src["machine"], "adopted_from": file}
    elif not a.recipe and not entry["args"]:
        raise SystemExit("--recipe is needed for a new label")
    else:
        seen = (f"the presized copy ({source['presize']} px slots as the cache keeps them,"
                f" JPEG q{source['quality']})") if source else None
        if entry["runs"] and entry.get("data") != seen:
            raise SystemExit(f"{a.label} holds runs on {entry.get('data') or 'the full copy'};"
                             " give this data a label of its own")
        if source:
            check_presize(entry["args"], source)
            entry["data"] = seen
        elif a.widen:
            data = widened(data, a.widen)
        for seed in (int(s) for s in a.seeds.split(",")):
            print(f"{a.label} seed {seed}: {entry['args']}", flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                row = (one_fastai_run(data, seed) if a.tool == "fastai"
                       else one_run(data, entry["args"], seed, tmp))
            entry["runs"][str(seed)] = row | {"machine": machine()}
            entry["summary"] = summarise(entry["runs"])
            save(NAME, result)  # after each seed: a long run keeps what it measured
    entry["summary"] = summarise(entry["runs"])
    if a.note:
        entry["note"] = a.note
    result["machine"] = machine()
    print(save(NAME, result))
    print(json.dumps(entry["summary"], indent=1))
    render()


# --- its part of docs/benchmarks.md --------------------------------------------------------
def section(r: dict) -> str:
    lines = [
        "## Imagenette leaderboard: 5 epochs at 128 px from scratch, the mean of seeds",
        "", "`bench/bench_leaderboard.py`: Imagenette (9,469 training, 3,925 validation"
        " images), each seed a whole `imageclf train` process from a cold cache, accuracy on"
        " the whole validation set after the last epoch; TTA is `evaluate --tta` on the"
        " final model, untimed. The leaderboard's best for this setting is 85.77%, the mean"
        " of 5 runs on a GPU (fastai's Imagenette README). Means over the seeds run; the"
        " wall is the median of whole processes, cache build included.", "",
        "| recipe | args | seeds | valid accuracy (mean) | per seed | with TTA (mean) |"
        " wall (median) | measured on | accuracy per epoch (s), first seed |",
        "|---|---|---|---:|---|---:|---:|---|---|"]
    for label, e in r["recipes"].items():
        s, runs = e["summary"], e["runs"]
        first = runs[s["seeds"][0]]
        per = ", ".join(f"{100 * runs[k]['final_accuracy']:.1f}%" for k in s["seeds"])
        where = sorted({(f"{x['machine']['gpu']} with " if x["machine"].get("gpu") else "")
                        + f"{cpu_name(x['machine'])} ({x['machine'].get('isa', '?')},"
                        f" {x['machine']['cores']} cores),"
                        f" {x['machine']['commit']}, {x['machine']['date']}"
                        for x in runs.values()})
        pts = ", ".join(f"{100 * p['valid_accuracy']:.1f}% ({p['seconds']:.0f})"
                        for p in first["points"])
        tta = s["mean_tta_accuracy"]
        tta = "–" if tta is None else f"{100 * tta:.1f}%"  # no TTA row: another tool's run
        data = f" on the copy widened to {e['widen']}" if e.get("widen") else ""
        data += f", {e['data']}" if e.get("data") else ""
        lines.append(f"| {label} | `{e['args']}`{data} | {', '.join(s['seeds'])} |"
                     f" {100 * s['mean_accuracy']:.1f}% | {per} |"
                     f" {tta} | {s['median_wall_seconds']:.0f} s |"
                     f" {'; '.join(where)} | {pts} |")
    notes = [f"{label}: {e['note']}" for label, e in r["recipes"].items() if e.get("note")]
    return "\n".join([*lines, "", *notes, "", ""])


def headline(r: dict) -> str:
    """The row of docs/benchmarks.md's summary table."""
    return "5 epochs at 128 px from scratch, mean of seeds: " + ", ".join(
        f"{k} {100 * v['summary']['mean_accuracy']:.1f}% "
        f"({len(v['summary']['seeds'])} seed{'s' * (len(v['summary']['seeds']) > 1)})"
        for k, v in r["recipes"].items())


if __name__ == "__main__":
    main()
