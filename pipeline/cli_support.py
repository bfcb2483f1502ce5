"""What both command-line tools (``l2l-priors``, ``l2l-train``) share: the stderr console,
the ``--params`` option, logging set-up, loading params and error exits."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler

from pipeline.config import ConfigError

console = Console(stderr=True)

ParamsOption = Annotated[
    Path, typer.Option("--params", "-p", help="params.yaml to read (every tunable lives there).")
]

Params = TypeVar("Params")


def command_app(help: str) -> typer.Typer:
    """A tool's Typer app: help when run bare, errors without tracebacks of locals, and help
    text read as Markdown, so a docstring's single line breaks reflow to the terminal's width
    (rich markup mode keeps them) and ``name`` renders as code."""
    return typer.Typer(
        help=help,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        rich_markup_mode="markdown",
    )


def setup_logging(level: int = logging.INFO) -> None:
    """Log messages through rich on the stderr console."""
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )


def fail(message: str | Exception, code: int = 1) -> typer.Exit:
    """Print ``message`` in red as plain text (messages hold paths and lists whose brackets
    rich would read as markup) and return the exit to raise."""
    console.print(str(message), style="red", markup=False)
    return typer.Exit(code)


def load_params(path: Path, loader: Callable[[Path], Params]) -> Params:
    """``loader(path)``; invalid params exit with code 2 naming the key."""
    try:
        return loader(path)
    except ConfigError as err:
        raise fail(f"invalid params: {err}", 2) from None
