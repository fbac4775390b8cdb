"""Security of the web pages as a whole (issue 16), whatever pages there are: the routes are walked, not listed.

Every page route sends a visitor without a session to sign in (303 to /login; what a page's script fetches answers
401 or 403 instead), and every HTML answer carries the
CSP; the session cookie is httpOnly, SameSite=Strict, and Secure behind https; a revoked token neither signs in nor
keeps a session; ``next=`` never leaves the site; a sign-in form posted from another origin is refused; a forged
form post changes nothing; no token reaches the server's log; the quick start of ``adreg serve`` (a sign-in link on
a catalog with no users, on a loopback address only). Fast checks run in-process (TestClient); the log, the quick
start and the walk of GET pages (some may stream) run against real ``adreg serve`` processes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from server_process import free_port
from typer.testing import CliRunner

from registry import Registry
from registry.api.app import create_app
from registry.errors import RegistryError
from registry.web import quickstart
from registry.web.pages import SECURITY_HEADERS

CSP = SECURITY_HEADERS["Content-Security-Policy"]
#: Page routes a visitor without a session may reach (and the static files, mounted apart).
OPEN = {("GET", "/login"), ("POST", "/login"), ("POST", "/logout"), ("GET", "/favicon.ico")}
ORIGIN = "http://testserver"


# ---------------------------------------------------------------- helpers


def page_routes(app: Any) -> list[tuple[str, str]]:
    """(method, path) of every page route: the routes left out of the OpenAPI document, wherever they were added
    (FastAPI 0.16x keeps an included router whole, so its routes are walked too)."""
    found: set[tuple[str, str]] = set()

    def walk(routes: list[Any]) -> None:
        for route in routes:
            inner = getattr(route, "original_router", None)
            if inner is not None:
                walk(inner.routes)
            elif isinstance(route, APIRoute) and not route.include_in_schema:
                found.update((method, route.path) for method in route.methods if method != "HEAD")

    walk(getattr(app, "app", app).router.routes)  # create_app wraps the FastAPI app in RequestLimits
    assert {("GET", "/"), ("GET", "/login"), ("POST", "/login"), ("POST", "/logout")} <= found, found
    return sorted(found)


def concrete(path: str) -> str:
    """A route's path with every parameter filled (``1``: a whole number, a name, a ref)."""
    return re.sub(r"\{\w+(?::\w+)?\}", "1", path)


@pytest.fixture
def web(tmp_path: Path) -> Any:
    """An in-process app over the embedded catalog (this test's ADREG_HOME) with an admin and its token."""
    with Registry() as reg:
        reg.add_user("admin", admin=True)
        made = reg.create_token("admin", scope="admin", label="test")
        app = create_app(reg.service)

        class Web:
            registry = reg
            token = made["token"]
            token_id = made["id"]

            @staticmethod
            def client(base_url: str = ORIGIN) -> TestClient:
                return TestClient(app, base_url=base_url, follow_redirects=False)

        Web.app = app  # type: ignore[attr-defined]
        yield Web


def sign_in(client: TestClient, token: str, origin: str = ORIGIN, target: str = "/") -> httpx.Response:
    return client.post("/login", data={"token": token, "next": target}, headers={"Origin": origin})


def to_login(response: httpx.Response) -> bool:
    return response.status_code == 303 and response.headers["location"].startswith("/login")


# ---------------------------------------------------------------- in-process


def test_every_page_route_but_sign_in_sends_a_visitor_without_a_session_to_sign_in(web) -> None:  # type: ignore[no-untyped-def]
    client = web.client()
    routes = page_routes(web.app)
    for method, path in routes:
        if (method, path) in OPEN:
            continue
        answer = client.request(method, concrete(path), headers={"Origin": ORIGIN})
        what = (method, path, answer.status_code, answer.headers.get("location"))
        if answer.status_code in (401, 403) and not answer.headers.get("content-type", "").startswith("text/html"):
            continue  # what a page's script fetches (a job's state to poll) is refused, not redirected
        if method == "GET":
            assert to_login(answer), what
            assert "next=" in answer.headers["location"]
        else:  # a post: to sign in, or refused (a 4xx: a form posted to no such action may say so first); never done
            assert to_login(answer) or 400 <= answer.status_code < 500, what
    # A stale or forged cookie is no session either.
    client.cookies.set("adreg_session", "adreg_1_forged")
    assert to_login(client.get("/"))
    assert client.get("/static/app.css").status_code == 200  # the static files need no session
    assert client.get("/login").status_code == 200


def test_the_session_cookie_is_httponly_samesite_strict_and_secure_behind_https(web) -> None:  # type: ignore[no-untyped-def]
    answer = sign_in(web.client(), web.token)
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    cookie = answer.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert cookie.startswith("adreg_session=") and {"httponly", "samesite", "path"} <= attributes, cookie
    assert "samesite=strict" in cookie.lower() and "secure" not in attributes, cookie
    secure = sign_in(web.client("https://testserver"), web.token, origin="https://testserver")
    assert secure.status_code == 303 and "secure" in secure.headers["set-cookie"].lower().split("; "), secure.headers


