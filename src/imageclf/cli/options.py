"""Every command-line option, declared once, and the settings built from them by name.

An option's parameter name is the settings field it sets (`--min-scale` → AugConfig's
`min_scale`), so `data_config` and `train_config` build the dataclasses from a command's
values without listing them again."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from imageclf.config import AugConfig, DataConfig, TrainConfig
from imageclf.errors import ConfigError

# no markup or emoji codes in what is printed: paths, class names and error messages are
# the user's text ("runs/[v2]", a gloo error naming "[pair.cc:152]") and print as they are
console = Console(soft_wrap=True, markup=False, emoji=False)
err = Console(stderr=True, soft_wrap=True, markup=False, emoji=False)

_AUG = AugConfig()


def _opt(*names: str, help: str | None = None) -> Any:  # noqa: A002 - typer's own word
    return typer.Option(*names, help=help)


# --- data ------------------------------------------------------------------------------
DataArg = Annotated[Path, typer.Argument(help="A folder of class folders (train/ + valid/ or "
                                         "val/ inside, or one folder per class), or a CSV.")]
Size = Annotated[int, _opt("--size", help="Side of the images the model sees.")]
Presize = Annotated[int, _opt("--presize", help="Side of the CPU presize (>= size).")]
Bs = Annotated[int, _opt("--bs", help="Batch size (per process).")]
Csv = Annotated[str | None, _opt("--csv", help="CSV of filename,label[,is_valid].")]
LabelRegex = Annotated[str | None, _opt(
    "--label-regex", help="Label = group 1 of this regex on each file name.")]
ImageCol = Annotated[str | None, _opt(
    "--image-col", help="Parquet/Arrow DATA: the image column (default: image, img, ...).")]
LabelCol = Annotated[str | None, _opt(
    "--label-col", help="Parquet/Arrow DATA: the label column (default: label, labels, ...).")]
SplitCol = Annotated[str | None, _opt(
    "--split-col", help="Parquet/Arrow DATA: a column of train / validation (valid, val) / "
    "test; test rows are left out. Default: the files' names (train-*, validation-*).")]
ValidPct = Annotated[float, _opt("--valid-pct", help="Random validation share when no split.")]
Seed = Annotated[int, _opt("--seed", help="Seed for the split, the model and augmentation.")]
CacheDir = Annotated[str | None, _opt(
    "--cache-dir", help="Presize cache folder (default $IMAGECLF_CACHE_DIR, "
    "$XDG_CACHE_HOME/imageclf or ~/.cache/imageclf).")]
ResizeMethod = Annotated[str, _opt("--resize-method", help="crop, squish or pad.")]
MultiLabel = Annotated[bool, _opt("--multi-label", help="Several labels per image.")]
Decode = Annotated[str, _opt(
    "--decode", help="How the first pass decodes: cpu (Pillow, JPEG draft mode, worker "
    "processes) or device (JPEGs decoded and presized on the training device: nvJPEG on a "
    "GPU; other formats still by Pillow).")]
DecodeWorkers = Annotated[int, _opt(
    "--decode-workers", help="Processes decoding for the cache's first build (0: one per "
    "CPU core).")]
# --- augmentation (AugConfig's fields; fastai's aug_transforms defaults) ----------------
MinScale = Annotated[float, _opt("--min-scale", help="Random-resized crop: smallest share "
                                 f"of the area kept (default {_AUG.min_scale}).")]
MaxRotate = Annotated[float, _opt("--max-rotate", help="Largest rotation in degrees.")]
MaxZoom = Annotated[float, _opt("--max-zoom", help="Largest zoom in (>= 1).")]
MaxWarp = Annotated[float, _opt("--max-warp", help="Largest perspective warp (0: none).")]
MaxLighting = Annotated[float, _opt("--max-lighting",
                                    help="Largest brightness/contrast change (0: none).")]
NoFlip = Annotated[bool, _opt("--no-flip", help="No horizontal flips (text, digits, "
                              "anything whose mirror image is another class).")]
# --- model and training -----------------------------------------------------------------
Arch = Annotated[str, _opt("--arch", help="Any timm architecture name.")]
Pretrained = Annotated[str, _opt(
    "--pretrained", help="hub (timm's weights; the command line's default), none, a "
    ".safetensors/.pth file, or an imageclf model/ folder. The Python TrainConfig defaults "
    "to none, so that building settings in code never reaches the network.")]
Head = Annotated[str, _opt("--head", help="auto, concat (fastai's: concat pool, BN, dropout, "
                                   "two linear layers) or timm (pool + linear). auto: timm "
                                   "from scratch, concat when fine-tuning.")]
Epochs = Annotated[int, _opt("--epochs")]
FreezeEpochs = Annotated[int, _opt("--freeze-epochs",
                                   help="Epochs of the head alone first, when pretrained.")]
Lr = Annotated[str, _opt(
    "--lr", help="A number, or run lr_find and take its suggestion: valley, slide, minimum (a "
    "tenth of the rate at the lowest loss) or steep; auto: valley when pretrained, minimum "
    "from scratch.")]
Wd = Annotated[float, _opt("--wd", help="AdamW weight decay (not on norms and biases).")]
Precision = Annotated[str, _opt("--precision", help="auto, bf16, fp16 or fp32.")]
LabelSmoothing = Annotated[float, _opt("--label-smoothing")]
Device = Annotated[str, _opt("--device", help="auto (the GPU when there is one), cuda or cpu.")]
LrFindSteps = Annotated[int, _opt(
    "--lr-find-steps", help="Optimiser steps in the learning-rate finder's sweep (fewer: "
    "faster, coarser curve).")]
AccumSteps = Annotated[int, _opt(
    "--accum-steps", help="Batches whose gradients add up to one optimiser step: each step "
    "sees bs x N images per process, for a larger batch than memory holds.")]
Compile = Annotated[bool, _opt(
    "--compile", help="torch.compile the training step: a slower start (compiling, again "
    "after unfreezing), faster steps after; for GPUs and long runs.")]
Out = Annotated[str | None, _opt("--out", help="Run directory.")]
Resume = Annotated[Path | None, _opt(
    "--resume", help="Continue this run directory from its last checkpoint.")]
AutoResume = Annotated[bool, _opt(
    "--auto-resume", help="For jobs that may be restarted (torchrun --max-restarts, "
    "preemptible machines): continue --out's run from its last checkpoint when it has one, "
    "start it otherwise; a finished run is left as it is.")]
CheckpointEvery = Annotated[float, _opt(
    "--checkpoint-every", help="Minutes between checkpoints within an epoch (0: only at "
    "epoch ends).")]
ClassWeights = Annotated[str, _opt(
    "--class-weights", help="Weight the loss per class: auto (inverse frequency, mean 1; "
    "multi-label: pos_weight), none, or a JSON file {class: weight}.")]
Sampler = Annotated[str, _opt(
    "--sampler", help="shuffle (each image once an epoch) or balanced (classes drawn equally "
    "often, with replacement).")]
Metric = Annotated[str | None, _opt(
    "--metric", help="The metric the run's summary watches: accuracy, macro_f1, "
    "balanced_accuracy, top5_accuracy, valid_loss (multi-label: accuracy_multi, mAP).")]
Tensorboard = Annotated[bool, _opt(
    "--tensorboard", help="Log losses, rates, metrics, images and hyperparameters to "
    "RUN_DIR/tensorboard/ (pip install 'imageclf[tensorboard]').")]
Sizes = Annotated[str | None, _opt(
    "--sizes", help="Progressive resizing: training sizes per stage, spread over the epochs, "
    "ending at --size (e.g. 64,96,128).")]
ValidSize = Annotated[int | None, _opt(
    "--valid-size", help="Side validation and the exported model see (default --size; a "
    "little above it often predicts better).")]
Ema = Annotated[float, _opt("--ema", help="Keep a moving average of the weights with this "
                             "decay (e.g. 0.999) and validate/export it (0: off).")]
Mixup = Annotated[float, _opt("--mixup", help="Mixup with Beta(alpha, alpha) (0: off).")]
Cutmix = Annotated[float, _opt("--cutmix", help="CutMix with Beta(alpha, alpha) (0: off).")]
# --- using a model ------------------------------------------------------------------------
ModelArg = Annotated[Path, typer.Argument(help="A model/ folder written by `imageclf train`.")]
Json = Annotated[bool, _opt("--json", help="Print JSON.")]
MinConfidence = Annotated[float | None, _opt(
    "--min-confidence", help="Answer 'none' when the top softmax probability is below this "
    "(replaces model.json's rule with msp at this threshold).")]
Ood = Annotated[Path | None, _opt(
    "--ood", help="A folder of images from no known class (sub-folders and labels ignored): "
    "report how well each open-set score tells them from the known classes.")]
Keep = Annotated[float, _opt(
    "--keep", help="Share of known (validation) images that must keep a label: the "
    "threshold's true-positive rate.")]
# --- serving --------------------------------------------------------------------------------
ServeModelArg = Annotated[Path, typer.Argument(
    help="A model/ folder, or a run directory holding one.")]
Host = Annotated[str, _opt("--host", help="Address to listen on (loopback only by default).")]
Port = Annotated[int, _opt("--port", help="Port to listen on.")]
MaxBatch = Annotated[int, _opt("--max-batch", help="Most images in one forward pass.")]
MaxWaitMs = Annotated[float, _opt("--max-wait-ms",
                                  help="Longest wait for more images before a batch runs.")]
MaxUploadMb = Annotated[float, _opt("--max-upload-mb", help="Largest request body.")]
MaxFiles = Annotated[int, _opt("--max-files", help="Most files in one request.")]
Token = Annotated[str | None, _opt("--token", help="Require 'Authorization: Bearer TOKEN' "
                                   "(default $IMAGECLF_TOKEN).")]
CorsOrigin = Annotated[str | None, _opt("--cors-origin",
                                        help="Allow this origin's pages to call the API.")]
Tta = Annotated[bool, _opt("--tta", help="Average flipped/zoomed views.")]
PredictSize = Annotated[int | None, _opt(
    "--size", help="Predict at this side instead of the model's own (model.json size).")]
Output = Annotated[Path | None, _opt("-o", "--output")]



def aug_config(opts: dict[str, Any]) -> AugConfig:
    """AugConfig from a command's augmentation options (defaults for those it lacks)."""
    names = {f.name for f in dataclasses.fields(AugConfig)}
    kw = {k: v for k, v in opts.items() if k in names}
    if opts.get("no_flip"):
        kw["flip_p"] = 0.0
    return AugConfig(**kw)


def data_config(data: Path, opts: dict[str, Any], **fixed: Any) -> DataConfig:
    """DataConfig from a command's options, matched by name (`fixed` overrides them)."""
    names = {f.name for f in dataclasses.fields(DataConfig)} - {"path", "aug"}
    kw = {k: v for k, v in opts.items() if k in names} | fixed
    return DataConfig(path=str(data), aug=aug_config(opts), **kw)


def parse_sizes(text: str | None) -> tuple[int, ...] | None:
    """--sizes 64,96,128 → (64, 96, 128)."""
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--sizes takes sizes separated by commas, e.g. 64,96,128; got "
                          f"{text!r}") from None


def train_config(opts: dict[str, Any], **fixed: Any) -> TrainConfig:
    """TrainConfig from a command's options, matched by name (`fixed` overrides them)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    opts = dict(opts, accum=opts.get("accum_steps", 1), sizes=parse_sizes(opts.get("sizes")))
    return TrainConfig(**({k: v for k, v in opts.items() if k in names} | fixed))


def check_device(device: str) -> None:
    """--device must be one of auto, cpu, cuda."""
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda; got {device!r}")
