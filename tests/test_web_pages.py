"""The web page in a real browser: sign in, search (issue 16)."""

from __future__ import annotations

from web_browser import browser


def test_sign_in_and_search_in_a_browser(server, tiny) -> None:  # type: ignore[no-untyped-def]
    from registry import Registry

    with Registry(server.url, token=server.admin_token) as reg:
        reg.register(tiny["tone"], name="support-tone", base_path=tiny["llama"], description="polite support")
        reg.register(tiny["tone2"], name="legal", base_path=tiny["llama"])
    with browser(server.url) as b:
        page = b.open("/")
        assert "/login" in page.url  # type: ignore[attr-defined]
        b.sign_in("adreg_1_wrong")
        assert "invalid" in page.inner_text(".error").lower() or page.locator(".error").count() == 1  # type: ignore[attr-defined]
        b.sign_in(server.admin_token)
        assert page.locator("table.versions tbody tr").count() == 2  # type: ignore[attr-defined]
        b.screenshot("adapters")
        page.fill("input[name=q]", "polite")  # type: ignore[attr-defined]
        page.click("form.filters button[type=submit]")  # type: ignore[attr-defined]
        page.wait_for_load_state()  # type: ignore[attr-defined]
        rows = page.locator("table.versions tbody tr")  # type: ignore[attr-defined]
        assert rows.count() == 1 and "support-tone:1" in rows.first.inner_text()
        cookie = next(c for c in page.context.cookies() if c["name"] == "adreg_session")  # type: ignore[attr-defined]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        b.assert_clean()


def test_favicon_is_served_without_a_session(server) -> None:  # type: ignore[no-untyped-def]
    """A real browser asks for /favicon.ico on its own; a 404 there would be a console error on every page."""
    import httpx

    response = httpx.get(f"{server.url}/favicon.ico", follow_redirects=True)
    assert response.status_code == 200 and response.headers["content-type"].startswith("image/svg+xml")
