"""The settings of the commands beside training: pack (the store it writes), predict and
evaluate (how a model folder runs over images), calibrate, serve. Declared once, like the
training settings (config.py)."""

from __future__ import annotations

from dataclasses import dataclass

from imageclf.core.config import PRECISIONS, RESIZE_METHODS
from imageclf.core.settings import Settings, setting


def _quality(text: str | int) -> str | int:
    """--quality: `auto`, or a number."""
    return int(text) if str(text).strip().isdigit() else str(text).strip()


def _mib(n: int) -> int:
    return n * 2**20


@dataclass(frozen=True)
class PackSettings(Settings):
    """How `pack` writes a store: the presize and JPEG of its images, its shards, the order
    of its samples."""

    section = "Store"
    presize: int = setting(256, "Side of the CPU presize of the stored images. Default 256, "
                           "or a store's own presize when DATA is a store.", ge=8,
                           cli_default=None, cli_type=int)
    method: str = setting("crop", "How a non-square image becomes square.",
                          choices=RESIZE_METHODS, flag="--resize-method")
    quality: int | str = setting(90, "JPEG quality of the stored images (1-100), or auto: the "
                                 "smallest setting whose median PSNR on a sample reaches "
                                 "--psnr.", cli_type=str, parse=_quality, metavar="Q|auto")
    shard_bytes: int = setting(512 * 2**20, "Size of each tar shard, in MiB.", flag="--shard-mb",
                               cli_type=int, cli_default=512, parse=_mib, ge=1)
    workers: int = setting(0, "Processes presizing (0: one per core).", ge=0)
    seed: int = setting(0, "Seed of a random split and of the samples' order.")
    psnr: float = setting(38.0, "--quality auto's target: the median PSNR (dB) of the stored "
                          "images against the presized ones.", gt=0)
    subsampling: int = setting(0, "Chroma subsampling: 0 (4:4:4) or 2 (4:2:0); --quality "
                               "auto chooses it.", choices=(0, 2), cli=False)

    def check(self) -> None:
        q = self.quality
        if q != "auto" and (isinstance(q, bool) or not isinstance(q, int) or not 1 <= q <= 100):
            raise self.error("quality", "must be auto or an integer in [1, 100]", q)


@dataclass(frozen=True)
class PredictOptions(Settings):
    """How a model folder runs over images: predict, evaluate and calibrate."""

    section = "Prediction"
    bs: int = setting(32, "Images per forward pass.", ge=1)
    tta: bool = setting(False, "Average flipped/zoomed views.")
    precision: str = setting("auto", "auto, bf16, fp16 or fp32.", choices=PRECISIONS)
    size: int | None = setting(None, "Predict at this side instead of the model's own "
                               "(model.json size).", ge=8)


@dataclass(frozen=True)
class BatchOptions(Settings):
    """predict -o: a whole source into Parquet parts (docs/batch-predict.md)."""

    section = "Batch prediction"
    chunk: int = setting(4096, "Images a Parquet part: the unit a rerun resumes from and "
                         "torchrun's ranks share.", ge=1)
    embeddings: bool = setting(False, "Add the pooled features (the body's output) to each "
                               "row.")
    decoders: int = setting(0, "Threads decoding images ahead of the model (0: up to 4, one "
                            "a core).", ge=0)
    decode: str = setting("cpu", "cpu (Pillow in the decoding threads) or device (a batch's "
                          "JPEGs decoded together on the model's device: nvJPEG on a GPU).",
                          choices=("cpu", "device"))


@dataclass(frozen=True)
class AuditSettings(Settings):
    """How `audit` looks for wrong labels, duplicates and strays (docs/data-health.md)."""

    section = "Audit"
    model: str | None = setting(None, "Features from this model/ folder (or run) instead of "
                                "training: the fast path.", cli_type=str)
    folds: int = setting(0, "0: one model (trained on the given labels unless --model or "
                         "--pretrained gives the features), then a cross-validated linear "
                         "head on its features; K >= 2: K models trained as train would, "
                         "each judging the fold it did not see.", ge=0)
    near: float = setting(0.75, "Near duplicates: the least cosine similarity of the images' "
                          "whitened low-frequency descriptors.", gt=0, le=1)
    stray_share: float = setting(0.01, "Strays: the share of images least like the rest of "
                                 "the set that is listed.", ge=0, le=1)

    def check(self) -> None:
        if self.folds == 1:
            raise self.error("folds", "must be 0 (one model and a cross-validated head) or "
                             "at least 2", self.folds)


@dataclass(frozen=True)
class CalibrateSettings(Settings):
    """How `calibrate` chooses the "none of these" rule."""

    section = "Calibration"
    keep: float = setting(0.95, "Share of known (validation) images that must keep a label: "
                          "the threshold's true-positive rate.", gt=0, lt=1)
    score: str = setting("auto", "auto, msp, max_logit, energy, knn, mahalanobis, "
                         "msp+mahalanobis; with timm's head also vim, ash, scale, msp+vim "
                         "(multi-label: sigmoid_max instead of msp). auto: the best AUROC on "
                         "--ood, or on a --negatives model's held-out negatives; else the "
                         "documented default.")
    bank_rows: int = setting(10_000, "knn: most training features kept (fp16, an equal "
                             "share per class).", ge=1)
    k: int = setting(10, "knn: which nearest neighbour.", ge=1)


@dataclass(frozen=True)
class ServeConfig(Settings):
    """How the server batches and what it accepts."""

    section = "Serving"
    max_batch: int = setting(32, "Most images in one forward pass.", ge=1)
    max_wait_ms: float = setting(5.0, "Longest wait for more images to batch.", ge=0)
    max_upload_mb: float = setting(20.0, "Largest request body.", gt=0)
    max_files: int = setting(16, "Most files in one request.", ge=1)
    top_k: int = setting(5, "Classes listed per image.", ge=1, cli=False)
    token: str | None = setting(None, "Require this bearer token (default "
                                "$IMAGECLF_TOKEN).")
    cors_origin: str | None = setting(None, "Allow this origin's pages to call the API.")
    tta: bool = setting(False, "Average flipped/zoomed views (4x compute).")
    size: int | None = setting(None, "Predict at this side (default: the model's).",
                               ge=8)
    name: str | None = setting(None, "The model's name under /v2/models/ (default: the "
                               "run's folder name).")
