"""imageclf: train image classifiers with presizing and one-resample batch augmentation.

Names are imported lazily, so `from imageclf.predict import Predictor` loads no training code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "AugConfig": "imageclf.config",
    "ConfigError": "imageclf.errors",
    "DataError": "imageclf.errors",
    "DamagedFileError": "imageclf.errors",
    "ImageclfError": "imageclf.errors",
    "ModelMeta": "imageclf.meta",
    "TrainProgress": "imageclf.progress",
    "DataConfig": "imageclf.config",
    "TrainConfig": "imageclf.config",
    "DataSource": "imageclf.config",
    "BatchAugment": "imageclf.data.augment",
    "PresizeCache": "imageclf.data.cache",
    "BatchLoader": "imageclf.data.loader",
    "DataLoaders": "imageclf.data.loader",
    "Items": "imageclf.data.sources",
    "resolve": "imageclf.data.sources",
    "Learner": "imageclf.learner",
    "Predictor": "imageclf.predict",
}

__all__ = [
    "AugConfig", "BatchAugment", "BatchLoader", "ConfigError", "DamagedFileError", "DataConfig",
    "DataError", "DataLoaders", "DataSource", "ImageclfError", "Items", "Learner", "ModelMeta",
    "Predictor", "PresizeCache", "TrainConfig", "TrainProgress", "__version__", "resolve",
]
assert sorted(_LAZY) == sorted(n for n in __all__ if n != "__version__")

if TYPE_CHECKING:
    from imageclf.config import AugConfig, DataConfig, DataSource, TrainConfig
    from imageclf.data.augment import BatchAugment
    from imageclf.data.cache import PresizeCache
    from imageclf.data.loader import BatchLoader, DataLoaders
    from imageclf.data.sources import Items, resolve
    from imageclf.errors import ConfigError, DamagedFileError, DataError, ImageclfError
    from imageclf.learner import Learner
    from imageclf.meta import ModelMeta
    from imageclf.predict import Predictor
    from imageclf.progress import TrainProgress


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'imageclf' has no attribute {name!r}")
