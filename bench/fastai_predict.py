"""Single-image latency of fastai's Learner.predict (run in fastai's venv).
Usage: fastai_predict.py DATA SIZE PRESIZE FILE..."""

import json
import statistics
import sys
import time

from fastai.vision.all import ImageDataLoaders, Resize, aug_transforms, resnet18, vision_learner

path, size, presize, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
dls = ImageDataLoaders.from_folder(path, train="train", valid="val", item_tfms=Resize(presize),
                                   batch_tfms=aug_transforms(size=size, min_scale=0.75), bs=64)
learn = vision_learner(dls, resnet18, pretrained=False)
for f in files[:5]:
    learn.predict(f)
times = []
with learn.no_bar():
    for f in files[5:]:
        t0 = time.perf_counter()
        learn.predict(f)
        times.append((time.perf_counter() - t0) * 1000)
print(json.dumps({"tool": "fastai", "precision": "fp32", "n": len(times),
                  "median_ms": statistics.median(times),
                  "p90_ms": sorted(times)[int(0.9 * len(times))]}))
