"""report.html: one self-contained page (images embedded) about a run directory."""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from imageclf.core.errors import DamagedFileError
from imageclf.core.fileio import write_text

if TYPE_CHECKING:
    from imageclf.run.rundir import RunMetrics

CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0;font-size:14px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3} td.l,th.l{text-align:left}
img{max-width:100%;border:1px solid #eee} pre{background:#f7f7f7;padding:.8em;overflow:auto}
.kpi{display:inline-block;margin:0 2em .5em 0} .kpi b{font-size:1.4em;display:block}
.warn{color:#a15c00}
"""


def _read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise DamagedFileError(f"{path}: not valid JSON ({e})") from e


def _img(path: Path, alt: str) -> str:
    if not path.exists():
        return f"<p><i>{escape(alt)}: not available</i></p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


# how a column's numbers read best; other floats get 4 significant decimals
FORMATS = {"seconds": "{:.1f}", "img_per_s": "{:,.0f}", "count": "{:d}", "support": "{:d}",
           "lr": "{:.2e}"}


def _fmt(v: object, col: str = "") -> str:
    if isinstance(v, int | float) and not isinstance(v, bool) and col in FORMATS:
        try:
            return escape(FORMATS[col].format(v))
        except ValueError:  # a float where an int was expected
            return escape(f"{v:.1f}")
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.0f}"
    return escape(str(v))


def _table(rows: list[dict], left: tuple[str, ...] = (), cols: list[str] | None = None) -> str:
    if not rows:
        return "<p><i>none</i></p>"
    cols = cols or list(rows[0])
    head = "".join(f'<th class="{"l" if c in left else ""}">{escape(c)}</th>' for c in cols)
    body = "".join("<tr>" + "".join(f'<td class="{"l" if c in left else ""}">'
                                     f"{_fmt(r.get(c), c)}</td>" for c in cols) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


SET_METRICS = ("macro_f1", "balanced_accuracy", "top5_accuracy", "mAP", "exact_match")


def _balance_section(counts: dict | None) -> list[str]:
    """Images per class and split, the largest-to-smallest ratio, and the warnings."""
    if not counts:
        return []
    from imageclf.data.verify import class_balance

    b = class_balance(counts)
    classes = list(next(iter(counts.values())))
    rows = [{"class": c, **{split: counts[split].get(c, 0) for split in counts}}
            for c in classes]
    ratio = ", ".join(f"{split} {'-' if v is None else f'{v:g}×'}"
                      for split, v in b["ratio"].items())
    return (["<h2>Classes</h2>", f"<p>Largest / smallest class: {escape(ratio)}</p>"]
            + [f'<p class="warn">{escape(w)}</p>' for w in b["warnings"]]
            + [_table(rows, ("class",), ["class", *counts])])


def _open_set_section(model: Path) -> list[str]:
    """"None of these": the calibrated rule, and with `calibrate --ood` each score's figures
    on the unknown images and the histogram of known against unknown scores."""
    meta = _read_json(model / "model.json") or {}
    rule = meta.get("open_set")
    if not rule:
        return []
    parts = ["<h2>None of these</h2>",
             f"<p>Rule: <b>{escape(str(rule['score']))}</b> below {rule['threshold']:.4g} "
             f"answers none; it keeps {rule.get('keep', 0):.0%} of the {rule.get('n', '?')} "
             "validation images.</p>"]
    ood, far = rule.get("ood"), rule.get("far")
    if ood or far:
        from imageclf.openset.rule import calibrated_sentence

        sentence = calibrated_sentence(rule)
        parts += [f"<p><b>{escape(sentence)}</b></p>"] if sentence else []
        sides = [(w, f["scores"]) for w, f in (("near", ood), ("far", far)) if f]
        rows = [{"score": k} | {f"{w} {m}": s[k][key] for w, s in sides if k in s
                                for m, key in (("AUROC", "auroc"), ("FPR", "fpr"))}
                for k in sides[0][1]]
        where = [f"near: {ood['n']} images from no known class ({escape(ood['folder'])})"
                 ] if ood else []
        where += [f"far: {far['n']} drawn images of no kind ({', '.join(far['families'])}; "
                  "no training draws them)"] if far else []
        parts += [f"<p>{'; '.join(where)}. FPR at the kept share.</p>",
                  _table(rows, ("score",))]
        parts += [_img(model / "open_set.png", "open-set scores")] if ood else []
    return parts


AUDIT_KINDS = {"label": "likely mislabelled", "leak": "copied across train and valid",
               "duplicate": "duplicated within a split", "stray": "like no class"}


def _data_health_section(m: RunMetrics, config: dict) -> list[str]:
    """What --fixes changed, and the audit beside the fixes file (AUDIT/summary.json)."""
    fixes = m.fixes
    if not fixes:
        return []
    sha = ((config.get("data") or {}).get("source") or {}).get("fixes_sha256") or ""
    parts = ["<h2>Data health</h2>",
             f"<p>Trained with the fixes in <code>{escape(fixes['file'])}</code> (sha256 "
             f"{escape(sha[:12])}): {fixes['relabelled']} relabelled, {fixes['excluded']} "
             f"excluded, {fixes['kept']} kept as given. The image files were not changed.</p>"]
    if fixes.get("missing"):
        parts.append(f"<p class='warn'>{len(fixes['missing'])} image(s) it names are not in "
                     f"the data set: {escape(', '.join(fixes['missing'][:10]))}</p>")
    audit = Path(fixes["file"]).parent / "summary.json"
    try:
        summary = _read_json(audit)
    except DamagedFileError:
        summary = None
    if summary and isinstance(summary.get("counts"), dict):
        rows = [{"found": AUDIT_KINDS.get(k, k), "images": v}
                for k, v in summary["counts"].items()]
        parts += [f"<p>The audit in <code>{escape(str(audit.parent))}</code> "
                  f"({escape(str(summary.get('created', '')))}) looked at "
                  f"{summary.get('images', '?')} images, with probabilities from "
                  f"{escape(str(summary.get('features', '')))}:</p>",
                  _table(rows, ("found",))]
    return parts


def build_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.html from the files a training run left there."""
    from imageclf.run.rundir import read_metrics

    run = Path(run_dir)
    if not (run / "metrics.json").exists():
        raise DamagedFileError(f"{run} is not a run directory: metrics.json is missing")
    m = read_metrics(run)
    config = _read_json(run / "config.json") or {}
    interp = _read_json(run / "interpretation.json") or {}
    parts = [f"<h1>imageclf run: {escape(run.resolve().name)}</h1>",
             "".join(f'<span class="kpi">{escape(k)}<b>{v}</b></span>'
                     for k, v in _kpis(m, interp))]
    parts += _lr_section(run, m)
    parts += ["<h2>Losses</h2>", _img(run / "losses.png", "loss curves"),
              "<h2>Per epoch</h2>", _table(m.history)]
    parts += _interpretation_section(run, interp)
    parts += _balance_section(m.class_counts)
    parts += _open_set_section(run / "model")
    parts += _data_health_section(m, config)
    skipped = [s.to_json() for s in m.skipped_files]
    parts.append(f"<h2>Skipped files ({len(skipped)})</h2>")
    parts.append(_table(skipped, ("path", "reason")) if skipped else
                 "<p>None: every file was readable.</p>")
    parts += ["<h2>Configuration</h2>", f"<pre>{escape(json.dumps(config, indent=2))}</pre>"]
    html = ("<!doctype html><html><head><meta charset='utf-8'><title>imageclf report</title>"
            f"<style>{CSS}</style></head><body>" + "\n".join(parts) + "</body></html>\n")
    out = run / "report.html"
    write_text(out, html)
    return out


def _kpis(m: RunMetrics, interp: dict) -> list[tuple[str, str]]:
    """The headline figures: (label, formatted value)."""
    acc = m.accuracy
    kpis = [("valid accuracy", f"{acc:.1%}" if isinstance(acc, float) else "-"),
            ("valid loss", _fmt(m.final.get("valid_loss", "-"))),
            ("epochs", _fmt(m.epochs)),
            ("training time", f"{m.train_seconds:.0f} s"),
            ("images/s", f"{m.train_img_per_s:.0f}"),
            ("images per step", _fmt(m.global_batch)),
            ("processes", _fmt(m.processes)),
            ("precision", _fmt(f"{m.precision} on {m.device}"))]
    if m.watched.name not in ("valid_accuracy", "accuracy_multi"):
        kpis.insert(0, (f"{m.watched.name} (watched)", _fmt(m.watched.last)))
    return kpis + [(k.replace("_", " "), _fmt(interp[k])) for k in SET_METRICS
                   if isinstance(interp.get(k), float)]


def _lr_section(run: Path, m: RunMetrics) -> list[str]:
    """The finder's suggestions and plot, or the rate given."""
    parts = ["<h2>Learning-rate finder</h2>"]
    if m.lr_find:
        parts.append("<p>Suggestions: " + ", ".join(f"{escape(k)} {v:.2e}" for k, v in
                                                     m.lr_find.items())
                     + f"; used {m.lr:.2e}"
                     + (f" ({escape(m.lr_rule)})" if m.lr_rule else "") + ".</p>")
        parts.append(_img(run / "lr_find.png", "lr_find plot"))
    else:
        parts.append(f"<p>Not run: the learning rate was given ({_fmt(m.lr, 'lr')}).</p>")
    return parts


def _interpretation_section(run: Path, interp: dict) -> list[str]:
    """Confusion matrix, most confused pairs, top losses and per-class scores."""
    if not interp:
        return []
    multi = interp.get("multi_label")
    return ["<h2>Confusion matrix</h2>",
            _img(run / "confusion_matrix.png", "confusion matrix") if not multi else
            "<p><i>multi-label model: see per-class scores</i></p>",
            "<h2>Most confused (actual → predicted)</h2>",
            _table(interp.get("most_confused", [])[:30], ("actual", "predicted"),
                   ["actual", "predicted", "count"]),
            "<h2>Top losses</h2>", "<p>Titles: predicted/actual, then loss / probability.</p>",
            _img(run / "top_losses.png", "top losses"),
            "<h2>Per class</h2>", _table(interp.get("per_class", []), ("class",),
                                           ["class", "precision", "recall", "f1", "support"]
                                           + (["ap"] if multi else []))]
