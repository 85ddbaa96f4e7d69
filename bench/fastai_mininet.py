"""The Imagenette leaderboard's 5-epoch record as its own code ran it, in fastai (run in
fastai's venv), on the data given: fastai's XResNet with SE-ResNeXt blocks (layers
[1,1,1,1], expansion 1, groups 64, SE reduction 8, Mish, average pool), ranger (mom 0.9,
sqr_mom 0.99, eps 1e-6), label-smoothing cross-entropy, `fit_flat_cos(5, 1e-2, wd=1e-4)`,
`Resize(128)` and flips, fp32. Prints the validation accuracy after every epoch as a JSON
line (the last one is the run's), then the net's weight count.

    python fastai_mininet.py DATA SEED [BS]
"""

import sys
from functools import partial

from fastai.vision.all import (
    AvgPool,
    CategoryBlock,
    DataBlock,
    FlipItem,
    GrandparentSplitter,
    ImageBlock,
    LabelSmoothingCrossEntropy,
    Learner,
    Mish,
    Resize,
    SEResNeXtBlock,
    XResNet,
    accuracy,
    get_image_files,
    parent_label,
    ranger,
    set_seed,
)

from fastai_epochs import PrintEpoch

path, seed = sys.argv[1], int(sys.argv[2])
bs = int(sys.argv[3]) if len(sys.argv) > 3 else 32


set_seed(seed, reproducible=True)
dblock = DataBlock(blocks=(ImageBlock, CategoryBlock),
                   splitter=GrandparentSplitter(valid_name="val"),
                   get_items=get_image_files, get_y=parent_label,
                   item_tfms=[Resize(128), FlipItem(0.5)])
dls = dblock.dataloaders(path, bs=bs, num_workers=2)
model = XResNet(SEResNeXtBlock, 1, [1, 1, 1, 1], n_out=10, groups=64, reduction=8,
                act_cls=Mish, pool=AvgPool)
learn = Learner(dls, model, opt_func=partial(ranger, mom=0.9, sqr_mom=0.99, eps=1e-6),
                loss_func=LabelSmoothingCrossEntropy(), metrics=accuracy, cbs=[PrintEpoch()])
with learn.no_bar(), learn.no_logging():
    learn.fit_flat_cos(5, 1e-2, wd=1e-4)
print(f"weights: {sum(p.numel() for p in model.parameters())}", flush=True)
