"""Open-set scores: how much an image looks like the classes the model knows.

Every score is "higher = more like a known class"; an image whose score falls below the
stored threshold is answered `none`. Pure functions on logits (B, C) and pooled backbone
features (B, D), plus the figures that compare them (AUROC, FPR at a kept share); the rule
a model folder stores is `none_rule.NoneRule`.

- `msp`: the softmax's top probability (the baseline of the open-set literature);
- `max_logit`: the largest logit;
- `energy`: T·logsumexp(logits/T), the negative free energy (Liu et al. 2020);
- `sigmoid_max`: the largest sigmoid, for multi-label models;
- `knn`: minus the cosine distance to the k-th nearest training feature (Sun et al. 2022),
  features L2-normalised;
- `mahalanobis`: minus the smallest Mahalanobis distance to a class mean, with one shared
  covariance (Lee et al. 2018);
- `msp+mahalanobis` (`sigmoid_max+mahalanobis` for multi-label models): the sum of the two
  scores, each standardised by its mean and spread on the known validation images, so
  the confidence that tells near classes apart and the feature distance that tells far
  images apart vote equally.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from imageclf.core.errors import ConfigError, DamagedFileError
from imageclf.core.fileio import atomic_write
from imageclf.core.modelmeta import KNN_K
from imageclf.core.modelmeta import OPEN_SET_SCORES as SCORES

LOGIT_SCORES = ("msp", "max_logit", "energy", "sigmoid_max")
FUSED = ("msp+mahalanobis", "sigmoid_max+mahalanobis", "msp+vim")
HEAD_SCORES = ("vim", "ash", "scale")  # read the linear head's weights (timm's head)
FEATURE_SCORES = tuple(n for n in SCORES if n not in LOGIT_SCORES)  # need the statistics
assert set(LOGIT_SCORES + FEATURE_SCORES) == set(SCORES)
STATS_FILE = "open_set.safetensors"
BANK_ROWS = 10_000  # at most this many training features are kept for knn (fp16)
ASH_PERCENTILE = 0.90  # ASH-S keeps the top 10% of each feature vector (Djurisic et al.)
SCALE_PERCENTILE = 0.85  # SCALE's scale factor from the top 15% (Xu et al. 2024)


# --- the scores --------------------------------------------------------------------------
def msp(logits: torch.Tensor) -> torch.Tensor:
    """Top softmax probability."""
    return logits.float().softmax(1).amax(1)


def max_logit(logits: torch.Tensor) -> torch.Tensor:
    """Largest logit."""
    return logits.float().amax(1)


def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Negative free energy, T·logsumexp(logits / T): the energy E(x) = -T·logsumexp(f/T)
    is low for known images, so its negative is high for them, like every other score."""
    return temperature * torch.logsumexp(logits.float() / temperature, 1)


def sigmoid_max(logits: torch.Tensor) -> torch.Tensor:
    """Largest independent sigmoid (multi-label models)."""
    return logits.float().sigmoid().amax(1)


