"""fastai's recipe with its validation accuracy printed after every epoch, as a JSON line
(run in fastai's venv): resnet18 from scratch, Resize(presize) + aug_transforms."""

import sys

from fastai.vision.all import (
    ImageDataLoaders,
    Resize,
    accuracy,
    aug_transforms,
    resnet18,
    vision_learner,
)

from fastai_epochs import PrintEpoch

path, size, presize, bs, epochs, lr = sys.argv[1], *map(int, sys.argv[2:6]), float(sys.argv[6])


dls = ImageDataLoaders.from_folder(path, train="train", valid="val", item_tfms=Resize(presize),
                                   batch_tfms=aug_transforms(size=size, min_scale=0.75), bs=bs)
learn = vision_learner(dls, resnet18, pretrained=False, metrics=accuracy, cbs=[PrintEpoch()])
with learn.no_bar(), learn.no_logging():
    learn.fit_one_cycle(epochs, lr)
