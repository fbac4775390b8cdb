"""A real browser for the web page's tests: Debian's Chromium driven by Playwright (its own browser download does
not work here), headless. Every console error and every request that leaves 127.0.0.1 is recorded, so a test can
assert there were none; screenshots go to ``ADREG_TEST_ARTIFACTS`` (default ``test-artifacts/`` at the repository
root), which CI keeps."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ARTIFACTS = Path(os.environ.get("ADREG_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "test-artifacts")


@dataclass
class Browser:
    """One page in a fresh browser context, with what it saw."""

    page: object
    base_url: str
    console_errors: list[str] = field(default_factory=list)
    foreign_requests: list[str] = field(default_factory=list)

    def open(self, path: str) -> object:
        self.page.goto(self.base_url + path)  # type: ignore[attr-defined]
        return self.page

    def sign_in(self, token: str, path: str = "/") -> None:
        page = self.open(f"/login?next={path}")
        page.fill("input[name=token]", token)  # type: ignore[attr-defined]
        page.click("form[action='/login'] button[type=submit]")  # type: ignore[attr-defined]
        page.wait_for_load_state()  # type: ignore[attr-defined]

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        target = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(target), full_page=True)  # type: ignore[attr-defined]
        return target

    def assert_clean(self) -> None:
        assert self.console_errors == [], self.console_errors
        assert self.foreign_requests == [], self.foreign_requests


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def browser(base_url: str) -> Iterator[Browser]:
    """A headless Chromium page on ``base_url``; skips the test when Chromium or Playwright is missing (CI installs
    both: `.ci/run`)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = chromium_path()
    if executable is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    local = urlsplit(base_url).hostname
    with sync_api.sync_playwright() as playwright:
        chrome = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        context = chrome.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        seen = Browser(page, base_url)
        page.on("console", lambda msg: seen.console_errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: seen.console_errors.append(str(exc)))

        def request(req) -> None:  # type: ignore[no-untyped-def]
            host = urlsplit(req.url).hostname
            if req.url.startswith(("data:", "blob:", "about:")) or host == local:
                return
            seen.foreign_requests.append(req.url)

        page.on("request", request)
        # Nothing may leave the machine: requests elsewhere are recorded above and aborted here.
        page.route("**/*", lambda route: route.abort() if urlsplit(route.request.url).hostname not in (local, None)
                   and not route.request.url.startswith("data:") else route.continue_())
        try:
            page.set_default_timeout(15_000)
            yield seen
        finally:
            context.close()
            chrome.close()