def test_a_revoked_token_neither_signs_in_nor_keeps_its_session(web) -> None:  # type: ignore[no-untyped-def]
    from registry.cli import app as cli

    client = web.client()
    assert sign_in(client, web.token).status_code == 303
    assert client.get("/").status_code == 200
    done = CliRunner().invoke(cli, ["token", "revoke", str(web.token_id)])  # the same catalog (ADREG_HOME)
    assert done.exit_code == 0, done.output
    assert to_login(client.get("/"))  # the session ended on its next request
    again = web.client()
    answer = sign_in(again, web.token)
    assert answer.status_code == 200 and "set-cookie" not in answer.headers
    assert "revoked" in answer.text or "invalid" in answer.text
    assert to_login(again.get("/"))


@pytest.mark.parametrize("target", ["//evil.com", "https://evil.com", "/\\evil.com", "\\\\evil.com", "http:evil.com",
                                    "//evil.com/%2F..", "javascript:alert(1)", ""])
def test_next_never_leaves_the_site(web, target: str) -> None:  # type: ignore[no-untyped-def]
    client = web.client()
    form = client.get("/login", params={"next": target})
    assert form.status_code == 200 and 'name="next" value="/"' in form.text
    answer = sign_in(client, web.token, target=target)
    assert answer.status_code == 303 and answer.headers["location"] == "/"


def test_next_brings_a_visitor_back_to_the_page_asked_for(web) -> None:  # type: ignore[no-untyped-def]
    client = web.client()
    sent = client.get("/", params={"q": "tone", "page": "2"})
    assert to_login(sent)
    target = httpx.URL(sent.headers["location"]).params["next"]
    assert target == "/?q=tone&page=2"
    assert sign_in(client, web.token, target=target).headers["location"] == target


def test_a_sign_in_posted_from_another_origin_is_refused(web) -> None:  # type: ignore[no-untyped-def]
    client = web.client()
    for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"}, {"Referer": "https://evil.example/x"},
                    {"Origin": "http://testserver:8081"}, {}):
        answer = client.post("/login", data={"token": web.token, "next": "/"}, headers=headers)
        assert answer.status_code == 403 and "set-cookie" not in answer.headers, (headers, answer.status_code)
        assert answer.headers["content-security-policy"] == CSP
    ok = client.post("/login", data={"token": web.token, "next": "/"}, headers={"Referer": f"{ORIGIN}/login"})
    assert ok.status_code == 303  # a browser that sends no Origin sends the Referer


def test_a_forged_form_post_changes_nothing(web) -> None:  # type: ignore[no-untyped-def]
    """Every page post (but sign-in), signed in, from this origin without the CSRF token and from another origin with
    it: never a 5xx, never a change (the audit log records every write)."""
    from registry.web import session as web_session

    client = web.client()
    assert sign_in(client, web.token).status_code == 303
    csrf = web_session.csrf_token(web.token)
    before = len(web.registry.audit_events(limit=1000))
    for method, path in page_routes(web.app):
        if method != "POST" or path == "/login":
            continue
        for headers, data in (({"Origin": ORIGIN}, {}), ({"Origin": "https://evil.example"}, {"csrf": csrf})):
            answer = client.post(concrete(path), data=data, headers=headers)
            assert answer.status_code < 500, (path, headers, answer.status_code)
            if path == "/logout":
                assert answer.headers.get("location") == "/", answer.headers  # not signed out by a forged post
    assert len(web.registry.audit_events(limit=1000)) == before
    assert client.get("/").status_code == 200  # still signed in


def test_the_quick_start_link_is_only_for_a_catalog_without_users_on_a_loopback_address(tmp_path) -> None:
    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2", "LOCALHOST"):
        assert quickstart.is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.com", "localhost.evil.com", ""):
        assert not quickstart.is_loopback(host), host
    assert quickstart.base_url("::1", 8080) == "http://[::1]:8080"
    with Registry() as reg:
        with pytest.raises(RegistryError, match="no users yet") as refused:
            quickstart.first_sign_in(reg.service, "0.0.0.0", 8080)
        assert "adreg init --admin NAME" in (refused.value.hint or "")
        assert reg.users() == []
        link = quickstart.first_sign_in(reg.service, "127.0.0.1", 8080)
        assert link is not None and link["url"].startswith("http://127.0.0.1:8080/login#token=adreg_")
        [user] = reg.users()
        assert user["name"] == quickstart.admin_name() and user["is_admin"]
        [token] = reg.tokens()
        assert token["label"] == quickstart.LABEL and token["scope"] == "admin" and token["expires_at"]
        assert quickstart.first_sign_in(reg.service, "127.0.0.1", 8080) is None  # users exist: nothing more
        assert quickstart.first_sign_in(reg.service, "0.0.0.0", 8080) is None
        assert len(reg.tokens()) == 1


