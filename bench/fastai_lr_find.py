"""fastai's lr_find on resnet18 from scratch (run in fastai's venv). Usage: DATA SIZE PRESIZE BS"""

import json
import sys
import time

t0 = time.perf_counter()
from fastai.vision.all import (  # noqa: E402
    ImageDataLoaders,
    Resize,
    aug_transforms,
    minimum,
    resnet18,
    slide,
    steep,
    valley,
    vision_learner,
)

path, size, presize, bs = sys.argv[1], *map(int, sys.argv[2:5])
dls = ImageDataLoaders.from_folder(path, train="train", valid="val", item_tfms=Resize(presize),
                                   batch_tfms=aug_transforms(size=size, min_scale=0.75), bs=bs)
learn = vision_learner(dls, resnet18, pretrained=False)
t1 = time.perf_counter()
with learn.no_bar():
    res = learn.lr_find(suggest_funcs=(valley, slide, minimum, steep), show_plot=False)
t2 = time.perf_counter()
print(json.dumps({"tool": "fastai", "sweep_seconds": t2 - t1, "setup_seconds": t1 - t0,
                  "iterations": len(learn.recorder.lrs),
                  "suggestions": {k: float(v) for k, v in res._asdict().items()}}))
