"""The command line's options: the settings dataclasses' fields turned into typer options
(`settings_command`), and the few options that belong to one command's running rather than
to a setting a run records, each declared once here."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from imageclf.core.errors import ConfigError
from imageclf.core.settings import UNSET, Settings, default_of, flag_of, spec_of

# no markup or emoji codes in what is printed: paths, class names and error messages are
# the user's text ("runs/[v2]", a gloo error naming "[pair.cc:152]") and print as they are
console = Console(soft_wrap=True, markup=False, emoji=False)
err = Console(stderr=True, soft_wrap=True, markup=False, emoji=False)


def _opt(*names: str, help: str | None = None, panel: str | None = None  # noqa: A002
         ) -> Any:
    return typer.Option(*names, help=help, rich_help_panel=panel)


# --- options of running a command (not settings a run records) ----------------------------
Device = Annotated[str, _opt("--device", help="auto (the GPU when there is one), cuda or cpu.")]
Resume = Annotated[Path | None, _opt(
    "--resume", help="Continue this run directory from its last checkpoint.", panel="Run")]
AutoResume = Annotated[bool, _opt(
    "--auto-resume", help="Restartable jobs (torchrun --max-restarts, preemptible "
    "machines): continue --out's run from its checkpoint, or start it.", panel="Run")]
CheckpointEvery = Annotated[float, _opt(
    "--checkpoint-every", help="Minutes between checkpoints within an epoch (0: at epoch "
    "ends only).", panel="Run")]
ModelArg = Annotated[Path, typer.Argument(help="A model/ folder written by `imageclf train`.",
                                          metavar="MODEL")]
Json = Annotated[bool, _opt("--json", help="Print JSON.")]
Bs = Annotated[int, _opt("--bs", help="Images per forward pass.")]
Precision = Annotated[str, _opt("--precision", help="auto, bf16, fp16 or fp32.")]
MinConfidence = Annotated[float | None, _opt(
    "--min-confidence", help="Answer 'none' when the top softmax probability is below this "
    "(replaces model.json's rule with msp at this threshold).")]
Ood = Annotated[Path | None, _opt(
    "--ood", help="A folder of images from no known class (sub-folders and labels ignored): "
    "report how well each open-set score tells them from the known classes.")]
Keep = Annotated[float, _opt(
    "--keep", help="Share of known (validation) images that must keep a label: the "
    "threshold's true-positive rate.")]
ServeModelArg = Annotated[Path, typer.Argument(
    help="A model/ folder, or a run directory holding one.", metavar="MODEL")]
Host = Annotated[str, _opt("--host", help="Address to listen on (loopback only by default).")]
Port = Annotated[int, _opt("--port", help="Port to listen on.")]
Tta = Annotated[bool, _opt("--tta", help="Average flipped/zoomed views.")]
PredictSize = Annotated[int | None, _opt(
    "--size", help="Predict at this side instead of the model's own (model.json size).")]
Output = Annotated[Path | None, _opt("-o", "--output", help="Where to write the picture.")]


def check_device(device: str) -> None:
    """--device must be one of auto, cpu, cuda."""
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda; got {device!r}")


# --- settings as options -------------------------------------------------------------------
def _store_presize(path: str | None, fallback: int) -> int:
    """A store's own presize when DATA is one, else `fallback`."""
    from imageclf.data.remote import store_presize

    return store_presize(path) or fallback


# settings whose command-line default comes from DATA: leaf -> (DATA, fallback) -> value
FROM_DATA: dict[str, Callable[[str | None, Any], Any]] = {"presize": _store_presize}


def _field_default(cls: type, name: str) -> Any:
    """The Python default of the leaf setting `name` of `cls`."""
    return default_of(next(f for _, _, f in cls.leaves() if f.name == name))


@dataclasses.dataclass(frozen=True)
class _Leaf:
    """One setting offered by a command: its parameter, and how its value becomes the
    field's."""

    name: str
    param: inspect.Parameter
    parse: Callable[[Any], Any] | None


def _selected(path: tuple[str, ...], name: str, only: set[str] | None,
              exclude: set[str]) -> bool:
    names = {*path, name}
    return not (names & exclude) and (only is None or bool(names & only))


