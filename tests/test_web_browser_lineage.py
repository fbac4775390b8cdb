"""The lineage and job pages in a real browser (issue 16): the graph renders, zooms and pans, a click on a node opens
that version; a merge job queued before any worker exists finishes on its page without a manual reload
(PostgreSQL + Celery). Screenshots: test-artifacts/lineage.png, test-artifacts/job.png."""

from __future__ import annotations

from web_browser import browser


def view_box(page) -> list[float]:  # type: ignore[no-untyped-def]
    return [float(v) for v in page.get_attribute("svg.lineage", "viewBox").split()]


def test_lineage_graph_zooms_pans_and_opens_a_parent(server, tiny) -> None:  # type: ignore[no-untyped-def]
    from registry import Registry

    with Registry(server.url, token=server.admin_token) as reg:
        reg.register(tiny["tone"], name="tone", base_path=tiny["llama"])
        reg.register(tiny["tone2"], name="legal")
        job = reg.merge(["tone:1", "legal:1"], weights=[0.7, 0.3], method="ties", density=0.5, name="tone-legal")
        assert job.status == "succeeded", job.error
        reg.deprecate("legal:1", "superseded by tone-legal")
    with browser(server.url) as b:
        b.sign_in(server.admin_token, "/lineage/tone-legal:1")
        page = b.page
        assert page.url == f"{server.url}/lineage/tone-legal:1"  # type: ignore[attr-defined]
        nodes = page.locator("svg.lineage a.node")  # type: ignore[attr-defined]
        assert sorted(nodes.evaluate_all("els => els.map(e => e.dataset.ref)")) == ["legal:1", "tone-legal:1", "tone:1"]
        assert page.locator("svg.lineage a.node.root").get_attribute("data-ref") == "tone-legal:1"  # type: ignore[attr-defined]
        assert page.locator("svg.lineage a.node.status-deprecated").get_attribute("data-ref") == "legal:1"  # type: ignore[attr-defined]
        labels = page.locator("svg.lineage g.edge text").evaluate_all("els => els.map(e => e.textContent)")  # type: ignore[attr-defined]
        assert sorted(labels) == ["merge · ties · 0.3", "merge · ties · 0.7"]
        box = page.locator("svg.lineage").bounding_box()  # type: ignore[attr-defined]
        assert box["width"] > 600 and box["height"] > 300  # the pannable frame, not the graph's own small size
        assert page.locator("[data-lineage-tools]").is_visible()  # type: ignore[attr-defined]

        start = view_box(page)
        page.click("[data-zoom=in]")  # type: ignore[attr-defined]
        zoomed_in = view_box(page)
        assert zoomed_in[2] < start[2] and zoomed_in[3] < start[3]
        page.click("[data-zoom=out]")  # type: ignore[attr-defined]
        page.click("[data-zoom=out]")  # type: ignore[attr-defined]
        assert view_box(page)[2] > start[2]
        page.click("[data-zoom=fit]")  # type: ignore[attr-defined]
        assert view_box(page) == start  # a small graph fits at full size, centred
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)  # type: ignore[attr-defined]
        page.mouse.wheel(0, -400)  # type: ignore[attr-defined]
        page.wait_for_function("w => Number(document.querySelector('svg.lineage').getAttribute('viewBox')"  # type: ignore[attr-defined]
                               ".split(' ')[2]) < w", arg=start[2])
        # a drag that starts on a node pans the graph and does not open the node
        page.click("[data-zoom=fit]")  # type: ignore[attr-defined]
        node = page.locator('svg.lineage a.node[data-ref="tone-legal:1"]').bounding_box()  # type: ignore[attr-defined]
        x, y = node["x"] + node["width"] / 2, node["y"] + node["height"] / 2
        page.mouse.move(x, y)  # type: ignore[attr-defined]
        page.mouse.down()  # type: ignore[attr-defined]
        page.mouse.move(x - 150, y + 60, steps=6)  # type: ignore[attr-defined]
        page.mouse.up()  # type: ignore[attr-defined]
        panned = view_box(page)
        assert abs(panned[0] - (start[0] + 150)) < 1 and abs(panned[1] - (start[1] - 60)) < 1
        assert panned[2:] == start[2:]
        assert page.url == f"{server.url}/lineage/tone-legal:1"  # type: ignore[attr-defined]
        page.click("[data-zoom=fit]")  # type: ignore[attr-defined]
        b.screenshot("lineage")
        # Click a parent: its version page opens.
        page.click('svg.lineage a.node[data-ref="tone:1"]')  # type: ignore[attr-defined]
        page.wait_for_url(f"{server.url}/v/tone:1")  # type: ignore[attr-defined]
        assert "tone:1" in page.inner_text("h1")  # type: ignore[attr-defined]
        b.assert_clean()


def test_watch_a_merge_finish_on_its_page_postgresql(job_env, start_server, start_worker, tiny) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL catalog, Celery broker: the job is queued before any worker runs, its page is opened, then a worker
    starts; the page follows the job by polling and reloads itself once it has succeeded."""
    from playwright.sync_api import expect

    from registry import Registry

    server = start_server(job_env)
    with Registry(server.url, token=server.admin_token) as reg:
        reg.register(tiny["tone"], name="tone", base_path=tiny["llama"])
        reg.register(tiny["tone2"], name="legal")
        job = reg.merge(["tone:1", "legal:1"], weights=[0.7, 0.3], method="ties", density=0.5, name="tone-legal")
        assert job.status == "queued"
    with browser(server.url) as b:
        page = b.page
        polls: list[str] = []
        page.on("request", lambda r: polls.append(r.url) if r.url.endswith("/state") else None)  # type: ignore[attr-defined]
        loads: list[str] = []
        page.on("load", lambda p: loads.append(p.url))  # type: ignore[attr-defined]
        b.sign_in(server.admin_token, f"/jobs/{job.id}")
        status = page.locator(".job-head [data-job-field=status]")  # type: ignore[attr-defined]
        assert status.inner_text() == "queued"
        assert page.locator(f"form[action='/jobs/{job.id}/cancel'] button").is_visible()  # type: ignore[attr-defined]
        loads_before = len(loads)
        start_worker("cpu")
        expect(status).to_have_text("succeeded", timeout=90_000)  # set by the script, then the page reloads itself
        expect(page.locator("dl.merge-report")).to_be_visible()  # the report, rendered by the server after the reload
        page.wait_for_load_state("load")  # type: ignore[attr-defined]
        assert len(polls) >= 1 and len(loads) == loads_before + 1  # followed by polling, reloaded once by the page
        assert status.inner_text() == "succeeded"
        expect(page.locator("a.result")).to_have_text("tone-legal:1")
        assert page.locator("form[action$='/cancel']").count() == 0  # type: ignore[attr-defined]
        b.screenshot("job")
        page.click("a[href='/lineage/tone-legal:1']")  # type: ignore[attr-defined]
        page.wait_for_url(f"{server.url}/lineage/tone-legal:1")  # type: ignore[attr-defined]
        assert page.locator("svg.lineage a.node").count() == 3  # type: ignore[attr-defined]
        b.open("/jobs")
        assert page.locator("table.jobs tbody tr").count() == 1  # type: ignore[attr-defined]
        b.open("/runs")
        assert "No run yet" in page.inner_text("table.runs")  # type: ignore[attr-defined]
        b.assert_clean()
