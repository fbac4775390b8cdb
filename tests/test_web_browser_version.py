"""The version, base-model and merge pages in a real browser (issue 16): Debian's Chromium through Playwright, on a
real ``adreg serve`` over SQLite and over PostgreSQL. Screenshots: ``version``, ``merge-error``, ``base``."""

from __future__ import annotations

import re

import pytest
from web_browser import browser

from registry import Registry


@pytest.fixture(params=["sqlite", "postgresql"])
def any_server(request, start_server, server_env):  # type: ignore[no-untyped-def]
    """``adreg serve`` on the embedded SQLite catalog, or on a fresh PostgreSQL schema (the in-process executor
    runs the jobs either way)."""
    if request.param == "sqlite":
        return start_server(server_env)
    url = request.getfixturevalue("pg_schema_url")
    Registry.init(url, home=server_env["ADREG_HOME"])
    return start_server({**server_env, "ADREG_DATABASE_URL": url})


def _register(url: str, token: str, tiny) -> None:  # type: ignore[no-untyped-def]
    with Registry(url, token=token) as reg:
        reg.register(tiny["tone"], name="tone", base_path=tiny["llama"], description="polite support replies",
                     tags={"team": "cx"})
        reg.register(tiny["tone2"], name="tone", base_path=tiny["llama"])
        reg.set_alias("tone:1", "production")


