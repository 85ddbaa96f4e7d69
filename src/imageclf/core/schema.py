"""The one schema system: every typed JSON object imageclf reads or writes is a frozen
dataclass whose fields declare themselves once, with a `Spec` in their metadata: what
the field means, the values it takes, and (for settings) its command-line flag. From those
declarations come validation, the JSON round trip (`Schema.to_json` / `from_json`), the
command line (cli/options.py) and the tables in docs/.

Two kinds of object share it:
- settings (settings.py): checked when built, a bad value a ConfigError naming the flag;
- records (records.py, model.json's ModelMeta): files written by imageclf and read back,
  a bad value a DamagedFileError naming the file and the field.

    wd: float = setting(0.01, "AdamW weight decay (not on norms and biases).", ge=0)
    size: int = doc("side of the images", expect="a positive integer", check=positive_int)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from imageclf.core.errors import DamagedFileError, ImageclfError

MISSING = dataclasses.MISSING


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()  # a Spec entry not given


@dataclass(frozen=True)
class Spec:
    """What a field says about itself."""

    help: str  # what it means: the option's help, the docs table's last column
    flag: str | None = None  # the command-line flag; None: --field-name
    choices: tuple[Any, ...] | None = None
    ge: float | None = None  # bounds of a number (None: none)
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    cli: bool = True  # offered on the command line (settings)
    cli_default: Any = UNSET  # the command line's default, where it differs from Python's
    cli_type: Any = None  # what the command line takes, when not the field's type
    parse: Callable[[Any], Any] | None = None  # command-line value -> field value
    argument: bool = False  # a positional argument (DATA), not an option
    metavar: str | None = None  # what the help shows for the value, when not its type
    expect: str | None = None  # what a JSON value must be, in words (records)
    check: Callable[[Any], bool] | None = None  # whether a JSON value is that

    def expected(self) -> str | None:
        """What a value must be, in words (None: anything of its type)."""
        if self.expect is not None:
            return self.expect
        if self.choices is not None:
            return "one of " + ", ".join(str(c) for c in self.choices)
        lo = (f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}"
              if self.gt is not None else None)
        hi = (f"{self.le:g}]" if self.le is not None else f"{self.lt:g})"
              if self.lt is not None else None)
        if lo and hi:
            return f"in {lo}, {hi}"
        if lo:
            return (">= " if lo[0] == "[" else "> ") + lo[1:]
        if hi:
            return ("<= " if hi[-1] == "]" else "< ") + hi[:-1]
        return None

    def accepts(self, value: Any) -> bool:
        """Whether a value is within the choices and bounds (None always is)."""
        if value is None:
            return True
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, int | float):
            return True
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le)
                and (self.lt is None or value < self.lt))


def setting(default: Any = MISSING, help: str = "", *,  # noqa: A002 - the option's word
            default_factory: Any = MISSING, **spec: Any) -> Any:
    """A settings field: its default, help and the values it takes."""
    return field(default=default, default_factory=default_factory,
                 metadata={"spec": Spec(help=help, **spec)})


def doc(text: str, default: Any = MISSING, default_factory: Any = MISSING, *,
        expect: str | None = None, check: Callable[[Any], bool] | None = None) -> Any:
    """A record field: what it means, and optionally what its JSON value must be."""
    return field(default=default, default_factory=default_factory,
                 metadata={"spec": Spec(help=text, expect=expect, check=check)})


def spec_of(f: dataclasses.Field) -> Spec | None:
    return f.metadata.get("spec")


def flag_of(f: dataclasses.Field) -> str:
    """The command-line flag of a field: its Spec's, else --field-name."""
    spec = spec_of(f)
    if spec is not None and spec.flag:
        return spec.flag
    return "--" + f.name.replace("_", "-")


def required(f: dataclasses.Field) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


# --- common checks of JSON values ----------------------------------------------------------
def number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def probability(v: Any) -> bool:
    return number(v) and 0 <= v <= 1


# --- types ------------------------------------------------------------------------------------
@functools.cache
def hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _inner(tp: Any) -> Any:
    """T of `T | None`, else the type itself."""
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def schema_type(tp: Any) -> type | None:
    """The Schema class a field holds (`T` or `T | None`), or None."""
    tp = _inner(tp)
    return tp if isinstance(tp, type) and issubclass(tp, Schema) else None


def _convert(tp: Any, value: Any, where: str) -> Any:
    """A JSON value as the field's type holds it: nested objects built, lists of them
    built, lists held as tuples where the type says tuple."""
    if value is None:
        return None
    sub = schema_type(tp)
    if sub is not None:
        return value if isinstance(value, sub) else sub.from_json(value, where)
    inner = _inner(tp)
    origin = typing.get_origin(inner)
    if origin in (list, tuple) and isinstance(value, list | tuple):
        args = typing.get_args(inner)
        item = args[0] if args else Any
        items = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    return value


