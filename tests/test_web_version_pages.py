"""The version, base-model and merge pages and their actions, through FastAPI's TestClient (issue 16).

Fields, links, escaping, error pages, permissions (a read-only token sees no form and a forged post is refused),
CSRF and Origin checks, and the actions' effects on the catalog and its audit log. The same pages in a real browser:
tests/test_web_browser_version.py.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from registry import Registry
from registry.api.app import create_app
from registry.merge_rules import METHODS, PARAMS
from registry.web import session as web_session

SITE = "http://testserver"
SCRIPT = "<script>alert(1)</script>"


@dataclass
class Site:
    """A catalog with tone:1 (tone@production), tone:2, legal:1 and blend:1 (a merge of tone:1 and legal:1), users
    alice (admin), bob (write grant on tone*) and reader (a read token), and the app over it."""

    reg: Registry
    app: object
    tokens: dict[str, str]
    blend_job: int

    def client(self, user: str | None) -> TestClient:
        client = TestClient(self.app, base_url=SITE)
        if user is not None:
            client.cookies.set(web_session.COOKIE, self.tokens[user])
        return client

    def post(self, user: str, path: str, data: dict, *, csrf: str | None = "session", origin: str | None = SITE):
        """A form post as ``user``'s browser would send it (its CSRF token, this site's Origin), or forged."""
        headers = {"Origin": origin} if origin else {}
        token = web_session.csrf_token(self.tokens[user]) if csrf == "session" else csrf
        body = {**data, **({web_session.CSRF_FIELD: token} if token is not None else {})}
        return self.client(user).post(path, data=body, headers=headers, follow_redirects=False)


def build_site(reg: Registry, tiny: dict[str, Path]) -> Site:
    reg.register(tiny["tone"], name="tone", base_path=tiny["llama"], description=SCRIPT, tags={"team": "cx"})
    reg.register(tiny["tone2"], name="tone", base_path=tiny["llama"])
    reg.register(tiny["legal"], name="legal", base_path=tiny["llama"])
    reg.set_alias("tone:1", "production")
    reg.log_metric("tone:1", "eval_loss", 1.25, dataset="held-out")
    job = reg.merge(["tone:1", "tone:2"], weights=[0.7, 0.3], method="linear", name="blend")
    assert job.status == "succeeded", job.error
    reg.add_user("alice", admin=True)
    reg.add_user("bob")
    reg.add_grant("bob", "tone*")
    reg.add_user("reader")
    tokens = {"alice": reg.create_token("alice", scope="admin")["token"],
              "bob": reg.create_token("bob", scope="write")["token"],
              "reader": reg.create_token("reader", scope="read")["token"]}
    return Site(reg, create_app(reg.service), tokens, job.id)


@pytest.fixture
def site(registry, tiny) -> Site:  # type: ignore[no-untyped-def]
    """On SQLite and on PostgreSQL."""
    return build_site(registry, tiny)


@pytest.fixture
def lite(tmp_path, tiny):  # type: ignore[no-untyped-def]
    """On SQLite only (checks that do not depend on the database)."""
    with Registry(f"sqlite:///{tmp_path / 'lite.db'}", home=tmp_path / "lite") as reg:
        yield build_site(reg, tiny)


def forms(html: str) -> list[str]:
    """The actions of the page's post forms, sign-out left out."""
    return [a for a in re.findall(r'<form method="post" action="([^"]+)"', html) if a != "/logout"]


def test_the_version_page_shows_what_the_catalog_knows(site: Site) -> None:
    reg, client = site.reg, site.client("alice")
    blend = reg.get("blend:1")
    page = client.get("/v/blend:1")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for text in (blend.weights_sha256, blend.base_model, "CAUSAL_LM", "r=4", "q_proj", "v_proj", "64 → 64",
                 "4 × 64", "64 × 4", "64 → 32", "model.layers.1.self_attn.v_proj", "float32", "exact",
                 "shapes_checked", "merge_rel_error", "method", "linear"):
        assert text in html, text
    with reg.service.engine.connect() as connection:
        config_sha = connection.exec_driver_sql(
            f"select config_sha256 from adapter_versions where id = {blend.id}").scalar()
    assert config_sha in html
    # parents, the job that made it (with its recipe), the lineage page and the downloads
    assert 'href="/v/tone:1"' in html and 'href="/v/tone:2"' in html and "0.7" in html and "0.3" in html
    assert f'href="/jobs/{site.blend_job}"' in html and "submitted by" in html
    assert '"method": "linear"' in unescape(html)
    assert 'href="/lineage/blend:1"' in html
    assert 'href="/v/blend:1/files/adapter_model.safetensors"' in html
    assert 'href="/v/blend:1/files/adapter_config.json"' in html
    # a parent lists its child; tags, aliases with their history, metrics with dataset and source
    tone = client.get("/v/tone@production").text
    assert 'href="/v/blend:1"' in tone and "merge" in tone
    assert "team=cx" in tone and "@production" in tone and "(this version)" in tone
    assert re.search(r"eval_loss</td><td>1\.25</td><td>held-out</td><td>user", tone)
    assert "→ tone:1" in tone  # the alias's recorded move


