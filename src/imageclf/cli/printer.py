"""What the CLI prints beyond the training progress (callbacks.PrintEpochs): the open-set
tables of evaluate and calibrate."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def score_table(figures: dict, keep: float, chosen: str | None = None) -> Table:
    """AUROC and FPR per open-set score, the chosen one marked."""
    table = Table()
    for c in ("score", "AUROC", f"FPR at {keep:.0%} kept"):
        table.add_column(c, justify="left" if c == "score" else "right")
    for name, f in figures.items():
        mark = " (chosen)" if name == chosen else ""
        table.add_row(name + mark, f"{f['auroc']:.4f}", f"{f['fpr']:.4f}")
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
