"""What every ``mlops`` sub-command shares: the consoles, settings loading, failing."""

from __future__ import annotations

from collections.abc import Callable

import typer
from rich.console import Console

from mlops.settings import Settings

console = Console()
err = Console(stderr=True, soft_wrap=True)  # errors stay on one line: grep and copy them


def fail(exc: Exception) -> typer.Exit:
    """Print ``exc`` as one red line (never parsed as markup) and end with exit code 1."""
    err.print(f"error: {exc}", style="red", markup=False, highlight=False)
    return typer.Exit(1)


def load_settings() -> Settings:
    """Settings from the environment; invalid settings end the command with exit code 2."""
    try:
        return Settings()
    except ValueError as exc:
        err.print(f"invalid settings: {exc}", style="red", markup=False, highlight=False)
        raise typer.Exit(2) from exc


def at_least_one(meaning: str) -> Callable[[int], int]:
    """A Typer option callback refusing counts below 1 with a message saying what the
    count means (``meaning``), so the user knows which number to give instead."""

    def check(value: int) -> int:
        if value < 1:
            raise typer.BadParameter(
                f"must be a whole number of at least 1 ({meaning}), not {value}"
            )
        return value

    return check
