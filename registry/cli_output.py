"""The one output sink of ``adreg``: commands return data, this renders it (human, JSON or quiet).

Errors and hints always go to stderr; JSON goes to stdout and nothing else does in JSON mode.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from registry.errors import RegistryError
from registry.types import to_jsonable

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)


class Activity:
    """The one transient status line on stderr for long work in this process (local jobs, folder merges,
    the demo). Shown only to a person: nothing in ``--json`` mode or when stderr is not a terminal."""

    def __init__(self) -> None:
        self.json_mode = False
        self._status: Any = None

    def say(self, text: str) -> None:
        if self.json_mode or not stderr.is_terminal:
            return
        if self._status is None:
            self._status = stderr.status(escape(text))
            self._status.start()
        else:
            self._status.update(escape(text))

    def job(self, job_id: int, fraction: float, message: str | None) -> None:
        """A progress listener for :class:`registry.Registry` (``on_progress``)."""
        self.say(f"job {job_id}: {fraction:>4.0%} {message or ''}")

    def transfer(self, done: int, total: int) -> None:
        """A progress listener for uploads to a server (``RemoteRegistry.on_upload``)."""
        self.say(f"uploading {human_size(done)} of {human_size(total)} ({done / max(total, 1):.0%})")

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


activity = Activity()


class FailedOutcome(RegistryError):
    """A command whose work ran and failed (a job, a validation, a recipe run): its ``data`` is still shown
    (table or JSON) before the error, and the exit code is 1."""

    def __init__(self, message: str, data: Any) -> None:
        super().__init__(message)
        self.data = data


def fail(err: RegistryError) -> None:
    """Print a user error (and its hint) to stderr and exit 1."""
    stderr.print(f"[bold red]error:[/] {escape(str(err))}", markup=True, highlight=False)
    if err.hint:
        stderr.print(f"[dim]hint:[/] {escape(err.hint)}", markup=True, highlight=False)
    raise typer.Exit(1)


def emits(render: Callable[[Any], None] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command that returns data: ``--json`` prints it as JSON, otherwise ``render`` shows it.

    The command must take a ``json_output: bool`` parameter. A :class:`RegistryError` becomes exit 1.
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> None:
            activity.json_mode = bool(kwargs.get("json_output"))
            try:
                data = fn(*args, **kwargs)
            except FailedOutcome as err:
                activity.stop()
                _show(err.data, render, kwargs.get("json_output"))
                fail(err)
                return
            except RegistryError as err:
                activity.stop()
                fail(err)
                return
            except OSError as exc:  # the user's environment (a path, permissions, a full disk), not a bug
                activity.stop()
                where = f" ({exc.filename})" if exc.filename else ""
                fail(RegistryError(f"{exc.strerror or exc}{where}"))
                return
            finally:
                activity.stop()
            _show(data, render, kwargs.get("json_output"))

        return wrapper

    return deco


def _show(data: Any, render: Callable[[Any], None] | None, json_mode: bool | None) -> None:
    if json_mode:
        sys.stdout.write(json.dumps(to_jsonable(data), indent=2, sort_keys=False) + "\n")
    elif render is not None and data is not None:
        render(data)


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
