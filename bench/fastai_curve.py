"""fastai's recipe with its validation accuracy printed after every epoch, as a JSON line
(run in fastai's venv): resnet18 from scratch, Resize(presize) + aug_transforms."""

import sys

from fastai_epochs import PrintEpoch
from fastai_recipe import recipe

learn, epochs, lr = recipe(sys.argv[1:], cbs=(PrintEpoch(),))
with learn.no_bar(), learn.no_logging():
    learn.fit_one_cycle(epochs, lr)
