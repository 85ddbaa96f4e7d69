"""imageclf: train image classifiers with presizing and one-resample batch augmentation."""

from imageclf.config import AugConfig, ConfigError, DataConfig
from imageclf.data.augment import BatchAugment
from imageclf.data.cache import PresizeCache
from imageclf.data.loader import BatchLoader, DataLoaders
from imageclf.data.sources import Items, find_items

__version__ = "0.1.0"

__all__ = [
    "AugConfig",
    "BatchAugment",
    "BatchLoader",
    "ConfigError",
    "DataConfig",
    "DataLoaders",
    "Items",
    "PresizeCache",
    "__version__",
    "find_items",
]
