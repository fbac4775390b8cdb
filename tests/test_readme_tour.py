"""README.md's tours run as written: every command of the CLI tour (after `adreg demo`), the Hub lines against
the local fake Hub, then the SDK tour. A README change that breaks a line breaks this test."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from typer.testing import CliRunner

from registry.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"
runner = CliRunner()


def blocks(heading: str, language: str) -> list[str]:
    """The fenced ``language`` blocks between ``heading`` and the next ``## `` heading."""
    text = README.read_text()
    section = text[text.index(heading):]
    section = section[:section.find("\n## ", 1)] if "\n## " in section[1:] else section
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def _expand(token: str) -> str:
    token = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: os.environ.get(m[1]) or m[2], token)
    return os.path.expanduser(os.path.expandvars(token))


def run_shell(block: str, monkeypatch) -> list[str]:  # type: ignore[no-untyped-def]
    """Run each line of a bash block: `cd DIR` and `adreg ...` commands, `;`-separated, comments ignored.
    Anything else fails the test, so the README only shows what a user can paste."""
    ran = []
    for line in block.splitlines():
        tokens = shlex.split(line, comments=True)
        commands: list[list[str]] = [[]]
        for token in tokens:
            if token == ";":
                commands.append([])
            else:
                commands[-1].append(_expand(token))
        for command in filter(None, commands):
            if command[0] == "cd":
                monkeypatch.chdir(command[1])
                continue
            assert command[0] == "adreg", f"README line is not an adreg command: {line}"
            result = runner.invoke(app, command[1:])
            output = result.stdout + result.stderr
            assert result.exit_code == 0, f"`{' '.join(command)}` exited {result.exit_code}:\n{output}"
            assert "Traceback" not in output
            ran.append(" ".join(command[:3]))
    return ran


def test_readme_tours_run_as_written(hub, monkeypatch, tmp_path):
    home = Path(os.environ["ADREG_HOME"])
    assert runner.invoke(app, ["demo"]).exit_code == 0  # the README's first command
    cli, hub_lines = blocks("## Tour: the CLI", "bash")
    ran = run_shell(cli, monkeypatch)
    assert Path.cwd() == home / "demo" and len(ran) >= 18
    assert (home / "demo" / "merged" / "adapter_model.safetensors").is_file()
    ran = run_shell(hub_lines, monkeypatch)
    assert "acme/tone-legal" in hub.repos and len(ran) == 2

    [sdk] = blocks("## Tour: the SDK", "python")
    exec(compile(sdk, "README.md (SDK tour)", "exec"), {})  # noqa: S102 - the README's own code
    from registry import Registry

    with Registry() as reg:
        assert {v.ref for v in reg.versions_of("tone-style")} == {"tone-style:1"}
        assert reg.get("tone-legal-hub:1").source_uri.startswith("hf://acme/tone-legal@")
        assert [p.ref for p in reg.get("tone-style:1").parents] == ["support-tone:1", "style:1"]
