"""The library's error classes: one base, kinds a caller can tell apart."""

import pytest

from imageclf import ConfigError, DamagedFileError, DataError, ImageclfError
from imageclf.core.distributed import Dist
from imageclf.core.errors import BY_NAME


def test_one_base_and_kinds_to_tell_apart():
    for kind in (ConfigError, DataError, DamagedFileError):
        assert issubclass(kind, ImageclfError) and BY_NAME[kind.__name__] is kind
    assert issubclass(ConfigError, ValueError)  # a bad value, as callers already catch it
    assert not issubclass(DataError, ConfigError) and not issubclass(DamagedFileError,
                                                                      ConfigError)


def test_a_refusal_keeps_its_kind_through_decide():
    def refuse():
        raise DamagedFileError("last.json is damaged")

    with pytest.raises(DamagedFileError, match="last.json is damaged"):
        Dist().decide(refuse)