def json_value(value: Any) -> Any:
    """Schema objects and dataclasses as objects, tuples as lists, recursively."""
    if isinstance(value, Schema):
        return value.to_json()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_value(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return value


class Schema:
    """Base of the typed JSON objects: `to_json`, and `from_json` that refuses a missing,
    unknown or unusable field with the class's `error_type` naming where and which field.
    `inline` names a dict field stored at the top level beside the others (metrics.json's
    last-epoch metrics): on reading, every key that is not a field goes into it."""

    inline: ClassVar[str | None] = None
    error_type: ClassVar[type[ImageclfError]] = DamagedFileError

    def to_json(self) -> dict[str, Any]:
        """The JSON object."""
        out = {f.name: json_value(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return out.pop(self.inline) | out if self.inline else out

    @classmethod
    def from_json(cls, obj: Any, where: str = "") -> Any:
        """Build from a parsed JSON object, each field checked against its Spec."""
        where = where or cls.__name__
        if not isinstance(obj, dict):
            raise cls.error_type(f"{where}: expected a JSON object, got {type(obj).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if cls.inline:
            obj = {k: v for k, v in obj.items() if k in fields} | {
                cls.inline: {k: v for k, v in obj.items() if k not in fields}}
        cls.check_json(obj, where)
        missing = [n for n, f in fields.items() if n not in obj and required(f)]
        if missing:
            raise cls.error_type(f"{where}: missing field(s) {', '.join(missing)}")
        unknown = sorted(set(obj) - set(fields))
        if unknown:
            raise cls.unknown(unknown, list(fields), where)
        problems = [f"field '{n}': expected {spec.expect}, got {v!r:.80}"
                    for n, v in obj.items()
                    if (spec := spec_of(fields[n])) is not None and spec.check is not None
                    and not spec.check(v)]
        if problems:
            raise cls.error_type(f"{where}: " + "; ".join(problems))
        kw = {n: _convert(hints(cls)[n], v, f"{where}.{n}") for n, v in obj.items()}
        try:
            return cls(**kw)
        except cls.error_type:
            raise
        except (TypeError, ValueError) as e:
            raise cls.error_type(f"{where}: {e}") from e

    @classmethod
    def check_json(cls, obj: dict[str, Any], where: str) -> None:
        """Rules a JSON object must meet before its fields are read (override)."""

    @classmethod
    def unknown(cls, names: list[str], fields: list[str], where: str) -> ImageclfError:
        """The error for keys that are no field."""
        return cls.error_type(f"{where}: unknown field(s) {', '.join(names)}; expected only "
                         f"{', '.join(fields)}")


# --- tables for docs/ -------------------------------------------------------------------------
def type_name(tp: Any) -> str:
    """A field's type in words, for the tables."""
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
    if isinstance(tp, type) and issubclass(tp, Schema):
        return f"{tp.__name__} object"
    return {int: "integer", float: "number", str: "text", bool: "true/false",
            dict: "object", list: "list", Any: "any"}.get(tp, getattr(tp, "__name__", str(tp)))


def _nested(tp: Any) -> list[type]:
    """Schema types named inside a field's type."""
    if isinstance(tp, type) and issubclass(tp, Schema):
        return [tp]
    return [t for a in typing.get_args(tp) for t in _nested(a)]


def record_markdown(cls: type, nested: bool = True) -> str:
    """A record's fields as Markdown tables: its own, then (`nested`) each nested record's.
    A record whose fields say what their values must be gets `required` and `expected`
    columns."""
    out, seen, todo = [], set(), [cls]
    while todo:
        c = todo.pop(0)
        if c in seen:
            continue
        seen.add(c)
        fields = dataclasses.fields(c)
        strict = any((s := spec_of(f)) is not None and s.expect for f in fields)
        summary = " ".join((c.__doc__ or "").strip().split("\n\n")[0].split())
        head = ("| field | type | required | expected | meaning |\n|---|---|---|---|---|"
                if strict else "| field | type | meaning |\n|---|---|---|")
        rows = [f"`{c.__name__}`: {summary}", "", head]
        for f in fields:
            tp, spec = hints(c)[f.name], spec_of(f)
            meaning = spec.help if spec is not None else ""
            middle = (f" {'yes' if required(f) else 'no'} | {spec.expected() or ''} |"
                      if strict else "")
            rows.append(f"| `{f.name}` | {type_name(tp)} |{middle} {meaning} |")
            todo += _nested(tp) if nested else []
        out.append("\n".join(rows) + "\n")
    return "\n".join(out)
