"""The settings of data, augmentation, model and training: frozen dataclasses whose fields
each declare one setting (settings.py), with a JSON round trip.

DataConfig holds a DataSource (where the labelled images are) and an AugConfig; TrainConfig
holds one part per job: ModelConfig, ScheduleConfig, OptimConfig, RegConfig, OutputConfig.
`DataConfig.build(path="data", size=128)` and `TrainConfig.build(arch="resnet34",
epochs=8)` take the flat names the command line uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imageclf.core.errors import ConfigError
from imageclf.core.fileio import file_sha256
from imageclf.core.modelmeta import HEADS, RESIZE_METHODS
from imageclf.core.settings import Settings, setting

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
OPTIMIZERS = ("adamw", "ranger", "sgd")
SCHEDULES = ("one_cycle", "flat_cos")
LR_RULES = ("auto", "valley", "slide", "minimum", "steep")  # --lr values that run lr_find
SAMPLERS = ("shuffle", "balanced")
FLIP_P = 0.5  # fastai's aug_transforms: a horizontal flip half the time
NEGATIVES_LOSS = "energy"  # bench/bench_open_set.py, docs/open-set.md
# the negatives' weight by loss, when --negatives-weight is not given (bench_open_set.py):
# the energy margin 0.05 (0.1 cost 2.0 points of accuracy at 128 px and put near-OOD below
# msp's; 0.05 held both there and on 4 x 200 images at 64 px), outlier exposure and
# multi-label BCE to no label 0.5
NEGATIVES_WEIGHTS = {"energy": 0.05, "oe": 0.5, "multi_label": 0.5}
# negatives per known image when --negatives-ratio is not given: synthetic ones alone cost
# 1.42x an epoch at 0.25 and 1.54x at 0.5 with the same figures (small setting)
NEGATIVES_RATIOS = {"synthetic": 0.25, "files": 0.5}
ONE_CYCLE_MOMS = (0.95, 0.85, 0.95)  # fastai's: Adam's beta1 (SGD's momentum) high, low, high
LR_FIND_STEPS = 100  # batches in the learning-rate finder's sweep, by default
__all__ = ["AugConfig", "ConfigError", "DataConfig", "DataSource", "ModelConfig",
           "OptimConfig", "OutputConfig", "RegConfig", "ScheduleConfig", "TrainConfig"]


def parse_sizes(text: str | None) -> tuple[int, ...] | None:
    """--sizes 64,96,128 -> (64, 96, 128)."""
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--sizes takes sizes separated by commas, e.g. 64,96,128; got "
                          f"{text!r}") from None


def _no_flip(no_flip: bool) -> float:
    return 0.0 if no_flip else FLIP_P


def _paths(paths: list[Path] | None) -> tuple[str, ...]:
    return tuple(str(p) for p in paths or ())


# --- data ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataSource(Settings):
    """Where the labelled images are and how they are split: class folders, file names and a
    regex, a CSV, or Parquet/Arrow tables (data/sources.py resolves it)."""

    section = "Data"
    path: str | None = setting(None, "Class folders, a CSV, Parquet/Arrow files, a store "
                               "folder or URL (docs/data-sources.md).", argument=True,
                               cli_type=str)
    csv: str | None = setting(None, "CSV of filename,label[,is_valid].")
    label_regex: str | None = setting(None, "Label: group 1 of this regex on file names.")
    image_col: str | None = setting(None, "Parquet/Arrow: the image column.")
    label_col: str | None = setting(None, "Parquet/Arrow: the label column.")
    split_col: str | None = setting(None, "Parquet/Arrow: the train/valid/test column.")
    valid_pct: float = setting(0.2, "Random validation share (DATA unsplit).",
                               gt=0, lt=1)
    multi_label: bool = setting(False, "Several or no labels per image (sigmoids).")
    fixes: str | None = setting(None, "A fixes.csv (imageclf audit, review): its images "
                                "relabelled or left out; the files stay as they are.")
    fixes_sha256: str | None = setting(None, "The fixes file's sha256, recorded when the "
                                       "settings are made (a rerun with another file is a "
                                       "change).", cli=False)

    def check(self) -> None:
        for name in ("path", "csv", "fixes"):  # a Path given in Python is held as text, as in JSON
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                object.__setattr__(self, name, str(v))
        if self.csv is not None and self.label_regex is not None:
            raise self.error("label_regex", "and --csv both give the labels: choose one")
        if self.fixes is not None and self.fixes_sha256 is None:
            object.__setattr__(self, "fixes_sha256", file_sha256(self.fixes, "--fixes"))


@dataclass(frozen=True)
class AugConfig(Settings):
    """Batch augmentation settings (fastai's `aug_transforms` defaults)."""

    section = "Augmentation"
    flip_p: float = setting(FLIP_P, "No horizontal flips (text, digits, ...).", ge=0, le=1,
                            flag="--no-flip", cli_type=bool, cli_default=False, parse=_no_flip)
    max_rotate: float = setting(10.0, "Largest rotation in degrees.", ge=0, le=180)
    max_zoom: float = setting(1.1, "Largest zoom in.", ge=1)
    max_warp: float = setting(0.2, "Largest perspective warp (0: none).", ge=0, lt=1)
    min_scale: float = setting(0.75, "Random-resized crop: smallest area share kept.",
                               gt=0, le=1)
    ratio: tuple[float, float] = setting((1.0, 1.0), "Aspect range of the crop (fastai: "
                                         "square).", cli=False)
    max_lighting: float = setting(0.2, "Largest brightness/contrast change (0: none).",
                                  ge=0, lt=1)
    p_affine: float = setting(0.75, "Share of images given the geometric changes.", ge=0,
                              le=1, cli=False)
    p_lighting: float = setting(0.75, "Share of images given the lighting change.", ge=0,
                                le=1, cli=False)
    pad_mode: str = setting("reflection", "What the sampling grid reads outside the image.",
                            choices=("reflection", "border", "zeros"), cli=False)


@dataclass(frozen=True)
class DataConfig(Settings):
    """Where the images are, how they are split, presized and batched."""

    section = "Data"
    source: DataSource = field(default_factory=DataSource)
    size: int = setting(224, "Side of the images the model sees.", ge=8)
    presize: int = setting(460, "Side of the CPU presize (>= --size). Default 460 (bench "
                           "loader: 160), or a store's own presize when DATA is a store.",
                           ge=8, cli_default=None, cli_type=int)
    resize_method: str = setting("crop", "How a non-square image becomes square.",
                                 choices=RESIZE_METHODS)
    bs: int = setting(64, "Batch size (per process).", ge=1)
    seed: int = setting(0, "Seed of split, initialisation, augmentation.")
    cache_dir: str | None = setting(None, "Presize cache folder (default "
                                    "$IMAGECLF_CACHE_DIR).")
    cache: str = setting("auto", "Form of the presize cache: raw uint8 (fastest epochs), "
                         "jpeg (a store: about 1/8 of the disk, decoded per batch), or auto "
                         "(raw while it fits in half the free disk and memory).",
                         choices=("auto", "raw", "jpeg"))
    decode_workers: int = setting(0, "Processes decoding the cache's first build (0: one "
                                  "per core).", ge=0)
    decode: str = setting("cpu", "First decode: cpu (Pillow, JPEG draft mode) or device "
                          "(JPEGs on the training device, nvJPEG on a GPU).",
                          choices=("cpu", "device"))
    sampler: str = setting("shuffle", "shuffle (each image once an epoch) or balanced "
                           "(classes drawn equally often).", choices=SAMPLERS)
    valid_size: int | None = setting(None, "Side validation and the exported model see "
                                     "(default --size).", ge=8)
    negatives: tuple[str, ...] = setting(
        (), "Images of none of the classes (a folder, CSV or Parquet; repeatable): trained "
        "toward no class, their held-out part measures rejection. `synthetic`: images of no "
        "class drawn on the fly (fractals, noise, fields, shuffled tiles; "
        "synthetic:FAMILY,... for some).", cli_type=list[Path],
        cli_default=None, parse=_paths, metavar="PATH")
    negatives_ratio: float | None = setting(
        None, "Negatives per known image in each training batch (default: 0.25 synthetic "
        "only; 0.5 with --negatives, half of them synthetic with --synthetic).", gt=0, le=4)
    synthetic: bool = setting(
        False, "Draw images of no class on the fly (fractals, noise, fields, shuffled tiles) "
        "beside each training batch, trained toward no class: far-OOD \"none of these\" "
        "by default (off with --mixup/--cutmix and for streamed stores).",
        flag="--synthetic/--no-synthetic", cli_default=True)
    aug: AugConfig = field(default_factory=AugConfig)

    def ratio_of_negatives(self, files: bool) -> float:
        """--negatives-ratio, or its default: 0.5 with negatives from files, 0.25 with
        synthetic ones alone (bench/bench_open_set.py)."""
        if self.negatives_ratio is not None:
            return self.negatives_ratio
        return NEGATIVES_RATIOS["files" if files else "synthetic"]

    def check(self) -> None:
        if self.presize < self.size:
            raise self.error("presize", f"must be >= --size ({self.size}): presizing leaves "
                             "margin for augmentation; try --presize "
                             f"{max(self.size, round(self.size * 1.25))}", self.presize)
        object.__setattr__(self, "negatives", tuple(str(p) for p in self.negatives))
        if self.valid_size is not None and self.valid_size > self.presize:
            raise self.error("valid_size", f"must be at most --presize ({self.presize})",
                             self.valid_size)


# --- training -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelConfig(Settings):
    """The network: backbone, its starting weights, the head."""

    section = "Model"
    arch: str = setting("resnet18", "Any timm architecture name.")
    pretrained: str = setting("none", "hub (timm's weights), none, a .safetensors/.pth "
                              "file, or an imageclf model/ folder.", cli_default="hub")
    head: str = setting("auto", "concat (fastai's), timm (pool + linear), or auto: timm "
                        "from scratch, concat when fine-tuning.", choices=("auto", *HEADS))

    @property
    def fine_tunes(self) -> bool:
        """Pretrained weights: fine_tune (frozen, then unfrozen) rather than fit_one_cycle."""
        return self.pretrained != "none"

    @property
    def built_head(self) -> str:
        """The head built: auto is timm's plain one (pool + linear) from scratch, where it
        learns sooner than fastai's concat head with its dropout (Imagenette, 2 epochs at
        64 px: 65.5% vs 60.7%; the demo's shapes: 82% vs 32%), and the concat head when
        fine-tuning a pretrained body, as fastai does."""
        if self.head != "auto":
            return self.head
        return "concat" if self.fine_tunes else "timm"


@dataclass(frozen=True)
class ScheduleConfig(Settings):
    """How long and how fast: epochs, the rate, the sizes per stage."""

    section = "Schedule"
    epochs: int = setting(4, "Epochs (after --freeze-epochs when pretrained).", ge=0)
    freeze_epochs: int = setting(1, "Epochs of the head alone first, when pretrained.", ge=0)
    lr: str = setting("auto", "A number, or lr_find's suggestion: valley, slide, minimum, "
                      "steep; auto: valley when pretrained, minimum from scratch.")
    lr_schedule: str = setting("one_cycle", "one_cycle (warm up, then cosine down; momentum "
                               "the other way) or flat_cos (flat, then cosine down from "
                               "72%).", choices=SCHEDULES, flag="--schedule")
    lr_find_steps: int = setting(LR_FIND_STEPS, "Steps of the learning-rate finder's sweep.",
                                 ge=10)
    sizes: tuple[int, ...] | None = setting(
        None, "Progressive resizing: sizes per stage, ending at --size (e.g. 64,96,128).",
        cli_type=str, parse=parse_sizes)

    @property
    def lr_rule(self) -> str | None:
        """The lr_find rule that sets the rate (lr_finder.resolve_rule turns auto into a
        suggestion once the sweep has run), None for a number."""
        return self.lr if self.lr in LR_RULES else None

    def check(self) -> None:
        if self.lr_rule is None:
            try:
                value = float(self.lr)
            except ValueError:
                raise self.error("lr", f"must be a number or one of {', '.join(LR_RULES)} "
                                 "(lr_find's suggestions)", self.lr) from None
            if not 0 < value < 10:
                raise self.error("lr", "must be between 0 and 10", self.lr)
        if self.sizes is not None and (not self.sizes or any(
                not isinstance(v, int) or v < 8 for v in self.sizes)):
            raise self.error("sizes", "must be sizes of at least 8 pixels", self.sizes)


@dataclass(frozen=True)
class OptimConfig(Settings):
    """The optimiser step: which optimiser, its decay, precision, accumulation, clipping,
    compiling."""

    section = "Optimiser"
    opt: str = setting("adamw", "adamw, ranger (RAdam + Lookahead) or sgd (Nesterov), "
                       "through timm's optimiser factory.", choices=OPTIMIZERS)
    wd: float = setting(0.01, "Decoupled weight decay (not on norms and biases).", ge=0)
    mom: float | None = setting(None, "Adam's beta1 (SGD's momentum) under --schedule "
                                "flat_cos, which holds it (one_cycle cycles it); default: "
                                "the optimiser's own, 0.9 (ranger 0.95).", gt=0, lt=1)
    precision: str = setting("auto", "auto (bf16 where native, else fp32), bf16, fp16 or "
                             "fp32.", choices=PRECISIONS)
    accum_steps: int = setting(1, "Batches whose gradients add up to one step (bs x N "
                               "images a step).", ge=1)
    clip_grad: float | None = setting(None, "Clip the gradients' global norm to this "
                                      "(default: no clipping).", gt=0)
    compile: bool = setting(False, "torch.compile the training step: slower start, faster "
                            "steps (GPUs, long runs).")


@dataclass(frozen=True)
class RegConfig(Settings):
    """Regularisation and imbalance: what changes the loss or the images it sees."""

    section = "Regularisation"
    label_smoothing: float = setting(0.0, "Label smoothing of the cross-entropy.", ge=0, lt=1)
    class_weights: str = setting("none", "Loss weight per class: auto (inverse frequency), "
                                 "none, or a JSON file {class: weight}.")
    ema: float = setting(0.0, "Validate and export a moving average of the weights with "
                         "this decay (e.g. 0.999; 0: off).", ge=0, lt=1)
    mixup: float = setting(0.0, "Mixup with Beta(alpha, alpha) (0: off).", ge=0)
    cutmix: float = setting(0.0, "CutMix with Beta(alpha, alpha) (0: off).", ge=0)
    negatives_weight: float | None = setting(
        None, "Weight of the negatives' loss (default: energy 0.05; oe, and multi-label "
        "models' BCE to no label, 0.5).", gt=0)
    negatives_loss: str = setting(
        NEGATIVES_LOSS, "The negatives' loss for a softmax model: oe (cross-entropy to the "
        "uniform distribution) or energy (energy margins on known and negatives).",
        choices=("oe", "energy"))

    def weight_of_negatives(self, multi_label: bool) -> float:
        """--negatives-weight, or the default of the loss it weighs."""
        if self.negatives_weight is not None:
            return self.negatives_weight
        return NEGATIVES_WEIGHTS["multi_label" if multi_label else self.negatives_loss]

    def check(self) -> None:
        if self.class_weights not in ("none", "auto") and not self.class_weights.endswith(
                ".json"):
            raise self.error("class_weights", "must be auto, none or a .json file of "
                             "{class: weight}", self.class_weights)


@dataclass(frozen=True)
class OutputConfig(Settings):
    """What the run writes and watches."""

    section = "Run"
    out: str | None = setting(None, "Run directory (default runs/<time>).")
    metric: str | None = setting(None, "What the summary watches: accuracy, macro_f1, "
                                 "balanced_accuracy, top5_accuracy, valid_loss, mAP, ...")
    tensorboard: bool = setting(False, "Log to RUN_DIR/tensorboard/ (pip install "
                                "'imageclf[tensorboard]').")


@dataclass(frozen=True)
class TrainConfig(Settings):
    """Model and training settings of one run, one part per job."""

    model: ModelConfig = field(default_factory=ModelConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    reg: RegConfig = field(default_factory=RegConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    @property
    def sweeps_frozen(self) -> bool:
        """Fine-tuning sweeps the learning rate with the body frozen, as fastai's
        vision_learner does: the rate it picks is first used on the frozen model (fine_tune's
        first phase), and a sweep through the whole pretrained body blows up sooner, for a
        smaller rate."""
        return self.model.fine_tunes and self.schedule.freeze_epochs > 0

    def check(self) -> None:
        if self.optim.mom is not None and self.schedule.lr_schedule == "one_cycle":
            raise OptimConfig.error("mom", "is held only by --schedule flat_cos: one_cycle "
                                    f"cycles the momentum {ONE_CYCLE_MOMS}", self.optim.mom)


# --- config.json of runs written before the settings were nested ----------------------------
_RENAMED = {"accum": "accum_steps"}
_DROPPED = ("seed",)  # TrainConfig's copy of DataConfig.seed (the command line set both)


def read_settings(obj: Any, where: str) -> tuple[DataConfig, TrainConfig]:
    """(DataConfig, TrainConfig) of a config.json object, today's layout or the flat one
    that runs before the nesting wrote."""
    if not isinstance(obj, dict) or "data" not in obj or "train" not in obj:
        raise ConfigError(f"{where}: expected an object with data and train")
    data, train = obj["data"], obj["train"]
    if "path" in data:  # flat: DataSource's fields at the top, aug nested
        flat = {k: v for k, v in data.items() if k != "aug"} | dict(data.get("aug", {}))
        data = DataConfig.build(flat)
    else:
        data = DataConfig.from_json(data, f"{where}: data")
    if "model" not in train:
        flat = {_RENAMED.get(k, k): v for k, v in train.items() if k not in _DROPPED}
        train = TrainConfig.build(flat)
    else:
        train = TrainConfig.from_json(train, f"{where}: train")
    return data, train


