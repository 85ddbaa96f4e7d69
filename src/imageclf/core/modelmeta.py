"""model.json, typed: the fields of a model/ folder, defined once; writing, reading and
validating all go through `ModelMeta`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imageclf.core.errors import DamagedFileError
from imageclf.core.fileio import write_json
from imageclf.core.records import Record
from imageclf.core.schema import doc, number, positive_int, probability

FORMAT_VERSION = 1
RESIZE_METHODS = ("crop", "squish", "pad")
HEADS = ("concat", "timm")  # the classifier heads models.make_head builds
LOSSES = ("cross_entropy", "bce_multi_label")
# open-set scores a model may store as its "none of these" rule (see openset/scores.py)
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
class FarFigures(Record):
    """How each open-set score told known images from images of no kind at all: the
    synthetic families that training never draws (data/synthetic.py's HELD_OUT), drawn by
    `calibrate`."""

    families: tuple[str, ...] = doc("the held-out families drawn")
    n: int = doc("images drawn")
    scores: dict[str, dict[str, float]] = doc("per score: auroc, and fpr at the kept share")


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
    far: FarFigures | None = doc("the figures on drawn images of no kind (far-OOD)", None)


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
    loss: str = doc("the negatives' loss: oe, energy, or bce (multi-label: to no label)",
                    "oe")


@dataclass(frozen=True)
class CalibrationInfo(Record):
    """How `calibrate` chose the rule."""

    keep: float = doc("share of known images kept")
    n: int = doc("validation images")
    rule: str = doc("the score chosen, or multi_label_thresholds")


def _names(v: Any) -> bool:
    return (isinstance(v, list) and len(v) > 0 and all(isinstance(c, str) and c for c in v)
            and len(set(v)) == len(v))


def _three(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 3 and all(number(x) for x in v)


def _open_set(v: Any) -> bool:
    if v is None or isinstance(v, OpenSetRule):
        return True
    return (isinstance(v, dict) and v.get("score") in OPEN_SET_SCORES
            and number(v.get("threshold"))
            and (v["score"] != "knn" or positive_int(v.get("k"))))


def _object(v: Any) -> bool:
    return v is None or isinstance(v, dict | Record)


@dataclass(frozen=True)
class ModelMeta(Record):
    """Everything needed to use the weights in model.safetensors, and nothing that runs."""

    arch: str = doc("backbone, rebuilt with timm without downloading anything",
                    expect="a timm architecture name", check=lambda v: isinstance(v, str) and v)
    head: str = doc("the classifier head's kind", expect="concat or timm",
                    check=lambda v: v in HEADS)
    classes: tuple[str, ...] = doc("output order of the model",
                                   expect="a non-empty list of distinct class names",
                                   check=_names)
    size: int = doc("side of the images the model predicts at (its validation size)",
                    expect="a positive integer", check=positive_int)
    presize: int = doc("side of the CPU resize before the centre resize to size",
                       expect="a positive integer", check=positive_int)
    resize_method: str = doc("how a non-square image becomes square",
                             expect="crop, squish or pad", check=lambda v: v in RESIZE_METHODS)
    mean: tuple[float, float, float] = doc("per-channel normalisation mean (RGB, 0-1)",
                                           expect="a list of 3 numbers", check=_three)
    std: tuple[float, float, float] = doc("per-channel normalisation std (RGB, 0-1)",
                                          expect="a list of 3 numbers", check=_three)
    loss: str = doc("the training loss: softmax or independent sigmoids",
                    expect="cross_entropy or bce_multi_label", check=lambda v: v in LOSSES)
    multi_label: bool = doc("independent sigmoids (several or no labels per image)", False,
                            expect="true or false", check=lambda v: isinstance(v, bool))
    thresholds: tuple[float, ...] | None = doc(
        "multi-label: a class is predicted when its sigmoid reaches its threshold", None,
        expect="null or a list of one number in [0, 1] per class",
        check=lambda v: v is None or (isinstance(v, list) and all(probability(x) for x in v)))
    train_size: int | None = doc(
        "side of the images it was trained at (the last stage's with --sizes)", None,
        expect="null or a positive integer", check=lambda v: v is None or positive_int(v))
    ema: bool = doc("the weights are the moving average of training's (--ema)", False,
                    expect="true or false", check=lambda v: isinstance(v, bool))
    min_confidence: float | None = doc(
        "models calibrated before `open_set` existed: below this top softmax probability the "
        "answer is `none` (read as the msp score; `calibrate` now writes `open_set`)", None,
        expect="null or a number in [0, 1]", check=lambda v: v is None or probability(v))
    calibration: CalibrationInfo | None = doc(
        "how `calibrate` chose the rule: keep, n and rule (the score, or "
        "multi_label_thresholds)", None, expect="null or an object", check=_object)
    open_set: OpenSetRule | None = doc(
        "the `none of these` rule from `calibrate`: below `threshold` on `score`, the answer "
        "is none; the feature scores read their training statistics from `file`", None,
        expect="null or an object with `score` (msp, max_logit, energy, sigmoid_max, knn, "
        "mahalanobis, msp+mahalanobis, sigmoid_max+mahalanobis, vim, ash, scale or "
        "msp+vim), a number `threshold`, and for knn an integer `k` ≥ 1", check=_open_set)
    negatives: NegativesInfo | None = doc(
        "`train --negatives`: the sources of the images of no class it learned to reject, "
        "and how they were split (calibrate's default unknowns)", None,
        expect="null or an object", check=_object)
    weights: str = doc("the weights file", "model.safetensors",
                       expect="a .safetensors file name inside the folder",
                       check=lambda v: isinstance(v, str) and v.endswith(".safetensors"))
    versions: dict[str, str] = doc("torch, timm and pillow that wrote the model",
                                   default_factory=dict, expect="an object of package versions",
                                   check=lambda v: isinstance(v, dict))
    format_version: int = doc("layout of this file", FORMAT_VERSION,
                              expect=f"an integer, at most {FORMAT_VERSION}",
                              check=lambda v: isinstance(v, int) and 1 <= v <= FORMAT_VERSION)

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

    def write(self, folder: str | Path) -> Path:
        """Write folder/model.json atomically."""
        path = Path(folder) / "model.json"
        write_json(path, self.to_json())
        return path

    @classmethod
    def check_json(cls, obj: dict[str, Any], where: str) -> None:
        """A newer format is refused first; multi-label thresholds are one per class."""
        if number(obj.get("format_version")) and obj["format_version"] > FORMAT_VERSION:
            raise DamagedFileError(
                f"{where}: format_version {obj['format_version']} is newer than this imageclf "
                f"reads ({FORMAT_VERSION}); upgrade imageclf to use this model")
        th, classes = obj.get("thresholds"), obj.get("classes")
        if isinstance(th, list) and _names(classes) and len(th) != len(classes):
            raise DamagedFileError(f"{where}: field 'thresholds': expected {len(classes)} "
                                   f"numbers (one per class), got {len(th)}")

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