def normalise(features: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm, float32."""
    return F.normalize(features.float(), dim=1)


def knn(features: torch.Tensor, bank: torch.Tensor, k: int = KNN_K) -> torch.Tensor:
    """Minus the cosine distance from each (normalised) feature to its k-th nearest row of
    `bank` (normalised training features)."""
    if not 1 <= k <= bank.shape[0]:
        raise ConfigError(f"knn: k must be between 1 and the bank's {bank.shape[0]} rows; "
                          f"got {k}")
    sim = normalise(features) @ bank.float().T
    kth = sim.topk(k, dim=1).values[:, -1]
    return kth - 1.0  # = -(1 - cos)


def mahalanobis(features: torch.Tensor, means: torch.Tensor,
                precision: torch.Tensor) -> torch.Tensor:
    """Minus the smallest Mahalanobis distance (squared) to a class mean."""
    f = features.float()
    d = f[:, None, :] - means.float()[None]  # (B, C, D)
    m = torch.einsum("bcd,de,bce->bc", d, precision.float(), d)
    return -m.amin(1)


def fit_mahalanobis(features: torch.Tensor, labels: torch.Tensor, n_classes: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means (C, D) and the shared precision matrix (D, D) of training features
    (rows labelled -1, images with no class, are left out)."""
    f = features.float()
    means = torch.zeros(n_classes, f.shape[1])
    centred = []
    for c in range(n_classes):
        rows = f[labels == c]
        if len(rows):
            means[c] = rows.mean(0)
            centred.append(rows - means[c])
    if not centred:
        raise ConfigError("mahalanobis needs labelled training images")
    x = torch.cat(centred)
    cov = x.T @ x / len(x)
    cov += torch.eye(cov.shape[0]) * (1e-6 + 1e-3 * cov.diagonal().mean())  # stays invertible
    return means, torch.linalg.inv(cov)


def _top_share(features: torch.Tensor, percentile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask of each row's entries above its `percentile`, exp(sum / sum above)): the
    activation-shaping pieces of ASH-S and SCALE."""
    f = features.float()
    keep = max(1, int(round(f.shape[1] * (1.0 - percentile))))
    top = f.topk(keep, dim=1)
    mask = torch.zeros_like(f, dtype=torch.bool).scatter_(1, top.indices, True)
    s_all = f.sum(1)
    s_top = top.values.sum(1).clamp_min(1e-12)
    return mask, torch.exp((s_all / s_top).clamp(max=80.0))


def ash(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
        percentile: float = ASH_PERCENTILE) -> torch.Tensor:
    """ASH-S (Djurisic et al. 2023): each pooled feature vector keeps only its top
    (1 - percentile) entries, scaled by exp(sum of all / sum kept); the score is the energy
    of the head's logits on that shaped vector."""
    mask, factor = _top_share(features, percentile)
    shaped = features.float() * mask * factor[:, None]
    return energy(shaped @ weight.float().T + bias.float())


def scale(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
          percentile: float = SCALE_PERCENTILE) -> torch.Tensor:
    """SCALE (Xu et al. 2024): the whole pooled vector scaled by exp(sum / sum of its top
    (1 - percentile) entries), nothing pruned; the energy of the head's logits on it."""
    _, factor = _top_share(features, percentile)
    return energy((features.float() * factor[:, None]) @ weight.float().T + bias.float())


def fit_vim(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
            principal: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ViM's statistics (Wang et al. 2022) from training features: the origin u = -W⁺b
    (where the logits are all zero), the basis (D, D - principal) of the directions
    outside the `principal` (default D/2) main directions of the features about u, and
    alpha, which scales the residual norm to the size of the training images' max logits."""
    f = features.float()
    u = -torch.linalg.pinv(weight.float()) @ bias.float()
    x = f - u
    d = x.shape[1]
    principal = min(d - 1, max(1, d // 2 if principal is None else principal))
    _, vecs = torch.linalg.eigh(x.T @ x / len(x))  # ascending eigenvalues
    basis = vecs[:, : d - principal].contiguous()  # the smallest: the residual space
    residual = (x @ basis).norm(dim=1)
    logits = f @ weight.float().T + bias.float()
    alpha = logits.amax(1).mean() / residual.mean().clamp_min(1e-12)
    return u, basis, alpha.reshape(1)


def vim(features: torch.Tensor, logits: torch.Tensor, origin: torch.Tensor,
        basis: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """ViM: logsumexp of the logits minus alpha × the norm of the feature's part outside
    the training features' principal space (a virtual "none" logit)."""
    residual = ((features.float() - origin.float()) @ basis.float()).norm(dim=1)
    return torch.logsumexp(logits.float(), 1) - alpha.float() * residual


def per_class_sample(labels: torch.Tensor, rows: int, seed: int = 0) -> torch.Tensor:
    """Sorted indices of at most `rows` items (at least one per class when there are more
    classes than rows): an equal share per label value, a smaller class keeping all of its
    items, drawn with a fixed seed; every index when they fit."""
    if len(labels) <= rows:
        return torch.arange(len(labels))
    g = torch.Generator().manual_seed(seed)
    classes = labels.unique()
    share = max(1, rows // len(classes))
    keep = []
    for c in classes:
        idx = torch.nonzero(labels == c).flatten()
        keep.append(idx[torch.randperm(len(idx), generator=g)[:share]])
    return torch.cat(keep).sort().values


def sample_bank(features: torch.Tensor, labels: torch.Tensor, rows: int = BANK_ROWS,
                seed: int = 0) -> torch.Tensor:
    """Normalised features, fp16, at most `rows`: subsampled per class (`per_class_sample`)."""
    return normalise(features[per_class_sample(labels, rows, seed)]).half()


# --- comparing scores --------------------------------------------------------------------
def auroc(known: torch.Tensor, unknown: torch.Tensor) -> float:
    """Area under the ROC curve of telling known (positive) from unknown images by score:
    the chance a random known image scores above a random unknown one, ties counting
    half (the Mann-Whitney U statistic)."""
    if len(known) == 0 or len(unknown) == 0:
        raise ConfigError("AUROC needs at least one known and one unknown image")
    s = torch.cat([known.double(), unknown.double()])
    order = s.argsort()
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, len(s) + 1, dtype=torch.float64)
    # average the ranks of tied scores
    uniq, inverse, counts = s.unique(return_inverse=True, return_counts=True)
    sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, ranks)
    ranks = (sums / counts)[inverse]
    n1, n0 = len(known), len(unknown)
    u = ranks[:n1].sum() - n1 * (n1 + 1) / 2
    return float(u / (n1 * n0))


def threshold_for(known: torch.Tensor, keep: float) -> float:
    """The score at or above which `keep` of the known images lie (to within one image)."""
    if not 0 < keep <= 1:
        raise ConfigError(f"--keep must be in (0, 1]; got {keep}")
    if len(known) == 0:
        raise ConfigError("a threshold needs at least one known image")
    s = known.double().sort().values
    drop = int((1.0 - keep) * len(s) + 1e-9)  # images allowed below the line
    return float(s[min(drop, len(s) - 1)])


def fpr_at(known: torch.Tensor, unknown: torch.Tensor, keep: float = 0.95) -> float:
    """Share of unknown images accepted (score at or above the threshold that keeps `keep`
    of the known ones): FPR at TPR = keep."""
    t = threshold_for(known, keep)
    return float((unknown.double() >= t).float().mean())


def compare(known: dict[str, torch.Tensor], unknown: dict[str, torch.Tensor],
            keep: float = 0.95) -> dict[str, dict[str, float]]:
    """{score: {auroc, fpr}} for every score present in both."""
    return {name: {"auroc": auroc(known[name], unknown[name]),
                   "fpr": fpr_at(known[name], unknown[name], keep)}
            for name in known if name in unknown}


def best(figures: dict[str, dict[str, float]]) -> str:
    """The score with the highest AUROC (the lower FPR breaks a tie)."""
    return max(figures, key=lambda n: (figures[n]["auroc"], -figures[n]["fpr"]))


# a score "holds far" when its far AUROC is within FAR_SLACK of the best score's, or of
# FAR_FLOOR when the best is above it (bench/bench_open_set.py, docs/open-set.md)
FAR_FLOOR, FAR_SLACK = 0.9, 0.05


def best_on_both(near: dict[str, dict[str, float]], far: dict[str, dict[str, float]]) -> str:
    """The best score on the near unknowns (`best`) among those that hold far: far AUROC at
    least min(FAR_FLOOR, the best far AUROC) - FAR_SLACK. A score at chance far is never
    chosen while another is above FAR_FLOOR, however well it does near."""
    bar = min(FAR_FLOOR, max(f["auroc"] for f in far.values())) - FAR_SLACK
    return best({n: f for n, f in near.items() if n in far and far[n]["auroc"] >= bar})


# --- the rule a model stores -------------------------------------------------------------
def default_score(multi_label: bool, linear_head: bool = False,
                  negatives_loss: str | None = None) -> str | None:
    """`calibrate --score auto` without unknowns, chosen from bench/bench_open_set.py
    (docs/open-set.md). A softmax model trained with the energy-margin loss (`--synthetic`,
    the default, or `--negatives`): `energy`, the score that loss trains (small setting,
    medians of two seeds: see docs/open-set.md). Other softmax models with timm's linear
    head: `scale` (far 90.8 against the best single score's 90.9 in the 128 px bench,
    near 65.8 against msp's 71.4). The concat head and multi-label models: the fused score
    with mahalanobis, which beat msp far-OOD by 25 points in an earlier bench."""
    if multi_label:
        return "sigmoid_max+mahalanobis"
    if negatives_loss == "energy":
        return "energy"
    return "scale" if linear_head else "msp+mahalanobis"


def scores_for(multi_label: bool, linear_head: bool = False) -> tuple[str, ...]:
    """The scores that make sense for a kind of model: vim, ash, scale and msp+vim read a
    softmax model's single linear head (timm's head), so not the concat head's."""
    first = "sigmoid_max" if multi_label else "msp"
    out = (first, "max_logit", "energy", "knn", "mahalanobis", f"{first}+mahalanobis")
    return out + (*HEAD_SCORES, "msp+vim") if linear_head and not multi_label else out


@dataclass
class OpenSetStats:
    """What the feature scores need from the training images."""

    bank: torch.Tensor | None = None  # (N, D) fp16, normalised
    means: torch.Tensor | None = None  # (C, D)
    precision: torch.Tensor | None = None  # (D, D)
    # (4,) per fused score: mean and std of its logit score, of its feature score
    fusion: torch.Tensor | None = None  # msp+mahalanobis (sigmoid_max+mahalanobis)
    fusion_vim: torch.Tensor | None = None  # msp+vim
    head_weight: torch.Tensor | None = None  # (C, D) the linear head: ash, scale, vim
    head_bias: torch.Tensor | None = None  # (C,)
    vim_origin: torch.Tensor | None = None  # (D,)
    vim_basis: torch.Tensor | None = None  # (D, D - principal)
    vim_alpha: torch.Tensor | None = None  # (1,)

    @classmethod
    def fit(cls, features: torch.Tensor, labels: torch.Tensor, n_classes: int,
            rows: int = BANK_ROWS, head: tuple[torch.Tensor, torch.Tensor] | None = None
            ) -> OpenSetStats:
        """From training features (and labels): knn's bank, mahalanobis's class means and
        precision, and with the linear `head` (weight, bias) ViM's statistics."""
        means, prec = fit_mahalanobis(features, labels, n_classes)
        out = cls(sample_bank(features, labels, rows), means, prec)
        if head is not None:
            w, b = (t.detach().float().cpu().contiguous() for t in head)
            out.head_weight, out.head_bias = w, b
            out.vim_origin, out.vim_basis, out.vim_alpha = fit_vim(features, w, b)
        return out

    def fit_fusion(self, logits: torch.Tensor, features: torch.Tensor, multi_label: bool
                   ) -> None:
        """The standardisation of the fused scores, from known (validation) images."""
        first = sigmoid_max(logits) if multi_label else msp(logits)

        def stats(second: torch.Tensor) -> torch.Tensor:
            return torch.stack([first.mean(), first.std().clamp_min(1e-6), second.mean(),
                                second.std().clamp_min(1e-6)]).float()

        self.fusion = stats(mahalanobis(features, self.means, self.precision))
        if self.vim_basis is not None:
            self.fusion_vim = stats(self._vim(features, logits))

    def _vim(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return vim(features, logits, self.vim_origin, self.vim_basis, self.vim_alpha)

    def only(self, score: str) -> OpenSetStats:
        """Just what `score` needs (what is stored with it)."""
        head = {"head_weight": self.head_weight, "head_bias": self.head_bias}
        vim_ = {"vim_origin": self.vim_origin, "vim_basis": self.vim_basis,
                "vim_alpha": self.vim_alpha}
        need = {"knn": {"bank": self.bank},
                "mahalanobis": {"means": self.means, "precision": self.precision},
                "ash": head, "scale": head, "vim": vim_,
                "msp+vim": vim_ | {"fusion_vim": self.fusion_vim}}
        if score in FUSED and score != "msp+vim":
            return OpenSetStats(means=self.means, precision=self.precision, fusion=self.fusion)
        return OpenSetStats(**need.get(score, {}))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.contiguous() for k, v in dataclasses.asdict(self).items() if v is not None}

    def save(self, path: Path) -> None:
        atomic_write(path, lambda p: save_file(self.tensors(), p))

    @classmethod
    def load(cls, path: Path) -> OpenSetStats:
        try:
            found = load_file(path)
        except Exception as e:  # noqa: BLE001 - any damage reads the same to a user
            raise DamagedFileError(f"{path}: not a readable safetensors file ({e})") from e
        unknown = set(found) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise DamagedFileError(f"{path}: unexpected tensor(s) {', '.join(sorted(unknown))}")
        return cls(**found)


def score_of(name: str, logits: torch.Tensor, features: torch.Tensor | None,
             stats: OpenSetStats | None, k: int = KNN_K) -> torch.Tensor:
    """One score by name."""
    if name == "msp":
        return msp(logits)
    if name == "max_logit":
        return max_logit(logits)
    if name == "energy":
        return energy(logits)
    if name == "sigmoid_max":
        return sigmoid_max(logits)
    if features is None or stats is None:
        raise ConfigError(f"the {name} score needs features and the training statistics")
    if name == "knn" and stats.bank is not None:
        return knn(features, stats.bank, min(k, len(stats.bank)))
    if name == "mahalanobis" and stats.means is not None and stats.precision is not None:
        return mahalanobis(features, stats.means, stats.precision)
    if name in ("ash", "scale") and stats.head_weight is not None:
        fn = ash if name == "ash" else scale
        return fn(features, stats.head_weight, stats.head_bias)
    if name == "vim" and stats.vim_basis is not None:
        return stats._vim(features, logits)
    if name == "msp+vim" and stats.fusion_vim is not None and stats.vim_basis is not None:
        return _fused(msp(logits), stats._vim(features, logits), stats.fusion_vim)
    if name in FUSED and stats.fusion is not None and stats.means is not None:
        first = sigmoid_max(logits) if name.startswith("sigmoid_max") else msp(logits)
        return _fused(first, mahalanobis(features, stats.means, stats.precision),
                      stats.fusion)
    raise ConfigError(f"unknown open-set score {name!r} (or its statistics are missing); "
                      f"choose from {', '.join(SCORES)}")


def _fused(first: torch.Tensor, second: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """The sum of two scores, each standardised by the known images' mean and spread."""
    f = f.float()
    return (first - f[0]) / f[1] + (second - f[2]) / f[3]


def score_outputs(names: Sequence[str], out: Any, stats: OpenSetStats | None,
                  k: int = KNN_K) -> dict[str, torch.Tensor]:
    """Open-set scores by name of a batch's outputs (predict.Outputs): msp and
    sigmoid_max read the (TTA-combined) probabilities, max_logit and energy the raw logits,
    knn and mahalanobis the features with `stats`."""
    return {n: score_of(n, out.logits if n in ("msp", "sigmoid_max") else out.raw,
                        out.features, stats, k) for n in names}

