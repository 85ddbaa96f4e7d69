"""fastai's own DataLoaders, iterated like `imageclf bench loader` (run in fastai's venv)."""

import json
import sys
import time

from fastai.vision.all import ImageDataLoaders, Resize, aug_transforms

path, size, presize, bs, epochs = sys.argv[1], *map(int, sys.argv[2:6])
dls = ImageDataLoaders.from_folder(path, train="train", valid="val", item_tfms=Resize(presize),
                                   batch_tfms=aug_transforms(size=size, min_scale=0.75), bs=bs)
rows = []
for epoch in range(epochs):
    t0 = time.perf_counter()
    n = 0
    for x, _y in dls.train:
        n += x.shape[0]
    dt = time.perf_counter() - t0
    rows.append({"epoch": epoch, "images": n, "seconds": round(dt, 3),
                 "img_per_s": round(n / dt, 1)})
print(json.dumps({"tool": "fastai", "num_workers": dls.train.num_workers, "epochs": rows}))
