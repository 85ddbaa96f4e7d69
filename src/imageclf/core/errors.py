"""The library's error classes: one base, and the kinds a caller may want to tell apart."""

from __future__ import annotations


class ImageclfError(Exception):
    """Base of every error imageclf raises on purpose; the message says what was expected,
    what was found, and the fix."""


class ConfigError(ImageclfError, ValueError):
    """A setting has a value imageclf cannot use; the message names the flag and the fix."""


class DataError(ImageclfError):
    """The data cannot be used as given: no images, no validation split, a bad CSV."""


class DamagedFileError(ImageclfError):
    """A file imageclf wrote earlier (model/, a checkpoint, a run's JSON) is missing, cut
    short or edited into something it cannot read."""


class DiskFullError(ImageclfError):
    """Too little room on disk for what a command must write (refused before it starts), or
    a disk that filled while writing: the half-written file is removed, nothing else lost."""


# the classes a message can be rebuilt into on another process (distributed.Dist.decide)
BY_NAME: dict[str, type[ImageclfError]] = {
    c.__name__: c for c in (ImageclfError, ConfigError, DataError, DamagedFileError,
                            DiskFullError)}
