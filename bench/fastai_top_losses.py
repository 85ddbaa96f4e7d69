"""fastai's own ranking of suspect training labels (run in fastai's venv): train resnet18 from
scratch on the (noisy) labels, then rank the training images by their loss, as
ImageClassifierCleaner (fastai book, chapter 2) does: `learn.get_preds(ds_idx=0,
with_loss=True)`, highest loss first. Prints JSON: the images, ranked, relative to DATA."""

import json
import sys
import time
from pathlib import Path

t0 = time.perf_counter()
from fastai_recipe import recipe  # noqa: E402

learn, epochs, lr = recipe(sys.argv[1:])
dls, path = learn.dls, sys.argv[1]
with learn.no_bar(), learn.no_logging():
    learn.fit_one_cycle(epochs, lr)
    _, acc = learn.validate()
    # ImageClassifierCleaner's ranking: the training set's losses, highest first
    _, _, losses = learn.get_preds(ds_idx=0, with_loss=True)
items = dls.train_ds.items
order = losses.argsort(descending=True).tolist()
root = Path(path)
print(json.dumps({"tool": "fastai", "valid_accuracy": float(acc),
                  "seconds": time.perf_counter() - t0,
                  "ranked": [Path(items[i]).relative_to(root).as_posix() for i in order]}))
