"""The JSON records the project writes, typed: a frozen dataclass per record whose fields
say what they mean (`doc`), with `to_json` / `from_json` and the schema table in
docs/run-directory.md generated from them (`record_markdown`).

Settings (config.json) have their own declarations in settings.py; model.json is
meta.ModelMeta, which validates each field further."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from imageclf.core.errors import DamagedFileError

MISSING = dataclasses.MISSING


def doc(text: str, default: Any = MISSING, default_factory: Any = MISSING) -> Any:
    """A record field with what it means (the schema table's last column)."""
    return field(default=default, default_factory=default_factory, metadata={"doc": text})


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _inner(tp: Any) -> Any:
    """T of `T | None`, else the type itself."""
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _record_type(tp: Any) -> type | None:
    tp = _inner(tp)
    return tp if isinstance(tp, type) and issubclass(tp, Record) else None


def _convert(tp: Any, value: Any, where: str) -> Any:
    """A JSON value as the field's type holds it: nested records built, lists of records
    built, lists held as tuples where the type says tuple."""
    if value is None:
        return None
    sub = _record_type(tp)
    if sub is not None:
        return sub.from_json(value, where)
    inner = _inner(tp)
    origin = typing.get_origin(inner)
    if origin in (list, tuple) and isinstance(value, list):
        args = typing.get_args(inner)
        item = args[0] if args else Any
        items = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    return value


def json_value(value: Any) -> Any:
    """Records and dataclasses as objects, tuples as lists, recursively."""
    if isinstance(value, Record):
        return value.to_json()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_value(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return value


class Record:
    """Base of the typed JSON records. `flat` names a dict field stored at the top level
    of the object beside the others (metrics.json's last-epoch metrics): on reading, every
    key that is not a field goes into it."""

    flat: ClassVar[str | None] = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object."""
        out = {f.name: json_value(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return out.pop(self.flat) | out if self.flat else out

    @classmethod
    def from_json(cls, obj: Any, where: str = "") -> Any:
        """Build from a parsed JSON object; a missing, unknown or unusable field is a
        DamagedFileError naming `where` and the field."""
        where = where or cls.__name__
        if not isinstance(obj, dict):
            raise DamagedFileError(f"{where}: expected a JSON object, got "
                                   f"{type(obj).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if cls.flat:
            obj = {k: v for k, v in obj.items() if k in fields} | {
                cls.flat: {k: v for k, v in obj.items() if k not in fields}}
        unknown = sorted(set(obj) - set(fields))
        missing = [n for n, f in fields.items() if n not in obj and f.default is MISSING
                   and f.default_factory is MISSING]
        if unknown or missing:
            raise DamagedFileError(f"{where}: " + "; ".join(
                ([f"unknown field(s) {', '.join(unknown)}"] if unknown else [])
                + ([f"missing field(s) {', '.join(missing)}"] if missing else [])))
        hints = _hints(cls)
        kw = {n: _convert(hints[n], v, f"{where}.{n}") for n, v in obj.items()}
        try:
            return cls(**kw)
        except (TypeError, ValueError) as e:
            raise DamagedFileError(f"{where}: {e}") from e


@dataclass(frozen=True)
class Skipped(Record):
    """A file left out of a data set, and why."""

    path: str = doc("the file (a table row: FILE::table::COLUMN::ROW)")
    reason: str = doc("why it could not be used: empty, truncated, not an image, missing...")

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", str(self.path))  # a Path or an image reference


def type_name(tp: Any) -> str:
    """A field's type in words, for the schema tables."""
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in args if a is not type(None)]
        return (type_name(inner[0]) + " or null") if len(inner) == 1 else " or ".join(
            type_name(a) for a in args)
    if origin in (list, tuple):
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"object of {type_name(args[1])}" if args else "object"
    if isinstance(tp, type) and issubclass(tp, Record):
        return f"{tp.__name__} object"
    return {int: "integer", float: "number", str: "text", bool: "true/false",
            dict: "object", list: "list", Any: "any"}.get(tp, getattr(tp, "__name__", str(tp)))


def _nested(tp: Any) -> list[type]:
    """Record types named inside a field's type."""
    if isinstance(tp, type) and issubclass(tp, Record):
        return [tp]
    return [t for a in typing.get_args(tp) for t in _nested(a)]


def record_markdown(cls: type) -> str:
    """A record's fields as Markdown tables: its own, then each nested record's."""
    out, seen, todo = [], set(), [cls]
    while todo:
        c = todo.pop(0)
        if c in seen:
            continue
        seen.add(c)
        summary = " ".join((c.__doc__ or "").strip().split("\n\n")[0].split())
        rows = [f"`{c.__name__}`: {summary}", "",
                "| field | type | meaning |", "|---|---|---|"]
        for f in dataclasses.fields(c):
            tp = _hints(c)[f.name]
            rows.append(f"| `{f.name}` | {type_name(tp)} | {f.metadata.get('doc', '')} |")
            todo += _nested(tp)
        out.append("\n".join(rows) + "\n")
    return "\n".join(out)
