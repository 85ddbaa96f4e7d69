"""The command line: thin commands over the library; only this package prints.

Options are declared once (options.py); the commands live by subject in data_cmds,
train_cmds, model_cmds and serve_cmd, and are registered here."""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Callable
from typing import Annotated

import typer
from rich.text import Text

from imageclf import __version__
from imageclf.cli import audit_cmds, data_cmds, model_cmds, serve_cmd, train_cmds
from imageclf.cli.options import err
from imageclf.core.errors import ImageclfError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Train, inspect and use image classifiers.")
bench_app = typer.Typer(no_args_is_help=True, help="Measure parts of the pipeline.")
app.add_typer(bench_app, name="bench")
_state = {"debug": False}


def help_texts(fn: Callable) -> tuple[str, str]:
    """(help, short help) from a command's docstring: its paragraphs with the source's line
    breaks joined, and its first sentence for the command list."""
    doc = inspect.cleandoc(fn.__doc__ or "")
    paragraphs = [" ".join(p.split()) for p in doc.split("\n\n") if p.strip()]
    first = paragraphs[0] if paragraphs else ""
    end = first.find(". ")
    return "\n\n".join(paragraphs), first if end < 0 else first[:end + 1]


def _register(group: typer.Typer, fn: Callable, name: str | None = None) -> None:
    text, short = help_texts(fn)
    group.command(name, help=text, short_help=short)(fn)


for _name, _cmd in (("verify", data_cmds.verify), ("show-batch", data_cmds.show_batch),
                    ("pack", data_cmds.pack), ("audit", audit_cmds.audit),
                    ("review", audit_cmds.review),
                    ("train", train_cmds.train), ("lr-find", train_cmds.lr_find),
                    ("demo", train_cmds.demo), ("predict", model_cmds.predict),
                    ("evaluate", model_cmds.evaluate), ("calibrate", model_cmds.calibrate),
                    ("export", model_cmds.export), ("push", model_cmds.push),
                    ("report", model_cmds.report), ("serve", serve_cmd.serve)):
    _register(app, _cmd, _name)
_register(bench_app, data_cmds.bench_loader, "loader")


def _version(value: bool) -> None:
    if value:
        import platform

        print(f"imageclf {__version__} (Python {platform.python_version()})")
        raise typer.Exit


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
          verbose: Annotated[bool, typer.Option(
              "--verbose", "-v", help="Log what the library does (INFO messages).")] = False,
          version: Annotated[bool, typer.Option(
              "--version", help="Print the version and exit.", callback=_version,
              is_eager=True)] = False) -> None:
    _state["debug"] = debug
    logging.basicConfig(level=logging.INFO if verbose or debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def main() -> None:
    """Entry point: run the app; a bad setting, unusable data or a damaged file is one clear
    line (exit 2), not a traceback."""
    try:
        rc = app(standalone_mode=False)  # a typer.Exit comes back as its exit code
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except ImageclfError as e:
        if _state["debug"]:
            raise
        err.print(Text.assemble(("error:", "red"), f" {e}"))
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted")
        sys.exit(130)
    except Exception as e:  # click's usage errors carry their own message and exit code
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if _state["debug"]:
            raise
        err.print(Text.assemble(("error:", "red"),
                                f" {type(e).__name__}: {e}  (run with --debug for details)"))
        sys.exit(1)
