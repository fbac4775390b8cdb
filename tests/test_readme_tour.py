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
        # the tour's merges of trained versions: retention measured, weights learned (issue 17)
        blend = next(j for j in reg.jobs(kind="merge") if j.result_ref == "tone-blend:1")
        assert {p["parent"] for p in blend.report["retention"]["parents"]} == {"support-tone:2", "legal:2"}
        learned = next(j for j in reg.jobs(kind="merge") if j.result_ref == "tone-learned:1")
        assert [p.weight for p in reg.get("tone-learned:1").parents] == learned.report["learned_weights"]["weights"]


def test_team_registry_section_runs_as_written(broker_url, tmp_path, monkeypatch):
    """The three terminals of "A team registry", run as written: exports, `cd`, `adreg` commands (the server and
    the worker in the background); a token a comment says to keep is kept under that name. Only the port and the
    Redis database are swapped for free ones."""
    import subprocess
    import sys
    import time

    import httpx
    from server_process import free_port

    port = str(free_port())
    text = "\n".join(blocks("## A team registry", "bash"))
    text = text.replace("8080", port).replace("redis://127.0.0.1:6379/0", broker_url)
    terminals = [t for t in re.split(r"^(?=# terminal \d)", text, flags=re.M) if t.strip()]
    assert len(terminals) == 3
    base = {k: v for k, v in os.environ.items() if not k.startswith("ADREG_")}
    base.update(HOME=str(tmp_path), TOKENIZERS_PARALLELISM="false")
    monkeypatch.setenv("HOME", str(tmp_path))  # `~` in the README is this test's folder
    kept: dict[str, str] = {}
    background: list[subprocess.Popen] = []
    ran: list[str] = []

    def run_terminal(block: str) -> None:
        env, cwd = dict(base), tmp_path
        for line in block.splitlines():
            keep = re.search(r"keep it as (\w+)", line)
            for part in re.split(r"\s*(?:;|&&)\s*", line.split("#", 1)[0].strip()):
                if not part:
                    continue
                words = shlex.split(part)
                expand = lambda w: os.path.expanduser(re.sub(r"\$(\w+)", lambda m: {**env, **kept}[m[1]], w))  # noqa: E731
                words = [expand(w) for w in words]
                if words[0] == "export":
                    env.update(w.split("=", 1) for w in words[1:])
                    continue
                if words[0] == "cd":
                    cwd = Path(words[1])
                    continue
                assert words[0] == "adreg", f"README line is not an adreg command: {line}"
                argv = [sys.executable, "-m", "registry.cli", *words[1:]]
                ran.append(" ".join(words[:3]))
                if words[1] in ("serve", "worker"):
                    log = tmp_path / f"{words[1]}.log"
                    background.append(subprocess.Popen(argv, env=env, cwd=cwd, stdout=log.open("w"),
                                                       stderr=subprocess.STDOUT))
                    _wait_until_up(words[1], log, background[-1], port)
                    continue
                done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
                assert done.returncode == 0, f"`{part}` exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
                assert "Traceback" not in done.stdout + done.stderr
                if keep:
                    kept[keep[1]] = done.stdout.strip().splitlines()[-1]

    def _wait_until_up(what: str, log: Path, proc: subprocess.Popen, port: str) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            if what == "worker" and " ready." in log.read_text():
                return
            if what == "serve":
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
            time.sleep(0.2)
        raise AssertionError(f"{what} did not come up: {log.read_text()[-2000:]}")

    try:
        for terminal in terminals:
            run_terminal(terminal)
        assert kept["OPS_TOKEN"].startswith("adreg_") and kept["WORKER_TOKEN"].startswith("adreg_")
        assert "adreg merge cx-tone:1" in ran and "adreg audit" in ran
        pulled = tmp_path / "adreg-laptop" / "demo" / "cx-mix"
        assert {p.name for p in pulled.iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
        from registry.remote import RemoteRegistry

        with RemoteRegistry(f"http://127.0.0.1:{port}", token=kept["OPS_TOKEN"]) as reg:
            mixed = reg.get("cx-mix:1")
            assert mixed.created_by == "ops" and [p.ref for p in mixed.parents] == ["cx-tone:1", "cx-legal:1"]
            assert Path(mixed.path).is_relative_to(tmp_path / "adreg-server")  # the server's store ...
            assert (tmp_path / "adreg-worker" / "worker" / "cache").is_dir()  # ... fed by the worker's own cache
            actions = {(e["actor"], e["action"]) for e in reg.audit_events()}
            assert {("ops", "version.register"), ("ops", "job.submit")} <= actions
    finally:
        for proc in background:
            proc.terminate()
            proc.wait(30)
