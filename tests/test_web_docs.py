"""The screenshots the README shows (docs/img/*.png), taken in a real browser from a demo-like catalog.

Every run saves them under test-artifacts/docs/; regenerate the committed ones with

    ADREG_DOCS_IMAGES=1 pytest tests/test_web_docs.py

A page that gets a screenshot adds one ``b.docs_image(NAME, PATH)`` line below and a reference in the README.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from web_browser import DOCS_IMAGES, browser

README = Path(__file__).resolve().parents[1] / "README.md"
MAX_BYTES = 150_000


def demo_like_catalog(url: str, token: str, tiny: dict[str, Path]) -> dict[str, Any]:
    """What `adreg demo` and the README's tour leave, on the server at ``url``: a named tiny base, three adapters
    with tags and descriptions, an alias, a metric, and a merge of two of them (lineage)."""
    from registry import Registry

    with Registry(url, token=token) as reg:
        reg.add_base("tiny-llama", path=str(tiny["llama"]))
        reg.register(tiny["tone"], name="support-tone", base_path=tiny["llama"], tags={"team": "cx", "lang": "en"},
                     description="polite support tone")
        reg.register(tiny["tone2"], name="legal", base_path=tiny["llama"], tags={"team": "legal"},
                     description="contract clauses, formal register")
        reg.register(tiny["legal"], name="style", base_path=tiny["llama"], tags={"team": "cx"},
                     description="house style")
        reg.set_alias("legal:1", "production")
        reg.log_metric("support-tone:1", "accuracy", 0.72, dataset="chats")
        job = reg.merge(["support-tone:1", "legal@production"], weights=[0.7, 0.3], method="linear",
                        name="tone-legal").wait(120)
        assert job.status == "succeeded", job
        reg.describe("tone-legal", "support tone with legal care, merged 0.7 / 0.3")
        return {"merged": job.result.ref if job.result else "tone-legal:1"}


def test_docs_images(server, tiny) -> None:  # type: ignore[no-untyped-def]
    demo_like_catalog(server.url, server.admin_token, tiny)
    with browser(server.url) as b:
        b.sign_in(server.admin_token)
        shots = [b.docs_image("adapters", "/"), b.docs_image("version", "/v/tone-legal:1"),
                 b.docs_image("lineage", "/lineage/tone-legal:1")]
        b.assert_clean()
    for shot in shots:
        assert 0 < shot.stat().st_size < MAX_BYTES, (shot, shot.stat().st_size)


def test_the_readme_shows_the_committed_screenshots() -> None:
    shown = re.findall(r"!\[[^\]]*\]\((docs/img/[^)\s]+\.png)\)", README.read_text())
    assert "docs/img/adapters.png" in shown
    root = README.parent
    for image in shown:
        size = (root / image).stat().st_size
        assert size < MAX_BYTES, f"{image} is {size:,} bytes: regenerate it (tests/test_web_docs.py)"
    assert {f"docs/img/{p.name}" for p in DOCS_IMAGES.glob("*.png")} <= set(shown), "an image the README never shows"