def test_browser_tests_fail_instead_of_skipping_under_ci(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import web_browser

    monkeypatch.setattr(web_browser, "chromium_path", lambda: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run the browser tests"), \
            web_browser.browser("http://127.0.0.1:1"):
        pass
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception), web_browser.browser("http://127.0.0.1:1"):
        pass


# ---------------------------------------------------------------- real servers


def test_every_html_answer_carries_the_csp_and_no_token_reaches_the_log(server, tiny) -> None:  # type: ignore[no-untyped-def]
    """Signed in through the form, every GET page (parameters filled with `1`: mostly error pages) answers with the
    CSP and no 5xx; afterwards the server's log (uvicorn's access log at info) holds no token, nor a part of one.
    With users in the catalog, `adreg serve` printed no sign-in link and created no user."""
    with Registry(server.url, token=server.admin_token) as reg:
        reg.register(tiny["tone"], name="tone", base_path=tiny["llama"])
    with Registry(home=Path(server.env["ADREG_HOME"])) as local:
        routes = page_routes(create_app(local.service))
    wrong = "adreg_1_" + "x" * 43
    with httpx.Client(base_url=server.url, follow_redirects=False, timeout=30) as http:
        failed = http.post("/login", data={"token": wrong, "next": "/"}, headers={"Origin": server.url})
        assert failed.status_code == 200 and "invalid" in failed.text
        signed = http.post("/login", data={"token": server.admin_token, "next": "/"}, headers={"Origin": server.url})
        assert signed.status_code == 303
        paths = [concrete(path) for method, path in routes if method == "GET"] + ["/?q=tone", "/v/tone:1"]
        for path in paths:
            with http.stream("GET", path) as answer:  # headers only: a live page may stream
                assert answer.status_code < 500, (path, answer.status_code)
                if answer.headers.get("content-type", "").startswith("text/html"):
                    assert answer.headers.get("content-security-policy") == CSP, path
                    assert answer.headers.get("x-frame-options") == "DENY", path
    log = server.log.read_text()
    assert '"GET /?q=tone HTTP/1.1" 200' in log  # the access log is on
    secret = server.admin_token.rsplit("_", 1)[1]
    for needle in (server.admin_token, secret, secret[:16], wrong):
        assert needle not in log
    assert "login#token=" not in log and "no users yet" not in log
    with Registry(home=Path(server.env["ADREG_HOME"])) as local:
        assert [u["name"] for u in local.users()] == ["admin"]


def _serve(home: Path, host: str, port: int, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADREG_")}
    env.update(ADREG_HOME=str(home), TOKENIZERS_PARALLELISM="false")
    return subprocess.Popen([sys.executable, "-m", "registry.cli", "serve", "--host", host, "--port", str(port),
                             "--log-level", "info"], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def test_adreg_serve_with_no_users_prints_a_sign_in_link_that_works_in_a_browser(tmp_path) -> None:
    from web_browser import browser

    home, log, port = tmp_path / "fresh-home", tmp_path / "serve.log", free_port()
    proc = _serve(home, "127.0.0.1", port, log)
    try:
        deadline = time.monotonic() + 60
        while not re.search(r"login#token=\S+\n", log.read_text()) or not _up(port):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        link = re.search(r"(http://127\.0\.0\.1:\d+/login#token=(adreg_\w+_[\w-]+))", log.read_text())
        assert link, log.read_text()
        url, token = link[1], link[2]
        with browser(f"http://127.0.0.1:{port}") as b:
            page = b.page
            page.goto(url)  # type: ignore[attr-defined]
            page.wait_for_url(f"http://127.0.0.1:{port}/")  # type: ignore[attr-defined]
            assert page.locator("form.who").count() == 1  # type: ignore[attr-defined]
            assert quickstart.admin_name() in page.inner_text("form.who")  # type: ignore[attr-defined]
            page.go_back()  # type: ignore[attr-defined]
            assert "token" not in page.url  # type: ignore[attr-defined]  # the link is not in the tab's history
            b.screenshot("quick-start-signed-in")
            b.assert_clean()
        text = log.read_text()
        assert text.count(token) == 1 and text.count(token.rsplit("_", 1)[1]) == 1  # printed once, never logged
        assert '"POST /login HTTP/1.1" 303' in text
    finally:
        proc.terminate()
        proc.wait(15)
    with Registry(home=home) as reg:
        assert [(u["name"], u["is_admin"]) for u in reg.users()] == [(quickstart.admin_name(), True)]
        [made] = reg.tokens()
        assert made["label"] == quickstart.LABEL and made["scope"] == "admin" and made["last_used_at"]


def _up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_adreg_serve_refuses_every_interface_when_nobody_could_sign_in(tmp_path) -> None:
    home, log = tmp_path / "fresh-home", tmp_path / "serve.log"
    proc = _serve(home, "0.0.0.0", free_port(), log)
    assert proc.wait(60) == 1
    text = log.read_text()
    assert "no users yet" in text and "adreg init --admin NAME" in text and "Traceback" not in text
    assert "Uvicorn running" not in text
    with Registry(home=home) as reg:
        assert reg.users() == []
