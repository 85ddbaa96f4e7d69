"""The fastai scripts' shared recipe (run in fastai's venv): their arguments
`DATA SIZE PRESIZE BS EPOCHS LR`, and resnet18 from scratch on class folders train/ and
val/ with fastai's defaults, `Resize(presize)` then `aug_transforms(size, min_scale=0.75)`."""

from fastai.vision.all import (
    ImageDataLoaders,
    Resize,
    accuracy,
    aug_transforms,
    resnet18,
    vision_learner,
)


def recipe(argv: list[str], cbs: tuple = ()) -> tuple:
    """(the learner, epochs, lr) from the command line's words."""
    path, size, presize, bs, epochs, lr = argv[0], *map(int, argv[1:5]), float(argv[5])
    dls = ImageDataLoaders.from_folder(path, train="train", valid="val",
                                       item_tfms=Resize(presize),
                                       batch_tfms=aug_transforms(size=size, min_scale=0.75),
                                       bs=bs)
    learn = vision_learner(dls, resnet18, pretrained=False, metrics=accuracy, cbs=list(cbs))
    return learn, epochs, lr
