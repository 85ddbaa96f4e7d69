"""imageclf: train image classifiers with presizing and one-resample batch augmentation.

Names are imported lazily, so `from imageclf.predict import Predictor` loads no training code.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "AugConfig": "imageclf.config",
    "ConfigError": "imageclf.config",
    "DataConfig": "imageclf.config",
    "TrainConfig": "imageclf.config",
    "BatchAugment": "imageclf.data.augment",
    "PresizeCache": "imageclf.data.cache",
    "BatchLoader": "imageclf.data.loader",
    "DataLoaders": "imageclf.data.loader",
    "Items": "imageclf.data.sources",
    "find_items": "imageclf.data.sources",
    "Learner": "imageclf.learner",
    "Predictor": "imageclf.predict",
}

__all__ = [*sorted(_LAZY), "__version__"]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'imageclf' has no attribute {name!r}")
