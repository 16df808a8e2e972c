"""The one place `settle` prints: Rich for people, JSON for machines, and the error line.

Commands build what they show from the typed reports lower layers return and hand it here,
so styling, the `--json` switch and where text goes (stdout for results, stderr for errors and
for notes beside JSON) are decided once. Nothing below engine/cli imports Rich.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn

__all__ = ["error", "escape", "json_out", "note", "progress", "show"]


def _console(*, stderr: bool = False) -> Console:
    # Made per call: Rich binds sys.stdout/sys.stderr when a Console is made, and tests (and
    # CliRunner) swap those streams between commands.
    return Console(stderr=stderr, soft_wrap=True, highlight=False)


def show(*items: RenderableType) -> None:
    """Prints for people on stdout, one item a line: Rich markup in strings, tables as tables."""
    _console().print(*items, sep="\n")


def note(text: str, *, as_json: bool) -> None:
    """A remark beside the result; on stderr when stdout carries JSON, so JSON stays parsable."""
    _console(stderr=as_json).print(text)


def json_out(data: Any) -> None:
    """The machine-readable result: one JSON document on stdout."""
    print(json.dumps(data))


def error(code: str, message: str) -> None:
    """The one shape of every error a user can cause: `error[code]: message`, on stderr."""
    print(f"error[{code}]: {message}", file=sys.stderr)


@contextmanager
def progress(
    description: str, total: float | None, *, counted: bool = False
) -> Iterator[Callable[..., None]]:
    """A transient progress bar (none when stdout is not a terminal: piped output stays the
    result alone); yields `update(description=..., advance=..., completed=...)`. `counted`
    shows "done/total" beside the bar."""
    columns: tuple[ProgressColumn, ...] = (TextColumn("{task.description}"), BarColumn())
    if counted:
        columns = (*columns, MofNCompleteColumn())
    console = _console()
    with Progress(
        *columns, console=console, transient=True, disable=not console.is_terminal
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda **changes: bar.update(task, **changes)


@contextmanager
def progress_per(names: tuple[str, ...], total: int) -> Iterator[Callable[[str, int], None]]:
    """One transient bar per name; yields `advance(name, count)`."""
    console = _console()
    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        tasks = {name: bar.add_task(name, total=total) for name in names}
        yield lambda name, count: bar.update(tasks[name], advance=count)
