"""One augmented batch as a picture: the images as the model sees them, with their labels."""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.figure import Figure

from imageclf.core.plots import image_grid
from imageclf.data.negatives import is_negative

NEGATIVE_TITLE = "(negative: none)"


def show_batch(dls: object, path: str | Path | None = None, n: int = 16, train: bool = True,
               epoch: int = 0) -> Figure:
    """A PNG grid of one augmented training batch (or validation batch) with labels."""
    loader = dls.train if train else dls.valid
    loader.set_epoch(epoch)

    x, y = next(iter(loader))
    neg = is_negative(y)
    if neg.any():  # --negatives: a quarter of the grid at most shows the batch's negatives
        n_neg = min(int(neg.sum()), n // 4)
        pick = torch.cat([torch.nonzero(~neg).flatten()[: n - n_neg],
                          torch.nonzero(neg).flatten()[:n_neg]])
        x, y, neg = x[pick], y[pick], neg[pick]
    x = loader.augment.denormalize(x[:n])
    classes = dls.classes
    if y.dim() == 2:  # multi-hot
        titles = [";".join(classes[j] for j in torch.nonzero(r).flatten().tolist()) or "(none)"
                  for r in y[:n]]
    else:
        titles = [classes[int(i)] if i >= 0 else "" for i in y[:n]]
    titles = [NEGATIVE_TITLE if bool(ng) else t for t, ng in zip(titles, neg[:n], strict=False)]
    return image_grid(x, titles, path)
