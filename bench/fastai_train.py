"""fastai's own recipe: resnet18 from scratch, fit_one_cycle (run in fastai's venv)."""

import json
import sys
import time

t0 = time.perf_counter()
from fastai.vision.all import (  # noqa: E402
    ImageDataLoaders,
    Resize,
    accuracy,
    aug_transforms,
    resnet18,
    vision_learner,
)

path, size, presize, bs, epochs, lr = sys.argv[1], *map(int, sys.argv[2:6]), float(sys.argv[6])
dls = ImageDataLoaders.from_folder(path, train="train", valid="val", item_tfms=Resize(presize),
                                   batch_tfms=aug_transforms(size=size, min_scale=0.75), bs=bs)
learn = vision_learner(dls, resnet18, pretrained=False, metrics=accuracy)
t1 = time.perf_counter()
with learn.no_bar(), learn.no_logging():
    learn.fit_one_cycle(epochs, lr)
t2 = time.perf_counter()
valid_loss, acc = learn.validate()
rows = {"names": list(learn.recorder.metric_names),
        "values": [[float(x) for x in v] for v in learn.recorder.values]}
print(json.dumps({"tool": "fastai", "valid_accuracy": float(acc), "valid_loss": float(valid_loss),
                  "fit_seconds": t2 - t1, "setup_seconds": t1 - t0, "recorder": rows,
                  "num_workers": dls.train.num_workers}))
