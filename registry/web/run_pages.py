"""The runs pages: ``GET /runs`` (recent recipe runs, and the schedules with their next fire times) and
``GET /runs/{id}`` (a run as a tree: its steps, each with its job and that job's follow-ups, linked to /jobs/{id})."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import Request
from fastapi.responses import HTMLResponse, Response

from registry.errors import RegistryError
from registry.operations import automation
from registry.runs import RunInfo
from registry.web.kit import Pages

LIST_LIMIT = 50
MAX_ID = 2**31 - 1  # run ids are INTEGER columns


def add_routes(pages: Pages) -> None:
    router = pages.router

    @router.get("/runs", response_class=HTMLResponse)
    def runs_page(request: Request) -> Response:
        principal = None
        try:
            principal, svc = pages.acting(request)
            runs = automation.runs(svc, limit=LIST_LIMIT)
            schedules = [schedule_view(s) for s in automation.schedules(svc)]
        except RegistryError as exc:
            return pages.error(request, exc, principal)
        return pages.render(request, "runs.html", user=principal, title="Runs", runs=runs, schedules=schedules,
                            limit=LIST_LIMIT)

    @router.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(request: Request, run_id: str) -> Response:
        principal = None
        try:
            principal, svc = pages.acting(request)
            if not run_id.isdigit() or not 1 <= int(run_id) <= MAX_ID:
                raise RegistryError(f"no run {run_id[:40]!r}: a run is named by its number")
            run = automation.run(svc, int(run_id))
        except RegistryError as exc:
            if str(exc).startswith("no run"):
                return pages.render(request, "error.html", status=404, user=principal, message=str(exc),
                                    hint="see the list of runs", title="Error")
            return pages.error(request, exc, principal)
        return pages.render(request, "run.html", user=principal, title=f"Run {run.id}", run=run, tree=run_tree(run))


def run_tree(run: RunInfo) -> list[dict[str, Any]]:
    """The run's steps in order, each with its job (and the jobs that followed it up, nested by parent_job_id);
    jobs of the run that belong to no step come last at the top level."""
    jobs = {j["id"]: {**j, "children": []} for j in run.jobs}
    roots = []
    for job in jobs.values():
        parent = jobs.get(job.get("parent_job_id"))
        (parent["children"] if parent is not None else roots).append(job)
    placed: set[int] = set()
    steps = []
    for index, name in enumerate(run.steps):
        marker = run.step_jobs.get(name)
        job = jobs.get(marker) if isinstance(marker, int) else None
        if job is not None:
            placed.add(job["id"])
        if name in run.outputs:
            state = "done"
        elif index == run.current_step:
            state = run.status  # running, failed, cancelled
        else:
            state = "waiting" if run.status == "running" else "not run"
        steps.append({"name": name, "index": index + 1, "job": job, "output": run.outputs.get(name), "state": state,
                      "pending": marker == "pending"})
    loose = [j for j in roots if j["id"] not in placed]
    return steps + [{"name": None, "index": None, "job": j, "output": None, "state": "", "pending": False}
                    for j in loose]


def schedule_view(schedule: dict[str, Any]) -> dict[str, Any]:
    """A schedule with its next fire time in UTC and in the schedule's own time zone."""
    view = dict(schedule)
    for key in ("next_fire_at", "last_fire_at"):
        view[key.removesuffix("_at")] = _when(schedule.get(key), schedule.get("timezone"))
    return view


def _when(iso: str | None, zone: str | None) -> dict[str, str] | None:
    if not iso:
        return None
    moment = datetime.fromisoformat(iso)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    utc = moment.astimezone(timezone.utc)
    local = None
    if zone and zone != "UTC":
        try:
            local = moment.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M %Z")
        except (KeyError, ValueError):  # a zone this host does not know: UTC only
            local = None
    return {"iso": utc.isoformat(), "utc": utc.strftime("%Y-%m-%d %H:%M UTC"), "local": local or ""}
