"""The Typer app and what every command shares: the reporter and JSON output."""

from __future__ import annotations

import json
import os
import sys

import typer

app = typer.Typer(
    name="posetune", no_args_is_help=True, add_completion=False, rich_markup_mode="markdown",
    help="Fine-tune pretrained image backbones into classifiers for your own classes (yoga poses first), "
         "and find which backbone and strategy win.\n\nStart with: `posetune demo`",
)
data_app = typer.Typer(no_args_is_help=True, help="Look at a dataset before training: audit it or render a synthetic one.")
app.add_typer(data_app, name="data")


def reporter_for(json_out: bool):
    from posetune.console import Reporter, RichReporter

    if os.environ.get("RANK", "0") != "0":
        return Reporter()  # under torchrun only rank 0 talks
    return RichReporter(stderr=json_out)  # with --json, stdout carries only the JSON


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
