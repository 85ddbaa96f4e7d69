"""A setting declared once: its name, type, default, range and help live on its dataclass
field; validation, the JSON round trip, the command-line options (cli/options.py) and the
docs table all read them from there.

    wd: float = setting(0.01, "AdamW weight decay (not on norms and biases).", ge=0)

is the whole declaration of `--wd`: `TrainConfig.build(wd=-1)` fails with "--wd (wd in
OptimConfig) must be >= 0; got -1", `train --wd` exists with that help and default, and
docs/settings.md lists it. Settings classes nest (DataConfig holds a DataSource and an
AugConfig); every leaf name is unique across a tree, so a flat {name: value} (what a
command line gives) builds the tree with `build`.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from imageclf.core.errors import ConfigError

MISSING = dataclasses.MISSING


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()  # a Spec entry not given


@dataclass(frozen=True)
class Spec:
    """What a field's metadata says about it as a setting."""

    help: str
    flag: str | None = None  # the command-line flag; None: --field-name
    choices: tuple[Any, ...] | None = None
    ge: float | None = None  # bounds of a number (None: none)
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    cli: bool = True  # offered on the command line
    cli_default: Any = UNSET  # the command line's default, where it differs from Python's
    cli_type: Any = None  # what the command line takes, when not the field's type
    parse: Callable[[Any], Any] | None = None  # command-line value -> field value
    argument: bool = False  # a positional argument (DATA), not an option
    metavar: str | None = None  # what the help shows for the value, when not its type

    def expected(self) -> str | None:
        """What a value must be, in words (None: anything of its type)."""
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
    """A dataclass field declared as a setting (see the module's docstring)."""
    return field(default=default, default_factory=default_factory,
                 metadata={"setting": Spec(help=help, **spec)})


def spec_of(f: dataclasses.Field) -> Spec | None:
    return f.metadata.get("setting")


def flag_of(f: dataclasses.Field) -> str:
    """The command-line flag of a field: its Spec's, else --field-name."""
    spec = spec_of(f)
    if spec is not None and spec.flag:
        return spec.flag
    return "--" + f.name.replace("_", "-")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _settings_type(tp: Any) -> type | None:
    """The Settings class a field holds (itself nested settings), or None."""
    return tp if isinstance(tp, type) and issubclass(tp, Settings) else None


class Settings:
    """Base of the frozen settings dataclasses: validation by the fields' Specs, then the
    class's own `check` for rules between fields; JSON round trip; building from flat
    names."""

    section: ClassVar[str] = "Options"  # the help panel its options are listed under

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list) and "tuple" in str(hints[f.name]):
                object.__setattr__(self, f.name, tuple(value))  # JSON lists, held frozen
                value = getattr(self, f.name)
            spec = spec_of(f)
            if spec is not None and not spec.accepts(value):
                raise self.error(f.name, f"must be {spec.expected()}", value)
        self.check()

    def check(self) -> None:
        """Rules between fields (override); each failure through `self.error`."""

    @classmethod
    def error(cls, name: str, must: str, value: Any = MISSING) -> ConfigError:
        """A ConfigError naming the setting's flag and its field: "--wd (wd in OptimConfig)
        must be >= 0; got -1"."""
        f = next(f for f in dataclasses.fields(cls) if f.name == name)
        got = "" if value is MISSING else f"; got {value!r}"
        return ConfigError(f"{flag_of(f)} ({name} in {cls.__name__}) {must}{got}")

    # --- JSON --------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (nested settings as objects, tuples as lists)."""
        return json_ready(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, data: Any, where: str = "") -> Any:
        """Rebuild from `to_json`'s output; an unknown or mistyped key is a ConfigError."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where or cls.__name__}: expected an object, got "
                              f"{type(data).__name__}")
        hints = _hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{where or cls.__name__}: unknown {cls.__name__} settings: "
                              f"{unknown}")
        kw = {}
        for name, value in data.items():
            sub = _settings_type(hints[name])
            kw[name] = sub.from_json(value, f"{where}.{name}" if where else name) if sub \
                else value
        return cls(**kw)

    # --- flat names -------------------------------------------------------------------
    @classmethod
    def leaves(cls, path: tuple[str, ...] = ()
               ) -> Iterator[tuple[tuple[str, ...], type, dataclasses.Field]]:
        """(path of nested field names, owning class, field) of every leaf setting, nested
        classes walked in order."""
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            sub = _settings_type(hints[f.name])
            if sub is not None:
                yield from sub.leaves((*path, f.name))
            else:
                yield path, cls, f

    @classmethod
    def build(cls, values: dict[str, Any] | None = None, **kw: Any) -> Any:
        """The settings tree from flat leaf names (`TrainConfig.build(arch="resnet34",
        epochs=8)`); what is not given keeps its default."""
        flat = dict(values or {}, **kw)
        out = _build(cls, flat)
        if flat:
            raise ConfigError(f"unknown {cls.__name__} settings: {sorted(flat)}")
        return out

    def replace(self, **flat: Any) -> Any:
        """A copy with these leaf settings changed (`train.replace(epochs=2, out="r")`)."""
        return type(self).build(self.flat() | flat)

    @classmethod
    def names(cls) -> set[str]:
        """Every flat leaf name."""
        return {f.name for _, _, f in cls.leaves()}

    def flat(self) -> dict[str, Any]:
        """Leaf name -> JSON value (the form `build` takes, and comparisons read)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out |= v.flat() if isinstance(v, Settings) else {f.name: json_ready(v)}
        return out


