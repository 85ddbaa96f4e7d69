"""The model card: README.md of an exported model folder, with the Hub's YAML header, made
from model.json and, for a run's model, its metrics.json, config.json and
interpretation.json."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from imageclf.core.errors import ImageclfError
from imageclf.core.modelmeta import ModelMeta
from imageclf.model.archs import NAMES
from imageclf.run.rundir import RunMetrics, read_config, read_metrics


@dataclass(frozen=True)
class CardFacts:
    """What a card says, gathered once: the model's meta and what its run left."""

    meta: ModelMeta
    name: str
    metrics: RunMetrics | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # the run's flat settings
    per_class: list[dict[str, Any]] = field(default_factory=list)
    license: str | None = None
    datasets: tuple[str, ...] = ()


def gather(folder: Path, name: str | None = None, license: str | None = None,
           datasets: tuple[str, ...] = ()) -> CardFacts:
    """The card's facts for a model/ folder; a run's files are read when they are beside
    it (a damaged one is left out, not fatal). `datasets` are Hub data set ids: a local
    folder's name is not one, so none is guessed."""
    meta = ModelMeta.read(folder)
    run = folder.parent
    metrics, settings, per_class = None, {}, []
    with contextlib.suppress(ImageclfError):
        if (run / "metrics.json").is_file():
            metrics = read_metrics(run)
    with contextlib.suppress(ImageclfError):
        if (run / "config.json").is_file():
            data, train = read_config(run)
            settings = data.flat() | train.flat()
    with contextlib.suppress(OSError, ValueError, KeyError):
        per_class = json.loads((run / "interpretation.json").read_text())["per_class"]
    default = run.name if (run / "metrics.json").is_file() else folder.name
    return CardFacts(meta, name or default, metrics, settings, per_class, license, datasets)


def base_model(facts: CardFacts) -> str | None:
    """The Hub id of the weights it was fine-tuned from, when they came from the Hub."""
    if facts.settings.get("pretrained") != "hub":
        return None
    import timm

    with contextlib.suppress(RuntimeError, AttributeError):
        hub_id = timm.models.get_pretrained_cfg(facts.meta.arch).hf_hub_id
        return hub_id or None
    return None


def header(facts: CardFacts) -> dict[str, Any]:
    """The YAML header the Hub reads (library, task, tags, data, metrics with values)."""
    head: dict[str, Any] = {"library_name": "timm", "pipeline_tag": "image-classification",
                            "tags": ["image-classification", "timm", "imageclf"]}
    if facts.license:
        head["license"] = facts.license
    if facts.datasets:
        head["datasets"] = list(facts.datasets)
    base = base_model(facts)
    if base:
        head["base_model"] = base
    values = _headline(facts)
    if values:
        head["metrics"] = list(values)
        head["model-index"] = [{"name": facts.name, "results": [{
            "task": {"type": "image-classification", "name": "Image Classification"},
            "dataset": {"name": facts.datasets[0] if facts.datasets else "validation split",
                        "type": facts.datasets[0] if facts.datasets else "local",
                        "split": "validation"},
            "metrics": [{"type": k, "value": round(v, 4), "name": f"validation {k}"}
                        for k, v in values.items()]}]}]
    return head


def _headline(facts: CardFacts) -> dict[str, float]:
    m = facts.metrics
    if m is None:
        return {}
    names = {"valid_accuracy": "accuracy", "accuracy_multi": "accuracy", "macro_f1": "f1"}
    return {hub: float(m.final[k]) for k, hub in names.items() if k in m.final}


def _recipe(facts: CardFacts) -> list[str]:
    s, m, meta = facts.settings, facts.metrics, facts.meta
    rows = [f"- architecture: `{meta.arch}` (timm), head `{meta.head}`"
            + (", weights' moving average (EMA)" if meta.ema else "")]
    if s:
        start = {"none": "from scratch", "hub": "fine-tuned from timm's pretrained weights"}
        rows.append("- weights: " + start.get(str(s.get("pretrained")),
                                              "fine-tuned from local weights"))
        rows.append(f"- presize {s.get('presize')} → size {s.get('size')}"
                    + (f", progressive sizes {s['sizes']}" if s.get("sizes") else "")
                    + f"; batch {s.get('bs')}, weight decay {s.get('wd')}")
    if m is not None:
        rule = f" (lr_find's `{m.lr_rule}`)" if m.lr_rule else ""
        procs = f"{m.processes} process" + ("es" if m.processes > 1 else "")
        rows.append(f"- {m.epochs} epochs at lr {m.lr:.3g}{rule}, {m.precision or 'fp32'}, "
                    f"{procs}, {m.train_img_per_s:.0f} images/s on {m.device or 'cpu'}")
    return rows


