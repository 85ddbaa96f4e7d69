"""What the CLI prints beyond the training progress (callbacks.PrintEpochs): the open-set
tables of evaluate and calibrate."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def score_table(figures: dict | None, keep: float, chosen: str | None = None,
                far: dict | None = None) -> Table:
    """AUROC and FPR per open-set score, the chosen one marked: on the unknowns
    (`figures`), and with `far` on drawn images of no kind beside them."""
    table = Table()
    sides = [(w, f) for w, f in (("near " if far else "", figures), ("far ", far)) if f]
    columns = ["score"] + [c for w, _ in sides for c in (f"{w}AUROC", f"{w}FPR at {keep:.0%} kept")]
    for c in columns:
        table.add_column(c, justify="left" if c == "score" else "right")
    for name in sides[0][1]:
        mark = " (chosen)" if name == chosen else ""
        cells = [v for _, f in sides for v in (
            (f"{f[name]['auroc']:.4f}", f"{f[name]['fpr']:.4f}") if name in f else ("", ""))]
        table.add_row(name + mark, *cells)
    return table


def print_open_set(console: Console, r: dict) -> None:
    """What `evaluate --ood` found."""
    console.print(f"open set: {r['n_known']} known images, {r['n_unknown']} unknown from "
                  f"{r['ood']}")
    console.print(score_table(r["scores"], r["keep"], r["score"]))
    if r["threshold"] is None:
        console.print(f"this model has no none rule ({r['rule']}): every unknown image "
                      "gets a class; run `imageclf calibrate` to give it one")
    else:
        console.print(f"rule {r['rule']} below {r['threshold']:.4g}: "
                      f"{r['unknown_accepted']} of {r['n_unknown']} unknown images got a "
                      f"class; {r['known_answered_none']} of {r['n_known']} known images "
                      "were answered none")
        console.print(r["none_figure"], style="bold")
    if r["unknown_accepted_as"]:
        console.print("unknown images accepted as: " + ", ".join(
            f"{c} {n}" for c, n in r["unknown_accepted_as"].items()))
    if r["skipped_unknown"]:
        console.print(f"{len(r['skipped_unknown'])} unreadable unknown file(s) skipped",
                      style="yellow")
