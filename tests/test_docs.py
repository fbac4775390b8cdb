"""The docs name every `adreg` command: README.md or a page under docs/ shows each one as `adreg <command>`."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.main import get_command

from registry.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _commands(group, prefix: str = "") -> list[str]:  # type: ignore[no-untyped-def]
    found = []
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if getattr(command, "hidden", False):
            continue
        if hasattr(command, "commands"):
            found += _commands(command, path + " ")
        else:
            found.append(path)
    return found


def test_every_cli_command_is_documented() -> None:
    commands = _commands(get_command(app))
    assert {"list", "deprecate", "delete", "gc", "rename", "describe", "metric", "diff", "base add", "base show",
            "alias set", "pull", "serve"} <= set(commands)
    docs = (ROOT / "README.md").read_text() + "".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))
    missing = [c for c in commands if f"adreg {c}" not in docs]
    assert missing == [], f"commands no doc shows as `adreg <command>`: {missing}"


def test_the_walk_sees_nested_commands() -> None:
    demo = typer.Typer()
    sub = typer.Typer()
    sub.command("inner")(lambda: None)
    demo.command("top")(lambda: None)
    demo.add_typer(sub, name="group")
    assert sorted(_commands(get_command(demo))) == ["group inner", "top"]