def test_a_version_file_downloads_through_the_session(lite: Site) -> None:
    client = lite.client("reader")
    version = lite.reg.get("tone:1")
    weights = client.get("/v/tone:1/files/adapter_model.safetensors")
    assert weights.status_code == 200 and hashlib.sha256(weights.content).hexdigest() == version.weights_sha256
    assert 'filename="tone-v1-adapter_model.safetensors"' in weights.headers["content-disposition"]
    config = client.get("/v/tone@production/files/adapter_config.json")
    assert config.status_code == 200 and config.json()["r"] == 4
    refused = client.get("/v/tone:1/files/catalog.db")
    assert refused.status_code == 400 and "is not a stored file" in refused.text and "<!doctype html>" in refused.text
    assert client.get("/v/tone:1/files/..%2F..%2Fcatalog.db").status_code == 404  # no route: the store is never read
    assert lite.client(None).get("/v/tone:1/files/adapter_config.json", follow_redirects=False).status_code == 303


def test_base_pages_list_shapes_and_every_compatible_version(site: Site) -> None:
    client = site.client("reader")
    base = site.reg.base_models()[0]
    listing = client.get("/bases")
    assert listing.status_code == 200 and base.name in listing.text and "LlamaForCausalLM" in listing.text
    link = "/bases/" + quote(base.name, safe="@")
    assert f'href="{link}"' in listing.text
    page = client.get(link)
    assert page.status_code == 200, page.text
    html = page.text
    assert "q_proj" in html and "64 → 64" in html and "embed_tokens" in html
    for ref in ("tone:1", "tone:2", "legal:1", "blend:1"):
        assert f'href="/v/{ref}"' in html
    assert html.count('class="badge level-exact"') >= 4
    # the version page links its base here
    assert f'href="{link}"' in client.get("/v/tone:1").text
    missing = client.get("/bases/no-such-base")
    assert missing.status_code == 404 and "no base model" in missing.text and "<!doctype html>" in missing.text


def test_user_text_is_escaped(lite: Site) -> None:
    lite.reg.describe("tone", SCRIPT)
    lite.reg.tag("tone:1", {"note": SCRIPT})
    html = lite.client("reader").get("/v/tone:1").text
    assert SCRIPT not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html.replace('<script src="/static/app.js" defer></script>', "")


def test_unknown_or_bad_references_are_error_pages(lite: Site) -> None:
    client = lite.client("reader")
    for path, status, text in (("/v/nope:1", 404, "no adapter named"), ("/v/tone:9", 404, "has no version 9"),
                               ("/v/tone@staging", 404, "has no alias"), ("/v/Bad%20Name", 400, "")):
        page = client.get(path)
        assert page.status_code == status, path
        assert page.headers["content-type"].startswith("text/html") and "That did not work" in page.text
        assert text in page.text
    signed_out = lite.client(None).get("/v/tone:1", follow_redirects=False)
    assert signed_out.status_code == 303 and signed_out.headers["location"].startswith("/login?next=")


def test_a_deleted_version_shows_its_tombstone(lite: Site) -> None:
    lite.reg.delete("tone:2", reason="leaked data", force=True)
    page = lite.client("alice").get("/v/tone:2")
    assert page.status_code == 200 and "deleted" in page.text and "leaked data" in page.text
    assert forms(page.text) == [] and "/files/" not in page.text


def test_a_read_only_token_sees_no_form_and_a_forged_post_is_refused(lite: Site) -> None:
    reader = lite.client("reader")
    assert forms(reader.get("/v/tone:1").text) == []
    merge = reader.get("/merge").text
    assert forms(merge) == [] and "scope read" in merge
    jobs_before = len(lite.reg.jobs())
    for path, data in (("/v/tone:1/alias", {"alias": "production"}), ("/v/tone:2/alias", {"alias": "production"}),
                       ("/v/tone:1/tag", {"tag": "x=y"}), ("/v/tone:1/deprecate", {"reason": "no"}),
                       ("/v/tone:1/describe", {"description": "defaced"}),
                       ("/merge", {"source": "tone:1", "weight": "1", "method": "linear", "name": "evil"})):
        refused = lite.post("reader", path, data)
        assert refused.status_code == 403, path
        assert "text/html" in refused.headers["content-type"] and "scope read" in refused.text
    assert lite.reg.get("tone@production").ref == "tone:1"
    assert lite.reg.get("tone:1").tags == {"team": "cx"} and lite.reg.get("tone:1").status == "ready"
    assert len(lite.reg.jobs()) == jobs_before


