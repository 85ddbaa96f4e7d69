"""model.json, typed: the fields of a model/ folder, defined once; writing, reading and
validating all go through `ModelMeta`."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imageclf.core.errors import DamagedFileError
from imageclf.core.fileio import write_json
from imageclf.core.records import Record, doc

FORMAT_VERSION = 1
RESIZE_METHODS = ("crop", "squish", "pad")
HEADS = ("concat", "timm")  # the classifier heads models.make_head builds
LOSSES = ("cross_entropy", "bce_multi_label")
# open-set scores a model may store as its "none of these" rule (see openset.py)
OPEN_SET_SCORES = ("msp", "max_logit", "energy", "sigmoid_max", "knn", "mahalanobis",
                   "msp+mahalanobis", "sigmoid_max+mahalanobis", "vim", "ash", "scale",
                   "msp+vim")
KNN_K = 10  # knn's neighbour, by default


@dataclass(frozen=True)
class OodFigures(Record):
    """How each open-set score told known images from `calibrate --ood`'s unknown ones."""

    folder: str = doc("the --ood folder, or where the held-out negatives came from")
    n: int = doc("unknown images read there")
    scores: dict[str, dict[str, float]] = doc("per score: auroc, and fpr at the kept share")
    negatives: bool = doc("the unknowns were the model's held-out --negatives (calibrate "
                          "without --ood)", False)


@dataclass(frozen=True)
class OpenSetRule(Record):
    """The stored "none of these" rule: below `threshold` on `score`, the answer is none."""

    score: str = doc("the open-set score (see open-set.md)")
    threshold: float = doc("below it, the answer is none")
    keep: float | None = doc("share of the known validation images it keeps", None)
    n: int | None = doc("validation images it was chosen on", None)
    k: int = doc("knn: which nearest neighbour", KNN_K)
    rows: int | None = doc("knn: training features in the bank", None)
    file: str | None = doc("the feature scores' training statistics, inside the folder", None)
    ood: OodFigures | None = doc("with --ood: every score's figures on the unknowns", None)


@dataclass(frozen=True)
class NegativesInfo(Record):
    """What a model trained with `--negatives` was shown of no class, so that `calibrate`
    can measure its rule on the held-out part."""

    sources: tuple[str, ...] = doc("the --negatives sources (absolute)")
    valid_pct: float = doc("the held-out share of a source without its own split")
    seed: int = doc("the seed of that split")
    n_train: int = doc("negatives trained on")
    n_valid: int = doc("negatives held out")
    weight: float = doc("the weight of their loss")
    ratio: float = doc("negatives per known image in each batch")


@dataclass(frozen=True)
class CalibrationInfo(Record):
    """How `calibrate` chose the rule."""

    keep: float = doc("share of known images kept")
    n: int = doc("validation images")
    rule: str = doc("the score chosen, or multi_label_thresholds")


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _pos_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _names(v: Any) -> bool:
    return (isinstance(v, list) and len(v) > 0 and all(isinstance(c, str) and c for c in v)
            and len(set(v)) == len(v))


