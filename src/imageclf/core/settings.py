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
from collections.abc import Iterator
from typing import Any, ClassVar

from imageclf.core.errors import ConfigError
from imageclf.core.schema import (
    MISSING,
    UNSET,
    Schema,
    Spec,
    flag_of,
    hints,
    json_value,
    schema_type,
    setting,
    spec_of,
    type_name,
)

__all__ = ["MISSING", "UNSET", "Settings", "Spec", "default_of", "differences", "flag_of",
           "setting", "settings_markdown", "spec_of"]


def _settings_type(tp: Any) -> type | None:
    """The Settings class a field holds (itself nested settings), or None."""
    sub = schema_type(tp)
    return sub if sub is not None and issubclass(sub, Settings) else None


class Settings(Schema):
    """Base of the frozen settings dataclasses: validation by the fields' Specs, then the
    class's own `check` for rules between fields; JSON round trip; building from flat
    names."""

    section: ClassVar[str] = "Options"  # the help panel its options are listed under
    error_type = ConfigError

    def __post_init__(self) -> None:
        types_of = hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list) and "tuple" in str(types_of[f.name]):
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

    # --- JSON (Schema's round trip) ---------------------------------------------------
    @classmethod
    def unknown(cls, names: list[str], fields: list[str], where: str) -> ConfigError:
        return ConfigError(f"{where}: unknown {cls.__name__} settings: {names}")

    # --- flat names -------------------------------------------------------------------
    @classmethod
    def leaves(cls, path: tuple[str, ...] = ()
               ) -> Iterator[tuple[tuple[str, ...], type, dataclasses.Field]]:
        """(path of nested field names, owning class, field) of every leaf setting, nested
        classes walked in order."""
        types_of = hints(cls)
        for f in dataclasses.fields(cls):
            sub = _settings_type(types_of[f.name])
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
            out |= v.flat() if isinstance(v, Settings) else {f.name: json_value(v)}
        return out


def differences(old: Settings, new: Settings, ignore: tuple[str, ...] = ()) -> list[str]:
    """"--flag: OLD there, NEW now" for every leaf setting that differs."""
    a, b = old.flat(), new.flat()
    flags = {f.name: flag_of(f) for _, _, f in type(old).leaves()}
    return [f"{flags[k]}: {a[k]!r} there, {b.get(k)!r} now" for k in a
            if k not in ignore and a[k] != b.get(k)]


def _build(cls: type, flat: dict[str, Any]) -> Any:
    """Pop this class's leaves (and its nested classes') out of `flat` and build it."""
    types_of = hints(cls)
    kw = {}
    for f in dataclasses.fields(cls):
        sub = _settings_type(types_of[f.name])
        if sub is not None and isinstance(flat.get(f.name), sub):  # a part given whole
            kw[f.name] = flat.pop(f.name)
        elif sub is not None:
            kw[f.name] = _build(sub, flat)
        elif f.name in flat:
            kw[f.name] = flat.pop(f.name)
    return cls(**kw)


def default_of(f: dataclasses.Field) -> Any:
    """A field's default (MISSING when it has none)."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def settings_markdown(*classes: type) -> str:
    """Every setting of `classes` as a Markdown table (docs/settings.md holds this text)."""
    rows = ["| flag | field | type | default | allowed | meaning |", "|---|---|---|---|---|---|"]
    for root in classes:
        for _, owner, f in root.leaves():
            spec = spec_of(f)
            if spec is None:
                continue
            hint = hints(owner)[f.name]
            default = default_of(f)
            shown = "" if default is None else f"`{json_value(default)}`"
            if spec.cli_default is not UNSET:
                shown += f" (command line: `{spec.cli_default}`)"
            flag = f"`{flag_of(f)}`" if spec.cli and not spec.argument else (
                "DATA" if spec.argument else "-")
            rows.append(f"| {flag} | `{owner.__name__}.{f.name}` | {type_name(hint)} | "
                        f"{shown} | {spec.expected() or ''} | {spec.help} |")
    return "\n".join(rows) + "\n"