def test_a_write_token_sees_forms_only_where_its_grants_allow(lite: Site) -> None:
    bob = lite.client("bob")
    assert "/v/tone:1/alias" in forms(bob.get("/v/tone:1").text)
    assert "protection" not in bob.get("/v/tone:1").text  # protecting an alias is an admin's act
    assert forms(bob.get("/v/legal:1").text) == []
    refused = lite.post("bob", "/v/legal:1/tag", {"tag": "x=y"})
    assert refused.status_code == 403 and "holds no write or manage grant" in refused.text
    assert lite.reg.get("legal:1").tags == {}


@pytest.mark.parametrize("forgery", ["no token", "wrong token", "foreign origin", "no origin"])
def test_a_post_without_the_csrf_token_or_from_another_origin_is_refused(lite: Site, forgery: str) -> None:
    kwargs = {"no token": {"csrf": None}, "wrong token": {"csrf": "0" * 64},
              "foreign origin": {"origin": "http://evil.example"}, "no origin": {"origin": None}}[forgery]
    for path, data in (("/v/tone:2/alias", {"alias": "production"}), ("/v/tone:1/tag", {"tag": "x=y"}),
                       ("/merge", {"source": "tone:1", "weight": "1", "method": "linear", "name": "forged"})):
        refused = lite.post("alice", path, data, **kwargs)
        assert refused.status_code == 403 and "CSRF" in refused.text, (forgery, path)
    assert lite.reg.get("tone@production").ref == "tone:1" and "x" not in lite.reg.get("tone:1").tags
    assert not any(j.spec.get("name") == "forged" for j in lite.reg.jobs())


