"""Frozen settings for data, augmentation, model and training, with a JSON round trip."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from imageclf.errors import ConfigError
from imageclf.meta import HEADS, RESIZE_METHODS

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
LR_RULES = ("auto", "valley", "slide", "minimum", "steep")  # --lr values that run lr_find
SAMPLERS = ("shuffle", "balanced")
__all__ = ["AugConfig", "ConfigError", "DataConfig", "TrainConfig", "from_dict", "to_dict"]


@dataclass(frozen=True)
class AugConfig:
    """Batch augmentation settings (fastai's `aug_transforms` defaults)."""

    flip_p: float = 0.5
    max_rotate: float = 10.0  # degrees
    max_zoom: float = 1.1
    max_warp: float = 0.2
    min_scale: float = 0.75  # random-resized crop: smallest area fraction kept
    ratio: tuple[float, float] = (1.0, 1.0)  # aspect range of the crop (fastai: square)
    max_lighting: float = 0.2
    p_affine: float = 0.75
    p_lighting: float = 0.75
    pad_mode: str = "reflection"

    def __post_init__(self) -> None:
        if self.pad_mode not in ("reflection", "border", "zeros"):
            raise ConfigError(
                f"pad_mode must be one of reflection, border, zeros; got {self.pad_mode!r}"
            )
        if not 0 < self.min_scale <= 1:
            raise ConfigError(f"--min-scale must be in (0, 1]; got {self.min_scale}")
        if self.max_zoom < 1:
            raise ConfigError(f"--max-zoom must be >= 1; got {self.max_zoom}")
        if not 0 <= self.max_rotate <= 180:
            raise ConfigError(f"--max-rotate must be between 0 and 180 degrees; "
                              f"got {self.max_rotate}")
        if not 0 <= self.max_warp < 1:
            raise ConfigError(f"--max-warp must be in [0, 1); got {self.max_warp}")
        if not 0 <= self.max_lighting < 1:
            raise ConfigError(f"--max-lighting must be in [0, 1); got {self.max_lighting}")
        if not 0 <= self.flip_p <= 1:
            raise ConfigError(f"flip_p must be a probability in [0, 1]; got {self.flip_p}")


@dataclass(frozen=True)
class DataConfig:
    """Where the images are, how they are split, presized and batched."""

    path: str = "."
    size: int = 224
    presize: int = 460
    resize_method: str = "crop"
    bs: int = 64
    valid_pct: float = 0.2
    seed: int = 0
    label_regex: str | None = None
    csv: str | None = None
    multi_label: bool = False
    cache_dir: str | None = None
    decode_workers: int = 0  # 0: one per CPU core
    decode: str = "cpu"  # cpu: Pillow in worker processes; device: JPEGs on the training device
    sampler: str = "shuffle"  # shuffle: each image once an epoch; balanced: classes equally
    valid_size: int | None = None  # side validation (and the exported model) sees; None: size
    image_col: str | None = None  # Parquet/Arrow data: the columns (None: found by name)
    label_col: str | None = None
    split_col: str | None = None
    aug: AugConfig = field(default_factory=AugConfig)

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ConfigError(f"--size must be at least 8 pixels; got {self.size}")
        if self.presize < self.size:
            raise ConfigError(
                f"--presize ({self.presize}) must be >= --size ({self.size}): presizing leaves "
                f"margin for augmentation; try --presize {max(self.size, round(self.size * 1.25))}"
            )
        if self.resize_method not in RESIZE_METHODS:
            raise ConfigError(
                f"--resize-method must be one of {', '.join(RESIZE_METHODS)}; "
                f"got {self.resize_method!r}"
            )
        if self.bs < 1:
            raise ConfigError(f"--bs must be at least 1; got {self.bs}")
        if self.decode_workers < 0:
            raise ConfigError(f"--decode-workers must be >= 0 (0: one per CPU core); "
                              f"got {self.decode_workers}")
        if self.decode not in ("cpu", "device"):
            raise ConfigError(f"--decode must be cpu or device; got {self.decode!r}")
        if not 0 < self.valid_pct < 1:
            raise ConfigError(f"--valid-pct must be between 0 and 1; got {self.valid_pct}")
        if self.valid_size is not None and not 8 <= self.valid_size <= self.presize:
            raise ConfigError(f"--valid-size must be between 8 and --presize ({self.presize}); "
                              f"got {self.valid_size}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"--sampler must be one of {', '.join(SAMPLERS)}; "
                              f"got {self.sampler!r}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a settings dataclass (nested dataclasses included)."""
    return dataclasses.asdict(cfg)


def _build(cls: type, data: dict[str, Any]) -> Any:
    kwargs = {}
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} settings: {sorted(unknown)}")
    for name, value in data.items():
        ftype = names[name].type
        if isinstance(value, dict) and name == "aug":
            value = _build(AugConfig, value)
        elif isinstance(value, list) and "tuple" in str(ftype):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a settings dataclass from `to_dict`'s output."""
    return _build(cls, data)


LR_FIND_STEPS = 100  # batches in the learning-rate finder's sweep, by default


@dataclass(frozen=True)
class TrainConfig:
    """Model and training settings of one run."""

    arch: str = "resnet18"
    pretrained: str = "none"  # hub | none | PATH (weights file or an imageclf model/ folder)
    head: str = "auto"  # auto: timm's plain head from scratch, fastai's concat when pretrained
    epochs: int = 4
    freeze_epochs: int = 1
    lr: str = "auto"  # a number, or a finder rule (auto, valley, slide, minimum, steep)
    wd: float = 0.01
    precision: str = "auto"
    label_smoothing: float = 0.0
    seed: int = 0
    out: str | None = None
    compile: bool = False  # torch.compile the training forward (inductor)
    lr_find_steps: int = LR_FIND_STEPS  # the finder's sweep: at most this many steps
    accum: int = 1  # batches per optimiser step (gradient accumulation)
    class_weights: str = "none"  # none | auto (inverse frequency) | a JSON file {class: w}
    metric: str | None = None  # what the run's summary watches (None: valid accuracy)
    tensorboard: bool = False  # write RUN_DIR/tensorboard/
    sizes: tuple[int, ...] | None = None  # progressive resizing: the size per stage
    ema: float = 0.0  # decay of the weights' moving average (0: off)
    mixup: float = 0.0  # Beta(alpha, alpha) of mixup (0: off)
    cutmix: float = 0.0  # Beta(alpha, alpha) of CutMix (0: off)

    @property
    def fine_tunes(self) -> bool:
        """Pretrained weights: fine_tune (frozen, then unfrozen) rather than fit_one_cycle."""
        return self.pretrained != "none"

    @property
    def model_head(self) -> str:
        """The head built: auto is timm's plain one (pool + linear) from scratch, where it
        learns sooner than fastai's concat head with its dropout (Imagenette, 2 epochs at
        64 px: 65.5% vs 60.7%; the demo's shapes: 82% vs 32%), and the concat head when
        fine-tuning a pretrained body, as fastai does."""
        if self.head != "auto":
            return self.head
        return "concat" if self.fine_tunes else "timm"

    @property
    def sweeps_frozen(self) -> bool:
        """Fine-tuning sweeps the learning rate with the body frozen, as fastai's
        vision_learner does: the rate it picks is first used on the frozen model (fine_tune's
        first phase), and a sweep through the whole pretrained body blows up sooner, for a
        smaller rate."""
        return self.fine_tunes and self.freeze_epochs > 0

    @property
    def lr_rule(self) -> str | None:
        """The lr_find rule that sets the rate (lr_finder.resolve_rule turns auto into a
        suggestion once the sweep has run), None for a number."""
        return self.lr if self.lr in LR_RULES else None

    def __post_init__(self) -> None:
        if self.head not in ("auto", *HEADS):
            raise ConfigError(f"--head must be auto, {' or '.join(HEADS)}; got {self.head!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}; "
                              f"got {self.precision!r}")
        if self.lr_rule is None:
            try:
                value = float(self.lr)
            except ValueError:
                raise ConfigError(f"--lr must be a number or one of {', '.join(LR_RULES)} "
                                  f"(lr_find's suggestions); got {self.lr!r}") from None
            if not 0 < value < 10:
                raise ConfigError(f"--lr must be between 0 and 10; got {self.lr}")
        if self.accum < 1:
            raise ConfigError(f"--accum-steps must be at least 1; got {self.accum}")
        if self.lr_find_steps < 10:
            raise ConfigError(f"--lr-find-steps must be at least 10; got {self.lr_find_steps}")
        if self.epochs < 0 or self.freeze_epochs < 0:
            raise ConfigError("--epochs and --freeze-epochs must be >= 0")
        if self.wd < 0:
            raise ConfigError(f"--wd must be >= 0; got {self.wd}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label-smoothing must be in [0, 1); got {self.label_smoothing}")
        if self.sizes is not None and (not self.sizes or any(
                not isinstance(v, int) or v < 8 for v in self.sizes)):
            raise ConfigError(f"--sizes must be sizes of at least 8 pixels; got {self.sizes}")
        if not (self.ema == 0 or 0 < self.ema < 1):
            raise ConfigError(f"--ema must be a decay in (0, 1), e.g. 0.999; got {self.ema}")
        if self.mixup < 0 or self.cutmix < 0:
            raise ConfigError("--mixup and --cutmix take a Beta alpha >= 0 (0: off)")
        if self.tensorboard:
            from imageclf.tracking import check_tensorboard

            check_tensorboard()
        if self.class_weights not in ("none", "auto") and not self.class_weights.endswith(
                ".json"):
            raise ConfigError("--class-weights must be auto, none or a .json file of "
                              f"{{class: weight}}; got {self.class_weights!r}")
