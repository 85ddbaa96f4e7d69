"""Label issues: which given labels are likely wrong, from out-of-sample predicted
probabilities (each image's probabilities from a model that never saw its label).

The probabilities come either from K models trained on the other folds, or from a
linear head over a body's pooled features, cross-validated (scikit-learn's logistic
regression). Confident learning (cleanlab, Northcutt et al. 2021) then finds the issues
and ranks them."""

from __future__ import annotations

import logging
import warnings

import numpy as np

from imageclf.core.errors import DataError

log = logging.getLogger(__name__)
FOLDS = 5  # folds of the linear head's cross-validation


def fold_of(labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """(N,) the fold of each image, stratified by class (scikit-learn's StratifiedKFold;
    a class with fewer images than folds is spread as far as it goes)."""
    from sklearn.model_selection import StratifiedKFold

    out = np.zeros(len(labels), dtype=np.int64)
    with warnings.catch_warnings():  # "the least populated class has only n members"
        warnings.simplefilter("ignore", UserWarning)
        split = StratifiedKFold(folds, shuffle=True, random_state=seed).split(labels, labels)
        for k, (_, held) in enumerate(split):
            out[held] = k
    return out


def linear_probs(features: np.ndarray, labels: np.ndarray, n_classes: int,
                 folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """(N, C) out-of-sample probabilities of a logistic-regression head on standardised
    features, each fold predicted by the head fitted on the others."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = np.bincount(labels, minlength=n_classes)
    if (counts[counts > 0] < 2).any() or (counts > 0).sum() < 2:
        raise DataError("finding label issues needs at least 2 classes with 2 or more images "
                        f"each; the classes have {counts.tolist()} images")
    folds = int(min(folds, counts[counts > 0].min()))
    fold = fold_of(labels, folds, seed)
    probs = np.zeros((len(labels), n_classes), dtype=np.float64)
    for k in range(folds):
        fit, held = fold != k, fold == k
        head = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=300))
        with warnings.catch_warnings():  # lbfgs stopping at max_iter is fine for a ranking
            warnings.simplefilter("ignore")
            head.fit(features[fit], labels[fit])
        seen = head[-1].classes_
        probs[np.ix_(held, seen)] = head.predict_proba(features[held])
    return probs


def find_label_issues(labels: np.ndarray, probs: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the likely wrong labels, worst first; each image's label quality in
    [0, 1], low = likely wrong), by cleanlab's confident learning on out-of-sample
    probabilities (N, C)."""
    from cleanlab.filter import find_label_issues as cl_find
    from cleanlab.rank import get_label_quality_scores

    probs = np.clip(probs, 1e-6, 1.0)
    probs = probs / probs.sum(1, keepdims=True)
    with warnings.catch_warnings():  # cleanlab warns about classes with few examples
        warnings.simplefilter("ignore")
        ranked = cl_find(labels, probs, return_indices_ranked_by="self_confidence")
        quality = get_label_quality_scores(labels, probs, method="self_confidence")
    return np.asarray(ranked, dtype=np.int64), np.asarray(quality, dtype=np.float64)