def test_a_post_without_a_session_goes_to_the_sign_in_page(lite: Site) -> None:
    anonymous = lite.client(None)
    answer = anonymous.post("/v/tone:2/alias", data={"alias": "production"}, headers={"Origin": SITE},
                            follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/login?next=%2Fv%2Ftone%3A2"
    answer = anonymous.post("/merge", data={"name": "x"}, headers={"Origin": SITE}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/login?next=%2Fmerge"
    assert lite.reg.get("tone@production").ref == "tone:1"


def _after(response, ref: str, done: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 303, response.text
    assert response.headers["location"] == f"/v/{ref}?done={done}"


def test_actions_change_the_catalog_and_are_audited_with_the_users_name(site: Site) -> None:
    reg, bob = site.reg, site.client("bob")
    _after(site.post("bob", "/v/tone:2/alias", {"alias": "production"}), "tone:2", "alias")
    assert reg.get("tone@production").ref == "tone:2"
    page = bob.get("/v/tone:2?done=alias").text
    assert "The alias now points at this version." in page
    assert re.search(r"bob · set: tone:1 → tone:2", page) and "(this version)" in page

    _after(site.post("bob", "/v/tone:2/tag", {"tag": "stage = canary"}), "tone:2", "tag")
    assert reg.get("tone:2").tags == {"stage": "canary"}
    _after(site.post("bob", "/v/tone:2/untag", {"key": "stage"}), "tone:2", "untag")
    assert reg.get("tone:2").tags == {}
    _after(site.post("bob", "/v/tone:1/deprecate", {"reason": "superseded by tone:2"}), "tone:1", "deprecate")
    assert reg.get("tone:1").status == "deprecated" and reg.get("tone:1").status_reason == "superseded by tone:2"
    assert "superseded by tone:2" in bob.get("/v/tone:1").text
    _after(site.post("bob", "/v/tone:1/undeprecate", {}), "tone:1", "undeprecate")
    assert reg.get("tone:1").status == "ready"
    _after(site.post("bob", "/v/tone:2/describe", {"description": "the calmer one"}), "tone:2", "describe")
    _after(site.post("bob", "/v/tone:2/describe", {"description": "support tone", "target": "adapter"}),
           "tone:2", "describe")
    assert reg.get("tone:2").description == "the calmer one" and reg.get("tone:2").adapter_description == "support tone"
    _after(site.post("alice", "/v/tone:2/alias", {"alias": "staging"}), "tone:2", "alias")
    _after(site.post("bob", "/v/tone:2/alias-remove", {"alias": "staging"}), "tone:2", "alias-remove")
    assert [a.alias for a in reg.aliases("tone")] == ["production"]

    by_bob = {e["action"] for e in reg.audit_events(name="tone") if e["actor"] == "bob"}
    assert by_bob >= {"alias.set", "alias.remove", "tag.set", "tag.remove", "version.deprecate",
                      "version.undeprecate", "version.describe", "adapter.describe"}


def test_a_mistake_in_an_action_form_is_shown_by_the_form(lite: Site) -> None:
    reg = lite.reg
    for path, data, message in (
        ("/v/tone:2/tag", {"tag": "no-equals-sign"}, "must be written key=value"),
        ("/v/tone:2/alias", {"alias": "Not An Alias"}, "is not allowed"),
        ("/v/tone:2/deprecate", {"reason": "  "}, "a reason is required"),
        ("/v/tone:2/undeprecate", {}, "is not deprecated"),
    ):
        page = lite.post("bob", path, data)
        assert page.status_code == 200, (path, page.text)
        assert message in unescape(page.text) and 'role="alert"' in page.text, path
    kept = lite.post("bob", "/v/tone:2/alias", {"alias": "Not An Alias"}).text
    assert 'value="Not An Alias"' in kept  # the form keeps what the user typed
    # a protected alias moves only for an admin: bob is told so by the form
    reg.set_alias("tone:1", "production", protect=True)
    page = lite.post("bob", "/v/tone:2/alias", {"alias": "production"})
    assert page.status_code == 200 and "protected" in page.text
    assert reg.get("tone@production").ref == "tone:1" and reg.get("tone:2").tags == {}
    _after(lite.post("alice", "/v/tone:2/alias", {"alias": "production", "protect": "0"}), "tone:2", "alias")
    assert not next(a for a in reg.aliases("tone") if a.alias == "production").protected


def test_the_merge_form_comes_from_the_method_table(lite: Site) -> None:
    html = lite.client("bob").get("/merge?source=tone:1&source=tone:2").text
    assert forms(html) == ["/merge"]
    for method in METHODS:
        assert f'<option value="{method}"' in html
    for name in PARAMS:
        assert f'data-param="{name}"' in html and f'name="{name}"' in html
    density = re.search(r'data-param="density" data-methods="([^"]+)"', html)
    assert density and set(density.group(1).split()) == {n for n, m in METHODS.items() if "density" in m.accepts}
    assert 'value="tone:1"' in html and 'value="tone:2"' in html
    assert '<script src="/static/merge_form.js" defer></script>' in html


def test_a_bad_merge_shows_every_problem_inline_and_queues_nothing(site: Site) -> None:
    reg = site.reg
    before = len(reg.jobs())
    form = {"source": ["tone:1", "tone:2"], "weight": ["0.5", "0.5"], "method": "ties", "density": "2",
            "name": "tone-ties", "tags": "team=cx"}
    page = site.post("bob", "/merge", form)
    assert page.status_code == 200
    assert "parameter density must be a number in (0, 1] (got 2.0)" in page.text
    assert 'value="tone-ties"' in page.text and 'value="tone:2"' in page.text and 'value="team=cx"' in page.text
    assert '<option value="ties" selected>' in page.text
    page = site.post("bob", "/merge", {**form, "density": "", "weight": ["0.5", "heavy"], "name": "Bad Name"})
    assert "the weight of tone:2 must be a finite number" in page.text and "output name" in page.text
    page = site.post("bob", "/merge", {**form, "density": "0.5", "source": ["tone:1", "legal:1"]})
    assert "needs equal ranks" in page.text  # the static check's own problem, before any job
    page = site.post("bob", "/merge", {**form, "density": "0.5", "name": "legal-blend"})
    assert "holds no write or manage grant matching 'legal-blend'" in unescape(page.text)
    assert len(reg.jobs()) == before


def test_a_good_merge_redirects_to_its_job(site: Site) -> None:
    reg = site.reg
    answer = site.post("bob", "/merge", {"source": ["tone:1", "tone:2", ""], "weight": ["0.5", "0.5", ""],
                                         "method": "ties", "density": "0.5", "majority_sign_method": "total",
                                         "name": "tone-ties", "validate": ""})
    assert answer.status_code == 303, answer.text
    job_id = int(re.fullmatch(r"/jobs/(\d+)", answer.headers["location"]).group(1))
    job = reg.job(job_id).wait(timeout=60)
    assert job.spec["method"] == "ties" and job.spec["params"]["density"] == 0.5 and job.spec["submitted_by"] == "bob"
    made = reg.get(job.result_ref)
    assert made.name == "tone-ties" and made.created_by == "bob"
    page = site.client("bob").get(f"/v/{made.ref}").text
    assert f'href="/jobs/{job_id}"' in page and "params.density" in page