def _leaf_params(root: type, only: set[str] | None, exclude: set[str],
                 defaults: dict[str, Any], data_required: bool) -> list[_Leaf]:
    """The typer parameters of `root`'s leaf settings that the command offers."""
    out = []
    for path, owner, f in root.leaves():
        spec = spec_of(f)
        if spec is None or not spec.cli or not _selected(path, f.name, only, exclude):
            continue
        tp = spec.cli_type or typing.get_type_hints(owner)[f.name]
        default = None if f.name in FROM_DATA else defaults.get(
            f.name, spec.cli_default if spec.cli_default is not UNSET
            else default_of(f))
        if spec.argument:
            info = typer.Argument(help=escape(spec.help), show_default=False, metavar="DATA")
            if data_required:
                default = inspect.Parameter.empty
            else:
                tp = tp | None
        else:
            if default is None and spec.cli_type is not None:
                tp = tp | None
            info = typer.Option(flag_of(f), help=escape(spec.help),
                                rich_help_panel=owner.section, metavar=spec.metavar,
                                show_default=default is not None and default is not False)
        kind = (inspect.Parameter.POSITIONAL_OR_KEYWORD if spec.argument
                else inspect.Parameter.KEYWORD_ONLY)
        out.append(_Leaf(f.name, inspect.Parameter(f.name, kind, default=default,
                                                   annotation=Annotated[tp, info]),
                         spec.parse))
    return out


def _built(groups: dict[str, type], leaves: dict[str, list[_Leaf]], kw: dict[str, Any],
           defaults: dict[str, Any]) -> dict[str, Any]:
    """The command's keyword arguments with each settings group built from its leaves'
    values; a leaf whose default comes from DATA (FROM_DATA) and was not given gets it."""
    values = {name: {leaf.name: leaf.parse(kw[leaf.name]) if leaf.parse is not None
                     else kw[leaf.name] for leaf in leaves[name]} for name in groups}
    for leaf in (x for name in groups for x in leaves[name]):
        kw.pop(leaf.name)
    data = next((v["path"] for v in values.values() if "path" in v), None)
    for name, cls in groups.items():
        for leaf_name, from_data in FROM_DATA.items():
            if leaf_name in values[name] and values[name][leaf_name] is None:
                values[name][leaf_name] = from_data(data, defaults.get(
                    leaf_name, _field_default(cls, leaf_name)))
        kw[name] = cls.build(values[name])
    return kw


def settings_command(fn: Callable | None = None, *, only: Iterable[str] | None = None,
                     exclude: Iterable[str] = (), defaults: dict[str, Any] | None = None,
                     data_required: bool = True) -> Any:
    """A command whose parameters annotated with a settings class (DataConfig, TrainConfig,
    DataSource...) receive that class built from options generated from its fields.

    `only` / `exclude` choose the leaves offered, by leaf name or by the name of a nested
    part ("source", "aug", "reg"); `defaults` changes a leaf's default on this command
    (show-batch's --bs 16). The command's other parameters stay as it declares them."""
    if fn is None:
        return functools.partial(settings_command, only=only, exclude=exclude,
                                 defaults=defaults, data_required=data_required)
    hints = typing.get_type_hints(fn, include_extras=True)
    sig = inspect.signature(fn)
    groups = {n: hints[n] for n in sig.parameters
              if isinstance(hints.get(n), type) and issubclass(hints[n], Settings)}
    leaves = {n: _leaf_params(cls, set(only) if only is not None else None, set(exclude),
                              defaults or {}, data_required) for n, cls in groups.items()}
    # every parameter keyword-only (typer goes by name): arguments keep their order, the
    # settings' argument (DATA) standing where its settings parameter stood
    params, options, own = [], [], []
    for n, p in sig.parameters.items():
        if n not in groups:
            p = p.replace(annotation=hints[n], kind=inspect.Parameter.KEYWORD_ONLY)
            is_arg = any(isinstance(m, typer.models.ArgumentInfo)
                         for m in getattr(hints[n], "__metadata__", ()))
            (params if is_arg else own).append(p)
            continue
        for leaf in leaves[n]:
            target = params if leaf.param.kind is not inspect.Parameter.KEYWORD_ONLY \
                else options
            target.append(leaf.param.replace(kind=inspect.Parameter.KEYWORD_ONLY))
    clash = {p.name for p in params} & {p.name for p in options}
    assert not clash, f"{fn.__name__}: parameters shadow settings {clash}"
    params += options + own  # the settings' panels first, then the command's own options

    @functools.wraps(fn)
    def run(**kw: Any) -> Any:
        return fn(**_built(groups, leaves, kw, defaults or {}))

    del run.__wrapped__  # typer reads the signature below, not the function's own
    run.__signature__ = inspect.Signature(params, return_annotation=None)
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run
