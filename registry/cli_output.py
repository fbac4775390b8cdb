"""The one output sink of ``adreg``: commands return data, this renders it (human, JSON or quiet).

Errors and hints always go to stderr; JSON goes to stdout and nothing else does in JSON mode.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from dataclasses import is_dataclass
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from registry.errors import RegistryError
from registry.types import _jsonable

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)


def jsonable(data: Any) -> Any:
    if hasattr(data, "to_dict"):
        return data.to_dict()
    if is_dataclass(data) and not isinstance(data, type):
        import dataclasses

        return _jsonable(dataclasses.asdict(data))
    if hasattr(data, "model_dump"):
        return data.model_dump(mode="json")
    if isinstance(data, (list, tuple)):
        return [jsonable(x) for x in data]
    if isinstance(data, dict):
        return {k: jsonable(v) for k, v in data.items()}
    return _jsonable(data)


def fail(err: RegistryError) -> None:
    """Print a user error (and its hint) to stderr and exit 1."""
    stderr.print(f"[bold red]error:[/] {err}", markup=True, highlight=False)
    if err.hint:
        stderr.print(f"[dim]hint:[/] {err.hint}", markup=True, highlight=False)
    raise typer.Exit(1)


def emits(render: Callable[[Any], None] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command that returns data: ``--json`` prints it as JSON, otherwise ``render`` shows it.

    The command must take a ``json_output: bool`` parameter. A :class:`RegistryError` becomes exit 1.
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> None:
            try:
                data = fn(*args, **kwargs)
            except RegistryError as err:
                fail(err)
                return
            if kwargs.get("json_output"):
                sys.stdout.write(json.dumps(jsonable(data), indent=2, sort_keys=False) + "\n")
            elif render is not None and data is not None:
                render(data)

        return wrapper

    return deco


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    tbl = Table(title=title, show_lines=False, header_style="bold")
    for col in columns:
        tbl.add_column(col, overflow="fold")
    for row in rows:
        tbl.add_row(*["" if v is None else escape(str(v)) for v in row])
    stdout.print(tbl)


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