def _three(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 3 and all(_num(x) for x in v)


def _prob(v: Any) -> bool:
    return _num(v) and 0 <= v <= 1


def _open_set(v: Any) -> bool:
    if v is None or isinstance(v, OpenSetRule):
        return True
    return (isinstance(v, dict) and v.get("score") in OPEN_SET_SCORES
            and _num(v.get("threshold"))
            and (v["score"] != "knn" or _pos_int(v.get("k"))))


def _calibration(v: Any) -> bool:
    return v is None or isinstance(v, dict | CalibrationInfo)


def _spec(expect: str, check: Any, doc: str, **kw: Any) -> Any:
    """A field with what it must hold (`expect`, checked by `check` on the JSON value) and
    what it means (`doc`): the schema in docs/run-directory.md is generated from these."""
    return field(metadata={"expect": expect, "check": check, "doc": doc}, **kw)


@dataclass(frozen=True)
class ModelMeta:
    """Everything needed to use the weights in model.safetensors, and nothing that runs."""

    arch: str = _spec("a timm architecture name", lambda v: isinstance(v, str) and v,
                      "backbone, rebuilt with timm without downloading anything")
    head: str = _spec("concat or timm", lambda v: v in HEADS,
                      "the classifier head's kind")
    classes: tuple[str, ...] = _spec("a non-empty list of distinct class names", _names,
                                     "output order of the model")
    size: int = _spec("a positive integer", _pos_int,
                      "side of the images the model predicts at (its validation size)")
    presize: int = _spec("a positive integer", _pos_int,
                         "side of the CPU resize before the centre resize to size")
    resize_method: str = _spec("crop, squish or pad", lambda v: v in RESIZE_METHODS,
                               "how a non-square image becomes square")
    mean: tuple[float, float, float] = _spec("a list of 3 numbers", _three,
                                             "per-channel normalisation mean (RGB, 0-1)")
    std: tuple[float, float, float] = _spec("a list of 3 numbers", _three,
                                            "per-channel normalisation std (RGB, 0-1)")
    loss: str = _spec("cross_entropy or bce_multi_label", lambda v: v in LOSSES,
                      "the training loss: softmax or independent sigmoids")
    multi_label: bool = _spec("true or false", lambda v: isinstance(v, bool),
                              "independent sigmoids (several or no labels per image)",
                              default=False)
    thresholds: tuple[float, ...] | None = _spec(
        "null or a list of one number in [0, 1] per class",
        lambda v: v is None or (isinstance(v, list) and all(_prob(x) for x in v)),
        "multi-label: a class is predicted when its sigmoid reaches its threshold",
        default=None)
    train_size: int | None = _spec("null or a positive integer",
                                   lambda v: v is None or _pos_int(v),
                                   "side of the images it was trained at (the last stage's "
                                   "with --sizes)", default=None)
    ema: bool = _spec("true or false", lambda v: isinstance(v, bool),
                      "the weights are the moving average of training's (--ema)",
                      default=False)
    min_confidence: float | None = _spec(
        "null or a number in [0, 1]", lambda v: v is None or _prob(v),
        "models calibrated before `open_set` existed: below this top softmax probability the "
        "answer is `none` (read as the msp score; `calibrate` now writes `open_set`)",
        default=None)
    calibration: CalibrationInfo | None = _spec(
        "null or an object", _calibration,
        "how `calibrate` chose the rule: keep, n and rule (the score, or "
        "multi_label_thresholds)", default=None)
    open_set: OpenSetRule | None = _spec(
        "null or an object with `score` (msp, max_logit, energy, sigmoid_max, knn, "
        "mahalanobis, msp+mahalanobis, sigmoid_max+mahalanobis, vim, ash, scale or "
        "msp+vim), a number `threshold`, "
        "and for knn an integer `k` ≥ 1", _open_set,
        "the `none of these` rule from `calibrate`: below `threshold` on `score`, the answer "
        "is none; the feature scores read their training statistics from `file`",
        default=None)
    negatives: NegativesInfo | None = _spec(
        "null or an object", lambda v: v is None or isinstance(v, dict | NegativesInfo),
        "`train --negatives`: the sources of the images of no class it learned to reject, "
        "and how they were split (calibrate's default unknowns)", default=None)
    weights: str = _spec("a .safetensors file name inside the folder",
                         lambda v: isinstance(v, str) and v.endswith(".safetensors"),
                         "the weights file", default="model.safetensors")
    versions: dict[str, str] = _spec("an object of package versions",
                                     lambda v: isinstance(v, dict),
                                     "torch, timm and pillow that wrote the model",
                                     default_factory=dict)
    format_version: int = _spec(f"an integer, at most {FORMAT_VERSION}",
                                lambda v: isinstance(v, int) and 1 <= v <= FORMAT_VERSION,
                                "layout of this file", default=FORMAT_VERSION)

    def __post_init__(self) -> None:
        # JSON lists arrive as lists: held as tuples, so the object is really frozen
        for name in ("classes", "mean", "std", "thresholds"):
            v = getattr(self, name)
            if isinstance(v, list):
                object.__setattr__(self, name, tuple(v))
        for name, cls in (("open_set", OpenSetRule), ("calibration", CalibrationInfo),
                          ("negatives", NegativesInfo)):
            v = getattr(self, name)
            if isinstance(v, dict):  # as JSON gives it: the typed record
                object.__setattr__(self, name, cls.from_json(v, f"model.json: {name}"))

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> dict[str, Any]:
        """model.json's object."""
        out = dataclasses.asdict(self)
        for name in ("classes", "mean", "std", "thresholds"):
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    def write(self, folder: str | Path) -> Path:
        """Write folder/model.json atomically."""
        path = Path(folder) / "model.json"
        write_json(path, self.to_json())
        return path

    @classmethod
    def from_json(cls, obj: Any, where: str = "model.json") -> ModelMeta:
        """Check a parsed model.json and build it; errors name the file, the field and what
        was expected."""
        if not isinstance(obj, dict):
            raise DamagedFileError(f"{where}: expected a JSON object, got "
                                   f"{type(obj).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if _num(obj.get("format_version")) and obj["format_version"] > FORMAT_VERSION:
            raise DamagedFileError(
                f"{where}: format_version {obj['format_version']} is newer than this imageclf "
                f"reads ({FORMAT_VERSION}); upgrade imageclf to use this model")
        missing = [n for n, f in fields.items() if n not in obj and _required(f)]
        if missing:
            raise DamagedFileError(f"{where}: missing field(s) {', '.join(missing)}")
        unknown = sorted(set(obj) - set(fields))
        if unknown:
            raise DamagedFileError(f"{where}: unknown field(s) {', '.join(unknown)}; "
                                   f"expected only {', '.join(fields)}")
        problems = [f"field '{n}': expected {fields[n].metadata['expect']}, got {v!r:.80}"
                    for n, v in obj.items() if not fields[n].metadata["check"](v)]
        th = obj.get("thresholds")
        if not problems and th is not None and len(th) != len(obj["classes"]):
            problems.append(f"field 'thresholds': expected {len(obj['classes'])} numbers (one "
                            f"per class), got {len(th)}")
        if problems:
            raise DamagedFileError(f"{where}: " + "; ".join(problems))
        return cls(**obj)

    @classmethod
    def read(cls, folder: str | Path) -> ModelMeta:
        """folder/model.json, checked."""
        path = Path(folder) / "model.json"
        try:
            obj = json.loads(path.read_text())
        except OSError as e:
            raise DamagedFileError(f"{path}: cannot read ({e.strerror}); is {folder} a model/ "
                                   "folder?") from e
        except ValueError as e:
            raise DamagedFileError(f"{path}: not valid JSON ({e})") from e
        return cls.from_json(obj, str(path))


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def schema_markdown() -> str:
    """model.json's fields as a Markdown table (docs/run-directory.md holds this text)."""
    rows = ["| field | required | expected | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(ModelMeta):
        rows.append(f"| `{f.name}` | {'yes' if _required(f) else 'no'} | "
                    f"{f.metadata['expect']} | {f.metadata['doc']} |")
    return "\n".join(rows) + "\n"
