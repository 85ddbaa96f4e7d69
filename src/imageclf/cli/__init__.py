"""The command line: thin commands over the library; only this package prints.

Options are declared once (options.py); the commands live by subject in data_cmds,
train_cmds, model_cmds and serve_cmd, and are registered here."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer
from rich.text import Text

from imageclf.cli import data_cmds, model_cmds, serve_cmd, train_cmds
from imageclf.cli.options import err
from imageclf.errors import ImageclfError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Train, inspect and use image classifiers.")
bench_app = typer.Typer(no_args_is_help=True, help="Measure parts of the pipeline.")
app.add_typer(bench_app, name="bench")
_state = {"debug": False}

app.command()(data_cmds.verify)
app.command("show-batch")(data_cmds.show_batch)
bench_app.command("loader")(data_cmds.bench_loader)
app.command()(train_cmds.train)
app.command("lr-find")(train_cmds.lr_find)
app.command()(train_cmds.demo)
for _cmd in (model_cmds.predict, model_cmds.evaluate, model_cmds.calibrate, model_cmds.export,
             model_cmds.push, model_cmds.report):
    app.command()(_cmd)
app.command()(serve_cmd.serve)


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
          verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
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
