"""A real browser for the web page's tests: Debian's Chromium driven by Playwright (its own browser download does
not work here), headless. Every console error and every request that leaves 127.0.0.1 is recorded, so a test can
assert there were none; screenshots go to ``ADREG_TEST_ARTIFACTS`` (default ``test-artifacts/`` at the repository
root), which CI keeps. Without Chromium or Playwright a browser test skips, except under CI (``CI`` set, as
``.ci/run`` does), where it fails: a missing browser must not pass silently.

:meth:`Browser.docs_image` takes the screenshots the docs show (``docs/img/*.png``): every run saves them under
``test-artifacts/docs/``; ``ADREG_DOCS_IMAGES=1 pytest tests/test_web_docs.py`` also writes them into ``docs/img/``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("ADREG_TEST_ARTIFACTS") or ROOT / "test-artifacts")
DOCS_IMAGES = ROOT / "docs" / "img"
VIEWPORT = {"width": 1400, "height": 900}
#: The size of a docs image: the top of the page in a narrower window, so that the PNG stays small (< 150 KB).
DOCS_VIEWPORT = {"width": 1200, "height": 540}


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(reason: str) -> NoReturn:
    """Skip the test for want of a browser; fail under CI, which installs one (``.ci/run``)."""
    if under_ci():
        pytest.fail(f"{reason}: CI must run the browser tests (.ci/run installs Debian's chromium; playwright is in "
                    "the dev extras)", pytrace=False)
    pytest.skip(reason)


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

    def docs_image(self, name: str, path: str | None = None) -> Path:
        """A screenshot for the docs (``path`` opened first, if given): the top of the page at :data:`DOCS_VIEWPORT`,
        into ``test-artifacts/docs/NAME.png``, and into ``docs/img/NAME.png`` when ``ADREG_DOCS_IMAGES=1``."""
        if path is not None:
            self.open(path)
        page = self.page
        page.set_viewport_size(DOCS_VIEWPORT)  # type: ignore[attr-defined]
        try:
            (ARTIFACTS / "docs").mkdir(parents=True, exist_ok=True)
            target = ARTIFACTS / "docs" / f"{name}.png"
            page.screenshot(path=str(target), full_page=False, animations="disabled", caret="hide")  # type: ignore[attr-defined]
        finally:
            page.set_viewport_size(VIEWPORT)  # type: ignore[attr-defined]
        if os.environ.get("ADREG_DOCS_IMAGES") == "1":
            DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(target, DOCS_IMAGES / f"{name}.png")
        return target

    def assert_clean(self) -> None:
        assert self.console_errors == [], self.console_errors
        assert self.foreign_requests == [], self.foreign_requests


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def browser(base_url: str) -> Iterator[Browser]:
    """A headless Chromium page on ``base_url``; skips the test when Chromium or Playwright is missing, fails instead
    under CI (which installs both: `.ci/run`)."""
    try:
        from playwright import sync_api
    except ImportError:
        missing("Playwright is not installed (pip install -e '.[dev]')")
    executable = chromium_path()
    if executable is None:
        missing("Chromium is not installed (apt-get install -y chromium)")
    local = urlsplit(base_url).hostname
    with sync_api.sync_playwright() as playwright:
        chrome = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        context = chrome.new_context(viewport=VIEWPORT)
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
