"""The lineage, jobs and runs pages through FastAPI's TestClient (issue 16): what they show, who may cancel, the
CSRF and Origin checks, the polled state route's authentication, escaping, error pages. One catalog (SQLite) is
built once for the module: two adapters, a merge, a short training, a recipe run (merge + validate + promote) and a
schedule; the lineage page is also checked on PostgreSQL."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from registry import jobs as job_specs
from registry.runs import RunInfo
from registry.web import session as web_session

SCRIPT = "<script>alert(1)</script>"
ORIGIN = {"origin": "http://testserver"}


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny, one_torch_thread):  # type: ignore[no-untyped-def]
    """A catalog with versions, jobs of every kind the pages draw, a run and a schedule; tokens of three users."""
    from registry import Registry

    root = tmp_path_factory.mktemp("web-jobs")
    with pytest.MonkeyPatch.context() as mp:
        for key in ("ADREG_DATABASE_URL", "ADREG_BROKER_URL", "ADREG_URL", "ADREG_TOKEN", "ADREG_ARTIFACT_DIR"):
            mp.delenv(key, raising=False)
        mp.setenv("ADREG_HOME", str(root / "home"))
        mp.setenv("ADREG_CONFIG_DIR", str(root / "config"))
        reg = Registry(f"sqlite:///{root / 'catalog.db'}", home=root / "home")
        reg.register(tiny["tone"], name="tone", base_path=tiny["llama"])
        reg.register(tiny["tone2"], name="legal")
        reg.set_alias("tone:1", "production")
        reg.set_alias("legal:1", "production")
        merge = reg.merge(["tone:1", "legal:1"], weights=[0.7, 0.3], method="cat", name="tone-legal",
                          description=SCRIPT)
        corpus = root / "corpus.jsonl"
        corpus.write_text("".join(json.dumps({"text": "the cat sat on the mat."}) + "\n" for _ in range(16)))
        train = reg.train("tone:1", data=corpus, steps=4, lr=1e-2, seed=0)
        run = reg.run_recipe({"name": "nightly", "steps": [
            {"name": "merged", "merge": {"sources": ["tone@production", "legal@production"], "weights": [0.5, 0.5],
                                        "method": "cat", "name": "blend"}},
            {"name": "check", "validate": {"target": "@merged", "gates": {}}},
            {"name": "stage", "promote": {"target": "@merged", "alias": "staging"}},
        ]})
        schedule = reg.add_schedule({"name": "weekly", "steps": [
            {"name": "pin", "promote": {"target": "tone@production", "alias": "pinned"}}]},
            name="weekly-pin", cron="0 3 * * 1", tz="Europe/Paris")
        reg.add_user("root", admin=True)
        reg.add_user("bob")
        reg.add_grant("bob", "other-*", "write")
        tokens = {"admin": reg.create_token("root", scope="admin")["token"],
                  "reader": reg.create_token("root", scope="read")["token"],
                  "bob": reg.create_token("bob", scope="write")["token"]}
        yield {"reg": reg, "merge": merge, "train": train, "run": run, "schedule": schedule, "tokens": tokens}
        reg.close()


def client_for(reg, token: str | None) -> TestClient:  # type: ignore[no-untyped-def]
    from registry.api.app import create_app

    client = TestClient(create_app(reg.service), follow_redirects=False)
    if token:
        client.cookies.set(web_session.COOKIE, token)
    return client


@pytest.fixture(scope="module")
def admin(world) -> TestClient:  # type: ignore[no-untyped-def]
    return client_for(world["reg"], world["tokens"]["admin"])


def queued_job(reg, like: job_specs.Job) -> int:  # type: ignore[no-untyped-def]
    """A queued job row that nothing runs (the spec of ``like``, never dispatched): something to cancel."""
    with reg.service.transaction() as session:
        row, _ = job_specs.insert_job(session, job_specs.parse_spec(like.spec), queue="cpu")
        return row.id


def texts(html: str, css_class: str) -> list[str]:
    return re.findall(rf'class="[^"]*\b{css_class}\b[^"]*"[^>]*>([^<]*)<', html)


# -- jobs --------------------------------------------------------------------------------------------------------

def test_jobs_list_shows_every_kind_and_filters(world, admin) -> None:  # type: ignore[no-untyped-def]
    page = admin.get("/jobs")
    assert page.status_code == 200
    ids = [int(i) for i in re.findall(r'<a href="/jobs/(\d+)">', page.text)]
    reg = world["reg"]
    assert sorted(ids, reverse=True) == ids and set(ids) == {j.id for j in reg.jobs()}
    assert "tone:1, legal:1 → tone-legal (cat)" in page.text and 'href="/v/tone-legal:1"' in page.text
    trained = admin.get("/jobs?kind=train")
    assert re.findall(r'<a href="/jobs/(\d+)">', trained.text) == [str(world["train"].id)]
    none = admin.get("/jobs?status=failed")
    assert "No job matches" in none.text
    for bad in ("/jobs?status=sleeping", "/jobs?kind=bake"):
        refused = admin.get(bad)
        assert refused.status_code == 400 and 'class="error"' in refused.text and "must be one of" in refused.text


def test_merge_job_page_shows_spec_report_and_result(world, admin) -> None:  # type: ignore[no-untyped-def]
    job = world["merge"]
    page = admin.get(f"/jobs/{job.id}")
    assert page.status_code == 200
    html = page.text
    assert texts(html, "job-status")[0] == "succeeded"
    assert 'href="/v/tone:1">tone:1</a> × 0.7' in html and 'href="/v/legal:1">legal:1</a> × 0.3' in html
    assert "relative error (all modules)" in html and "output rank" in html
    assert 'class="result" href="/v/tone-legal:1"' in html and 'href="/lineage/tone-legal:1"' in html
    assert 'action="/jobs/' not in html  # a finished job has no cancel button
    # the description is shown as text, never as markup
    assert SCRIPT not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert page.headers["content-security-policy"].startswith("default-src 'self'")


def test_training_job_page_draws_the_loss_curve(world, admin) -> None:  # type: ignore[no-untyped-def]
    job = world["train"]
    curve = job.report["loss_curve"]
    html = admin.get(f"/jobs/{job.id}").text
    chart = re.search(r'<svg class="loss-chart".*?</svg>', html, re.S)
    assert chart is not None
    points = re.search(r'<polyline class="curve" points="([^"]+)"', chart.group(0)).group(1).split()
    assert len(points) == len(curve) == 4
    losses = [loss for _, loss in curve]
    svg = chart.group(0)
    assert texts(svg, "y-max") == [f"{max(losses):.4g}"] and texts(svg, "y-min") == [f"{min(losses):.4g}"]
    assert texts(svg, "x-min") == ["step 1"] and texts(svg, "x-max") == ["step 4"]
    assert "eval loss before → after" in html and f"{job.report['eval_loss_after']:.4g}" in html
    # the highest loss is drawn highest (smallest y)
    ys = [float(p.split(",")[1]) for p in points]
    assert ys[losses.index(max(losses))] == min(ys)


def test_validation_job_page_shows_the_checks_table(world, admin) -> None:  # type: ignore[no-untyped-def]
    validate = next(j for j in world["run"].jobs if j["kind"] == "validate")
    html = admin.get(f"/jobs/{validate['id']}").text
    table = re.search(r'<table class="validation">.*?</table>', html, re.S).group(0)
    assert "adapter layers" in table and "changes the base" in table and '<td class="ok">ok</td>' in table


def test_job_page_shows_the_submission_warnings(world, admin) -> None:  # type: ignore[no-untyped-def]
    reg = world["reg"]
    reg.deprecate("legal:1", "use legal:2 <b>soon</b>")
    try:
        job = reg.merge(["tone:1", "legal:1"], weights=[0.5, 0.5], method="cat", name="warned")
    finally:
        reg.undeprecate("legal:1")
    assert job.warnings
    html = admin.get(f"/jobs/{job.id}").text
    shown = re.search(r'<ul class="warnings">(.*?)</ul>', html, re.S).group(1)
    assert "legal:1" in shown and "&lt;b&gt;soon&lt;/b&gt;" in shown and "<b>" not in shown


def test_a_missing_job_is_a_404_page(admin) -> None:  # type: ignore[no-untyped-def]
    for path in ("/jobs/999999", "/jobs/abc", "/jobs/99999999999999999999"):
        page = admin.get(path)
        assert page.status_code == 404 and "text/html" in page.headers["content-type"], path
        assert "no job" in page.text


def test_state_route_needs_the_session_cookie(world) -> None:  # type: ignore[no-untyped-def]
    reg, job = world["reg"], world["merge"]
    anonymous = client_for(reg, None).get(f"/jobs/{job.id}/state")
    assert anonymous.status_code == 401 and anonymous.headers["content-type"] == "application/json"
    assert "sign in" in anonymous.json()["error"]
    forged = client_for(reg, "adreg_1_notatoken").get(f"/jobs/{job.id}/state")
    assert forged.status_code == 401
    bearer = client_for(reg, None).get(f"/jobs/{job.id}/state",
                                       headers={"authorization": f"Bearer {world['tokens']['admin']}"})
    assert bearer.status_code == 401  # the page's route reads the cookie only (the API has /v1/jobs/{id})
    state = client_for(reg, world["tokens"]["reader"]).get(f"/jobs/{job.id}/state")  # read scope is enough
    assert state.status_code == 200 and state.headers["cache-control"] == "no-store"
    assert state.json() == {"id": job.id, "status": "succeeded", "done": True, "progress": 1.0, "percent": 100,
                            "message": job.message, "result_ref": "tone-legal:1"}
    assert client_for(reg, world["tokens"]["reader"]).get("/jobs/424242/state").status_code == 404


def test_state_follows_a_queued_job(world, admin) -> None:  # type: ignore[no-untyped-def]
    reg = world["reg"]
    job_id = queued_job(reg, world["merge"])
    try:
        page = admin.get(f"/jobs/{job_id}")
        assert f'data-job-state="/jobs/{job_id}/state" data-status="queued"' in page.text
        assert '<script src="/static/jobs.js" defer></script>' in page.text
        assert "The report shows here when the job ends." in page.text
        assert admin.get(f"/jobs/{job_id}/state").json()["status"] == "queued"
    finally:
        reg.cancel(job_id)


def test_cancel_needs_write_on_the_job_and_a_csrf_token(world) -> None:  # type: ignore[no-untyped-def]
    reg, tokens = world["reg"], world["tokens"]
    job_id = queued_job(reg, world["merge"])
    form = f'action="/jobs/{job_id}/cancel"'
    reader, bob, admin = (client_for(reg, tokens[k]) for k in ("reader", "bob", "admin"))
    # no form for a read-only token or for a user without write on tone-legal; a forged post is refused
    for who, client in (("reader", reader), ("bob", bob)):
        assert form not in client.get(f"/jobs/{job_id}").text
        csrf = web_session.csrf_token(tokens[who])
        refused = client.post(f"/jobs/{job_id}/cancel", data={"csrf": csrf}, headers=ORIGIN)
        assert refused.status_code == 403 and "may not write on tone-legal" in refused.text, who
    page = admin.get(f"/jobs/{job_id}").text
    assert form in page
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
    # the admin's post without the token, with another session's token, or from another origin: refused
    for data, headers in (({}, ORIGIN), ({"csrf": web_session.csrf_token(tokens["bob"])}, ORIGIN),
                          ({"csrf": csrf}, {"origin": "http://evil.example"}), ({"csrf": csrf}, {})):
        refused = admin.post(f"/jobs/{job_id}/cancel", data=data, headers=headers)
        assert refused.status_code == 403 and "CSRF" in refused.text
    assert reg.job(job_id).status == "queued"
    done = admin.post(f"/jobs/{job_id}/cancel", data={"csrf": csrf}, headers=ORIGIN)
    assert done.status_code == 303 and done.headers["location"] == f"/jobs/{job_id}"
    assert reg.job(job_id).status == "cancelled"
    after = admin.get(f"/jobs/{job_id}").text
    assert texts(after, "job-status")[0] == "cancelled" and form not in after
    again = admin.post(f"/jobs/{job_id}/cancel", data={"csrf": csrf}, headers=ORIGIN)
    assert again.status_code == 400 and "already cancelled" in again.text
    events = [e for e in reg.audit_events() if e["action"] == "job.cancel"]
    assert any(e["actor"] == "root" and e["after"]["job"] == job_id for e in events)


def test_pages_send_a_visitor_without_a_session_to_sign_in(world) -> None:  # type: ignore[no-untyped-def]
    anonymous = client_for(world["reg"], None)
    for path in ("/jobs", f"/jobs/{world['merge'].id}", "/runs", f"/runs/{world['run'].id}", "/lineage/tone:1"):
        answer = anonymous.get(path)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login?next="), path
    assert anonymous.post(f"/jobs/{world['merge'].id}/cancel", data={}).status_code == 303


# -- runs and schedules ------------------------------------------------------------------------------------------

def test_runs_page_lists_runs_and_schedules_with_next_fire(world, admin) -> None:  # type: ignore[no-untyped-def]
    run, schedule = world["run"], world["schedule"]
    html = admin.get("/runs").text
    row = re.search(rf'<a href="/runs/{run.id}">.*?</tr>', html, re.S).group(0)
    assert "nightly" in row and "manual" in row and run.status in row and (run.message or "") in row
    sched = re.search(r'<table class="schedules">.*?</table>', html, re.S).group(0)
    assert "weekly-pin" in sched and "0 3 * * 1" in sched and "Europe/Paris" in sched
    fire = datetime.fromisoformat(schedule["next_fire_at"])
    assert f'<time datetime="{fire.isoformat()}">{fire.strftime("%Y-%m-%d %H:%M UTC")}</time>' in sched
    assert "03:00 CE" in sched  # 03:00 in Paris (CET or CEST), as the schedule's own clock says


def test_run_page_is_a_tree_of_steps_and_jobs(world, admin) -> None:  # type: ignore[no-untyped-def]
    run = world["run"]
    assert run.status == "succeeded", run.message
    html = admin.get(f"/runs/{run.id}").text
    tree = re.search(r'<ul class="job-tree">.*</ul>', html, re.S).group(0)
    steps = re.findall(r"<strong>(\d+)\. (\w+)</strong>", tree)
    assert steps == [("1", "merged"), ("2", "check"), ("3", "stage")]
    assert [int(i) for i in re.findall(r'<a href="/jobs/(\d+)">', tree)] == [j["id"] for j in run.jobs]
    assert tree.count('href="/v/blend:1"') == 3  # every step's output
    assert admin.get("/runs/4242").status_code == 404 and admin.get("/runs/x").status_code == 404


def test_run_tree_nests_follow_ups_under_their_job() -> None:
    now = datetime(2026, 1, 1)
    run = RunInfo(id=1, recipe_name="r", status="running", trigger="manual", message=None, current_step=1,
                  steps=["a", "b", "c"], outputs={"a": "x:1"}, inputs={}, step_jobs={"a": 10, "b": 12},
                  created_at=now, finished_at=None,
                  jobs=[{"id": 10, "kind": "merge", "status": "succeeded", "parent_job_id": None, "error": None},
                        {"id": 11, "kind": "validate", "status": "succeeded", "parent_job_id": 10, "error": None},
                        {"id": 12, "kind": "train", "status": "running", "parent_job_id": None, "error": None},
                        {"id": 13, "kind": "publish", "status": "queued", "parent_job_id": 11, "error": None},
                        {"id": 14, "kind": "merge", "status": "failed", "parent_job_id": None, "error": "x"}])
    from registry.web.run_pages import run_tree

    tree = run_tree(run)
    assert [(s["name"], s["state"], s["job"]["id"] if s["job"] else None) for s in tree] == [
        ("a", "done", 10), ("b", "running", 12), ("c", "waiting", None), (None, "", 14)]
    follow = tree[0]["job"]["children"]
    assert [j["id"] for j in follow] == [11] and [j["id"] for j in follow[0]["children"]] == [13]


# -- lineage -----------------------------------------------------------------------------------------------------

def svg_of(html: str) -> str:
    return re.search(r'<svg class="lineage".*?</svg>', html, re.S).group(0)


def test_lineage_page_draws_one_node_per_version_and_one_edge_per_edge(world, admin) -> None:  # type: ignore[no-untyped-def]
    graph = world["reg"].lineage("tone-legal:1")
    html = admin.get("/lineage/tone-legal:1").text
    svg = svg_of(html)
    nodes = re.findall(r'<a href="/v/([^"]+)" class="([^"]+)" data-ref="\1">', svg)
    assert sorted(ref for ref, _ in nodes) == sorted(n.ref for n in graph.nodes)
    assert dict(nodes)["tone-legal:1"] == "node status-ready root"
    edges = re.findall(r'<g class="edge relation-(\w+)" data-parent="([^"]+)" data-child="([^"]+)" '
                       r'data-weight="([^"]+)">\s*<path d="[^"]+" marker-end="url\(#lineage-arrow\)"></path>\s*'
                       r'<text [^>]*>([^<]*)</text>', svg)
    assert sorted(edges) == sorted((e.relation, e.parent, e.child, f"{e.weight}", f"merge · cat · {e.weight:g}")
                                   for e in graph.edges)
    assert len(edges) == 2 and {e[4] for e in edges} == {"merge · cat · 0.7", "merge · cat · 0.3"}
    assert '<script src="/static/lineage.js" defer></script>' in html
    # the training job's edge (tone:1 -> tone:2) is in tone:1's lineage, labelled with its relation only
    parent_svg = svg_of(admin.get("/lineage/tone:1").text)
    assert re.search(r'data-parent="tone:1" data-child="tone:2">.*?<text [^>]*>finetune</text>', parent_svg, re.S)


def test_lineage_greys_deprecated_and_shows_a_lone_version(world, admin) -> None:  # type: ignore[no-untyped-def]
    reg = world["reg"]
    reg.deprecate("legal:1", "superseded")
    try:
        svg = svg_of(admin.get("/lineage/tone-legal:1").text)
        assert 'href="/v/legal:1" class="node status-deprecated"' in svg
    finally:
        reg.undeprecate("legal:1")
    lone = reg.register(Path(reg.get("tone:1").path), name="lone")
    html = admin.get(f"/lineage/{lone.ref}").text
    assert len(re.findall(r'class="node ', svg_of(html))) == 1 and "has no parents and no children" in html


def test_lineage_of_an_unknown_version_is_a_404_page(admin) -> None:  # type: ignore[no-untyped-def]
    page = admin.get("/lineage/nope:1")
    assert page.status_code == 404 and 'class="error"' in page.text and "text/html" in page.headers["content-type"]
    bad = admin.get("/lineage/%3Cb%3E")
    assert bad.status_code in (400, 404) and "<b>" not in bad.text


def test_lineage_page_on_postgresql(pg_schema_url, tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from registry import Registry

    Registry.init(pg_schema_url, home=tmp_path / "home")
    with Registry(pg_schema_url, home=tmp_path / "home") as reg:
        reg.register(tiny["tone"], name="tone", base_path=tiny["llama"])
        reg.register(tiny["tone2"], name="legal")
        reg.merge(["tone:1", "legal:1"], weights=[0.6, 0.4], method="linear", name="mix")
        reg.add_user("root", admin=True)
        client = client_for(reg, reg.create_token("root", scope="read")["token"])
        svg = svg_of(client.get("/lineage/mix:1").text)
        assert sorted(re.findall(r'data-ref="([^"]+)"', svg)) == ["legal:1", "mix:1", "tone:1"]
        assert sorted(re.findall(r"<text [^>]*>(merge[^<]*)</text>", svg)) == ["merge · linear · 0.4",
                                                                              "merge · linear · 0.6"]
        jobs_page = client.get("/jobs").text
        assert "tone:1, legal:1 → mix (linear)" in jobs_page
        assert client.get("/runs").status_code == 200


def test_a_200_version_lineage_page_renders_fast() -> None:
    """The lineage template with 200 versions (a chain with merges, no database): layout plus rendering."""
    from fastapi.templating import Jinja2Templates

    from registry import types as t
    from registry.web.lineage import graph_view
    from registry.web.pages import HERE

    now = datetime(2026, 1, 1)
    nodes, edges = [], []
    for i in range(200):
        nodes.append(t.LineageNode(id=i, ref=f"chain-{i}:1", weights_sha256="0" * 64, created_at=now))
        if i:
            edges.append(t.LineageEdgeInfo(child=f"chain-{i}:1", parent=f"chain-{i - 1}:1", relation="merge",
                                           weight=0.5, position=0, params={"method": "ties"}))
        if i % 7 == 3 and i > 10:
            edges.append(t.LineageEdgeInfo(child=f"chain-{i}:1", parent=f"chain-{i - 9}:1", relation="merge",
                                           weight=0.5, position=1, params={"method": "ties"}))
    graph = t.LineageGraph(root="chain-100:1", nodes=nodes, edges=edges)
    env = Jinja2Templates(directory=str(HERE / "templates")).env
    start = time.perf_counter()
    view = graph_view(graph)
    html = env.get_template("lineage.html").render(graph=graph, view=view, user=None, title="x", csrf="",
                                                   csrf_field="csrf")
    elapsed = time.perf_counter() - start
    assert html.count('class="node ') == 200 and html.count('<g class="edge ') == len(edges)
    assert elapsed < 0.3, f"{elapsed * 1000:.0f} ms"