def test_open_a_version_move_an_alias_and_submit_merges(any_server, tiny, request) -> None:  # type: ignore[no-untyped-def]
    server = any_server
    shots = request.node.callspec.params["any_server"] == "sqlite"  # one set of screenshots
    _register(server.url, server.admin_token, tiny)
    with browser(server.url) as b:
        b.sign_in(server.admin_token)
        page = b.page
        page.click("table.versions a[href='/v/tone:1']")  # type: ignore[attr-defined]
        page.wait_for_load_state()  # type: ignore[attr-defined]
        assert page.url.endswith("/v/tone:1")  # type: ignore[attr-defined]
        assert "polite support replies" in page.inner_text("#version-description")  # type: ignore[attr-defined]
        assert "q_proj" in page.inner_text("#modules")  # type: ignore[attr-defined]
        assert "exact" in page.inner_text("#compatibility")  # type: ignore[attr-defined]
        b.assert_clean()

        # move tone@production to tone:2 from tone:2's page, and see the move in the alias's history
        b.open("/v/tone:2")
        page.fill("#alias-form input[name=alias]", "production")  # type: ignore[attr-defined]
        page.click("#alias-form button[type=submit]")  # type: ignore[attr-defined]
        page.wait_for_load_state()  # type: ignore[attr-defined]
        assert "done=alias" in page.url  # type: ignore[attr-defined]
        assert "now points at this version" in page.inner_text(".flash")  # type: ignore[attr-defined]
        row = page.inner_text("#aliases tr[data-alias=production]")  # type: ignore[attr-defined]
        assert "(this version)" in row and re.search(r"admin · set: tone:1 → tone:2", row), row
        if shots:
            b.screenshot("version-alias")
        b.assert_clean()

        # the merge form: the method's parameters only (script), a bad parameter shown inline, nothing queued
        page.click("a[href^='/merge?source=']")  # type: ignore[attr-defined]
        page.wait_for_load_state()  # type: ignore[attr-defined]
        page.select_option("select[name=method]", "ties")  # type: ignore[attr-defined]
        assert page.is_visible("[data-param=density]") and not page.is_visible("[data-param=svd_rank]")  # type: ignore[attr-defined]
        page.select_option("select[name=method]", "svd")  # type: ignore[attr-defined]
        assert page.is_visible("[data-param=svd_rank]") and not page.is_visible("[data-param=density]")  # type: ignore[attr-defined]
        page.select_option("select[name=method]", "ties")  # type: ignore[attr-defined]
        page.click("[data-add-source]")  # type: ignore[attr-defined]
        sources = page.locator("input[name=source]")  # type: ignore[attr-defined]
        weights = page.locator("input[name=weight]")  # type: ignore[attr-defined]
        assert sources.first.input_value() == "tone:2" and sources.count() == 4
        weights.nth(0).fill("0.5")
        sources.nth(1).fill("tone:1")
        weights.nth(1).fill("0.5")
        page.fill("input[name=density]", "2")  # type: ignore[attr-defined]
        page.fill("input[name=name]", "tone-ties")  # type: ignore[attr-defined]
        page.click("#merge-form button[type=submit]")  # type: ignore[attr-defined]
        page.wait_for_load_state()  # type: ignore[attr-defined]
        problems = page.inner_text("#merge-problems")  # type: ignore[attr-defined]
        assert "parameter density must be a number in (0, 1]" in problems and "nothing was queued" in problems
        assert page.input_value("input[name=name]") == "tone-ties"  # type: ignore[attr-defined]
        assert page.input_value("select[name=method]") == "ties"  # type: ignore[attr-defined]
        if shots:
            b.screenshot("merge-error")
        b.assert_clean()
        with Registry(server.url, token=server.admin_token) as reg:
            assert reg.jobs() == []

        # a good one: 303 to its job page; the job runs in the server's executor
        page.fill("input[name=density]", "0.5")  # type: ignore[attr-defined]
        with page.expect_navigation():  # type: ignore[attr-defined]
            page.click("#merge-form button[type=submit]")  # type: ignore[attr-defined]
        landed = re.search(r"/jobs/(\d+)$", page.url)  # type: ignore[attr-defined]
        assert landed, page.url  # type: ignore[attr-defined]
        assert "merge" in page.inner_text("h1").lower()  # type: ignore[attr-defined]  # the job page itself
        with Registry(server.url, token=server.admin_token) as reg:
            job = reg.job(int(landed.group(1))).wait(timeout=120)
            made = job.result
            assert made is not None and made.ref == "tone-ties:1" and made.created_by == "admin"
            assert [p.ref for p in made.parents] == ["tone:2", "tone:1"]
            reg.log_metric(made.ref, "eval_loss", 1.92, dataset="held-out")
            reg.set_alias(made.ref, "candidate")
        b.open("/v/tone-ties:1")
        assert f"job {job.id}" in page.inner_text("#made-by")  # type: ignore[attr-defined]
        assert "density" in page.inner_text("#made-by")  # type: ignore[attr-defined]
        assert "tone:2" in page.inner_text("#parents") and "eval_loss" in page.inner_text("#metrics")  # type: ignore[attr-defined]
        if shots:
            b.screenshot("version")
        b.assert_clean()


def test_base_model_pages_in_a_browser(server, tiny) -> None:  # type: ignore[no-untyped-def]
    _register(server.url, server.admin_token, tiny)
    with browser(server.url) as b:
        b.sign_in(server.admin_token, "/bases")
        page = b.page
        assert page.url.endswith("/bases")  # type: ignore[attr-defined]
        page.click("#bases a[href^='/bases/']")  # type: ignore[attr-defined]
        page.wait_for_load_state()  # type: ignore[attr-defined]
        assert "LlamaForCausalLM" in page.inner_text("#base-record")  # type: ignore[attr-defined]
        assert "q_proj" in page.inner_text("#shapes")  # type: ignore[attr-defined]
        compatible = page.inner_text("#compatible")  # type: ignore[attr-defined]
        assert "tone:1" in compatible and "tone:2" in compatible and "exact" in compatible
        b.screenshot("base")
        page.click("#compatible a[href='/v/tone:1']")  # type: ignore[attr-defined]
        page.wait_for_load_state()  # type: ignore[attr-defined]
        assert page.url.endswith("/v/tone:1")  # type: ignore[attr-defined]
        b.assert_clean()
