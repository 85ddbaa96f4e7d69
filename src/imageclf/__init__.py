"""imageclf: train image classifiers with presizing and one-resample batch augmentation.

Names are imported lazily, so `from imageclf.model.predict import Predictor` loads no training code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "AugConfig": "imageclf.core.config",
    "ConfigError": "imageclf.core.errors",
    "DataError": "imageclf.core.errors",
    "DamagedFileError": "imageclf.core.errors",
    "ImageclfError": "imageclf.core.errors",
    "ModelMeta": "imageclf.core.modelmeta",
    "TrainProgress": "imageclf.core.clock",
    "DataConfig": "imageclf.core.config",
    "TrainConfig": "imageclf.core.config",
    "DataSource": "imageclf.core.config",
    "BatchAugment": "imageclf.data.augment",
    "PresizeCache": "imageclf.data.cache",
    "BatchLoader": "imageclf.data.loader",
    "DataLoaders": "imageclf.data.dataloaders",
    "Items": "imageclf.data.items",
    "resolve": "imageclf.data.sources",
    "Learner": "imageclf.learn.learner",
    "Predictor": "imageclf.model.predict",
}

__all__ = [
    "AugConfig", "BatchAugment", "BatchLoader", "ConfigError", "DamagedFileError", "DataConfig",
    "DataError", "DataLoaders", "DataSource", "ImageclfError", "Items", "Learner", "ModelMeta",
    "Predictor", "PresizeCache", "TrainConfig", "TrainProgress", "__version__", "resolve",
]
assert sorted(_LAZY) == sorted(n for n in __all__ if n != "__version__")

if TYPE_CHECKING:
    from imageclf.core.clock import TrainProgress
    from imageclf.core.config import AugConfig, DataConfig, DataSource, TrainConfig
    from imageclf.core.errors import ConfigError, DamagedFileError, DataError, ImageclfError
    from imageclf.core.modelmeta import ModelMeta
    from imageclf.data.augment import BatchAugment
    from imageclf.data.cache import PresizeCache
    from imageclf.data.dataloaders import DataLoaders
    from imageclf.data.items import Items
    from imageclf.data.loader import BatchLoader
    from imageclf.data.sources import resolve
    from imageclf.learn.learner import Learner
    from imageclf.model.predict import Predictor


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'imageclf' has no attribute {name!r}")