def _per_class(facts: CardFacts) -> list[str]:
    if not facts.per_class:
        return ["No per-class figures: this model folder was not written by a run."]
    keys = [k for k in ("precision", "recall", "f1", "ap", "support") if k in facts.per_class[0]]
    rows = ["| class | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for r in facts.per_class:
        vals = [str(r[k]) if k == "support" else f"{r[k]:.3f}" for k in keys]
        rows.append(f"| {r['class']} | " + " | ".join(vals) + " |")
    return rows


def _none_rule(meta: ModelMeta) -> list[str]:
    rule = meta.open_set
    if meta.multi_label:
        return ["Multi-label (independent sigmoids): an image with no class above its "
                "threshold is answered `none`."]
    if rule is None:
        if meta.min_confidence is not None:
            return [f"Below a top probability of {meta.min_confidence:.3g}, the answer is "
                    "`none` (an older calibration)."]
        return ["Not calibrated: every image gets one of the classes. Run `imageclf "
                "calibrate` to add a \"none of these\" rule."]
    out = [f"Below `{rule.threshold:.4g}` on the `{rule.score}` score the answer is `none`"
           + (f"; it keeps {rule.keep:.0%} of {rule.n} known validation images."
              if rule.keep is not None and rule.n else ".")]
    sides = [(w, f) for w, f in (("near", rule.ood), ("far", rule.far)) if f is not None]
    if sides:
        where = [f"near: {rule.ood.n} unknown images (`{Path(rule.ood.folder).name}`)"
                 ] if rule.ood is not None else []
        where += [f"far: {rule.far.n} drawn images of no kind ({', '.join(rule.far.families)})"
                  ] if rule.far is not None else []
        out += ["", "; ".join(where) + ":", "",
                "| score | " + " | ".join(f"{w} AUROC | {w} FPR at the kept share"
                                         for w, _ in sides) + " |",
                "|---|" + "---:|" * (2 * len(sides))]
        for name in sides[0][1].scores:
            cells = []
            for _, f in sides:
                fig = f.scores.get(name, {})
                cells += [f"{fig.get('auroc', float('nan')):.3f}",
                          f"{fig.get('fpr', float('nan')):.3f}"]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


def _usage(facts: CardFacts, repo_id: str | None) -> list[str]:
    where = f"hf-hub:{repo_id}" if repo_id else "local-dir:PATH/TO/THIS/FOLDER"
    s = facts.meta.size
    return [
        "With imageclf (the same presize → resize and the \"none of these\" rule):", "",
        "```bash", "imageclf predict THIS_FOLDER photo.jpg", "imageclf serve THIS_FOLDER",
        "```", "", "With timm alone:", "", "```python", "import timm, torch",
        *(["import imageclf.model.archs  # registers " + facts.meta.arch + " in timm"]
          if facts.meta.arch in NAMES else []),
        "from PIL import Image", f'model = timm.create_model("{where}", pretrained=True).eval()',
        "cfg = timm.data.resolve_data_config({}, model=model)",
        "transform = timm.data.create_transform(**cfg)",
        'x = transform(Image.open("photo.jpg").convert("RGB")).unsqueeze(0)',
        "probs = model(x).softmax(1)" if not facts.meta.multi_label
        else "probs = model(x).sigmoid()",
        'label = model.pretrained_cfg["label_names"][int(probs.argmax())]', "```", "",
        "As ONNX (float32 RGB in [0, 1], normalisation inside, probabilities out):", "",
        "```bash", "imageclf export THIS_FOLDER --onnx -o model.onnx", "```", "",
        "```python", "import onnxruntime as ort",
        'sess = ort.InferenceSession("model.onnx")',
        f'probs = sess.run(["probs"], {{"image": rgb}})[0]  # rgb: (B, 3, {s}, {s}) float32',
        "```"]


_PRESIZE = {"crop": "The shorter side is resized to {p} px and the centre square kept",
            "squish": "Images are squished to {p} × {p} px",
            "pad": "The longer side is resized to {p} px and the image padded to a square"}


def render(facts: CardFacts, repo_id: str | None = None) -> str:
    """README.md: the YAML header, then classes, sizes, recipe, metrics, the rule, usage."""
    meta = facts.meta
    m = facts.metrics
    lines = ["---", yaml.safe_dump(header(facts), sort_keys=False).rstrip(), "---", "",
             f"# {facts.name}", "",
             f"An image classifier over {meta.n_classes} classes, trained with imageclf.", ""]
    if m is not None and m.accuracy is not None:
        lines += [f"Validation accuracy **{m.accuracy:.4f}**"
                  + (f", loss {m.final['valid_loss']:.4f}" if "valid_loss" in m.final else "")
                  + ".", ""]
    lines += ["## Classes", "", ", ".join(f"`{c}`" for c in meta.classes), "",
              "## Input", "",
              f"- {_PRESIZE[meta.resize_method].format(p=meta.presize)}, then resized to "
              f"{meta.size} × {meta.size}; trained at {meta.train_size or meta.size}.",
              f"- Normalised with mean {[round(v, 4) for v in meta.mean]} and std "
              f"{[round(v, 4) for v in meta.std]}.",
              "- Output: " + ("a sigmoid per class." if meta.multi_label
                              else "softmax over the classes."), "",
              "## Recipe", "", *_recipe(facts), "",
              "## Validation per class", "", *_per_class(facts), "",
              "## \"None of these\"", "", *_none_rule(meta), "",
              "## Use", "", *_usage(facts, repo_id), ""]
    return "\n".join(lines)
