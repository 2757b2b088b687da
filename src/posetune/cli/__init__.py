"""The `posetune` command line: thin — parse, call the API, print. torch is imported only inside commands.

``app`` (the Typer app, cli/app.py) gets its commands from ``training_commands``, ``inference_commands``
and ``data_commands``; :func:`main` turns errors into one line and an exit code.
"""

from __future__ import annotations

import os
import sys

import typer

# isort: off
# Importing a command module registers its commands; `posetune --help` lists them in this order.
from posetune.cli import training_commands, inference_commands, data_commands  # noqa: F401
# isort: on
from posetune.cli.app import app, data_app
from posetune.errors import PosetuneError

__all__ = ["app", "console_entry", "data_app", "main"]


def main() -> None:
    """Entry point: errors become one line and an exit code (2 bad input, 1 a problem found).

    Typer runs in standalone mode, so its own usage errors (an unknown command or option, a missing
    argument, a value of the wrong type) print typer's usage message and exit 2 whichever click it
    runs on: typer >= 0.16 vendors its own click, so catching ``click.ClickException`` here never matched.
    """
    try:
        app()  # standalone: always leaves through SystemExit (typer.Exit's code, 2 for usage errors)
    except PosetuneError as exc:
        typer.echo(f"error: {' '.join(str(exc).split())}", err=True)  # one line, whatever the message held
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except ModuleNotFoundError as exc:
        extra = {"torch": "train", "torchvision": "train", "timm": "train", "safetensors": "train", "sklearn": "train",
                 "matplotlib": "train", "imagehash": "train", "cleanlab": "train", "onnxruntime": "onnx", "onnx": "export",
                 "onnxscript": "export", "fastapi": "serve", "uvicorn": "serve", "fastapi_offline": "serve",
                 "prometheus_client": "serve", "tensorboard": "train", "mlflow": "track", "sqlalchemy": "track",
                 "alembic": "track", "captum": "train"}.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        typer.echo(f"error: this command needs {exc.name}, which is not installed; pip install 'posetune[{extra}]'",
                   err=True)
        sys.exit(2)


# Commands whose every output file is written (atomically) and closed before they return, and that then only
# print: once stdout/stderr are flushed, the interpreter's teardown of torch, timm and torch._dynamo (~1 s of a
# 3.5 s `posetune predict RUN one.jpg` here) buys nothing.
_QUICK_EXIT = {"predict", "evaluate", "backbones"}


def console_entry() -> None:
    """The `posetune` script: :func:`main`, then read-only commands leave without the slow teardown."""
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if len(sys.argv) > 1 and sys.argv[1] in _QUICK_EXIT and "torch" in sys.modules:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        raise
