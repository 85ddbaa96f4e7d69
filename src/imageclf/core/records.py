"""The records imageclf writes and reads back (metrics.json, the cache's index, a store's
manifest, model.json...): Schema objects (schema.py) whose fields say what they mean, a
damaged file refused with a DamagedFileError naming the file and the field."""

from __future__ import annotations

from dataclasses import dataclass

from imageclf.core.schema import Schema, doc


class Record(Schema):
    """Base of the typed JSON records (schema.py's round trip and checks)."""


@dataclass(frozen=True)
class Skipped(Record):
    """A file left out of a data set, and why."""

    path: str = doc("the file (a table row: FILE::table::COLUMN::ROW)")
    reason: str = doc("why it could not be used: empty, truncated, not an image, missing...")

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", str(self.path))  # a Path or an image reference
