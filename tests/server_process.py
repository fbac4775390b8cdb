"""A real ``adreg serve`` process for tests: its own catalog (SQLite or PostgreSQL), a free port, an admin token."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``adreg serve`` on 127.0.0.1:<free port> over ``env``'s catalog; ``admin_token`` from ``adreg init --admin``."""

    def __init__(self, env: dict[str, str], log: Path, admin: str = "admin") -> None:
        self.env = env
        self.log = log
        init = subprocess.run([sys.executable, "-m", "registry.cli", "init", "--admin", admin, "--json"],
                              env=env, capture_output=True, text=True, check=True)
        import json

        self.admin_token: str = json.loads(init.stdout)["token"]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._fh = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "registry.cli", "serve", "--port", str(self.port), "--log-level", "info"],
            env=env, stdout=self._fh, stderr=subprocess.STDOUT,
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"adreg serve exited early:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"adreg serve not up after {timeout}s:\n{self.log.read_text()}")

    def client_env(self, home: Path, token: str | None = None) -> dict[str, str]:
        """The environment of a client process on "another host": its own ADREG_HOME, the server's URL."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ADREG_")}
        return {**env, "ADREG_HOME": str(home), "ADREG_URL": self.url, "ADREG_TOKEN": token or self.admin_token,
                "ADREG_CONFIG_DIR": str(home / "config")}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._fh.close()