def differences(old: Settings, new: Settings, ignore: tuple[str, ...] = ()) -> list[str]:
    """"--flag: OLD there, NEW now" for every leaf setting that differs."""
    a, b = old.flat(), new.flat()
    flags = {f.name: flag_of(f) for _, _, f in type(old).leaves()}
    return [f"{flags[k]}: {a[k]!r} there, {b.get(k)!r} now" for k in a
            if k not in ignore and a[k] != b.get(k)]


def _build(cls: type, flat: dict[str, Any]) -> Any:
    """Pop this class's leaves (and its nested classes') out of `flat` and build it."""
    hints = _hints(cls)
    kw = {}
    for f in dataclasses.fields(cls):
        sub = _settings_type(hints[f.name])
        if sub is not None and isinstance(flat.get(f.name), sub):  # a part given whole
            kw[f.name] = flat.pop(f.name)
        elif sub is not None:
            kw[f.name] = _build(sub, flat)
        elif f.name in flat:
            kw[f.name] = flat.pop(f.name)
    return cls(**kw)


def json_ready(value: Any) -> Any:
    """Tuples as lists, recursively (what json.loads gives back)."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def type_name(tp: Any) -> str:
    """A field's type as the docs table shows it: int, float, text, yes/no, optional."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        inner = [a for a in args if a is not type(None)]
        return type_name(inner[0]) + " or none" if len(inner) == 1 else str(tp)
    if typing.get_origin(tp) is tuple:
        return "list of " + type_name(args[0])
    return {int: "int", float: "float", str: "text", bool: "flag"}.get(tp, str(tp))


def settings_markdown(*classes: type) -> str:
    """Every setting of `classes` as a Markdown table (docs/settings.md holds this text)."""
    rows = ["| flag | field | type | default | allowed | meaning |", "|---|---|---|---|---|---|"]
    for root in classes:
        for _, owner, f in root.leaves():
            spec = spec_of(f)
            if spec is None:
                continue
            hint = _hints(owner)[f.name]
            default = default_of(f)
            shown = "" if default is None else f"`{json_ready(default)}`"
            if spec.cli_default is not UNSET:
                shown += f" (command line: `{spec.cli_default}`)"
            flag = f"`{flag_of(f)}`" if spec.cli and not spec.argument else (
                "DATA" if spec.argument else "-")
            rows.append(f"| {flag} | `{owner.__name__}.{f.name}` | {type_name(hint)} | "
                        f"{shown} | {spec.expected() or ''} | {spec.help} |")
    return "\n".join(rows) + "\n"
