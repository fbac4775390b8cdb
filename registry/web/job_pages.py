"""The jobs pages: ``GET /jobs`` (recent jobs, filtered by status and kind), ``GET /jobs/{id}`` (status, progress,
spec, error, report: a merge's errors, a validation's checks, a training's loss curve drawn on the server),
``GET /jobs/{id}/state`` (the JSON that static/jobs.js polls while the job runs, authenticated by the session
cookie) and ``POST /jobs/{id}/cancel`` (the API's cancel rule: write on what the job writes)."""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from registry import auth, endpoints
from registry import jobs as job_specs
from registry.errors import Forbidden, RegistryError, Unauthenticated
from registry.job_reports import validation_rows
from registry.operations import submit
from registry.web.kit import SECURITY_HEADERS, Pages

LIST_LIMIT = 50
KINDS = tuple(job_specs.DEFAULT_QUEUE)  # merge, validate, train, publish
MAX_ID = 2**31 - 1  # job ids are INTEGER columns
MAX_CHART_POINTS = 600
#: spec keys that are bookkeeping, or shown elsewhere on the page
_SPEC_SHOWN_ELSEWHERE = {"kind", "spec_version", "submitted_by", "sources", "weights", "method", "params", "warnings",
                         "name", "names", "ref", "version_id", "new", "data", "tags", "description"}


class NoSuchJob(RegistryError):
    """A job id that names no job (a page answers 404)."""


def add_routes(pages: Pages) -> None:
    router = pages.router

    @router.get("/jobs", response_class=HTMLResponse)
    def jobs_page(request: Request, status: str = "", kind: str = "") -> Response:
        principal = None
        try:
            principal, svc = pages.acting(request)
            if kind and kind not in KINDS:
                raise RegistryError(f"kind must be one of {', '.join(KINDS)}, not {kind[:40]!r}")
            items = submit.list_jobs(svc, status=status or None, kind=kind or None, limit=LIST_LIMIT)
        except RegistryError as exc:
            return pages.error(request, exc, principal)
        return pages.render(request, "jobs.html", user=principal, title="Jobs", rows=[job_row(j) for j in items],
                            form={"status": status, "kind": kind}, statuses=job_specs.STATUSES, kinds=KINDS,
                            limit=LIST_LIMIT)

    @router.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(request: Request, job_id: str) -> Response:
        principal = None
        try:
            principal, svc = pages.acting(request)
            job = _job(svc, job_id)
            follow_ups = submit.list_jobs(svc, parent_job_id=job.id, limit=LIST_LIMIT)
            can_cancel = not job.done and _allowed(principal, job.id, pages)
        except NoSuchJob as exc:
            return pages.render(request, "error.html", status=404, user=principal, message=str(exc),
                                hint="see the list of jobs", title="Error")
        except RegistryError as exc:
            return pages.error(request, exc, principal)
        return pages.render(request, "job.html", user=principal, title=f"Job {job.id}", job=job, row=job_row(job),
                            spec=spec_view(job), report=report_view(job), follow_ups=[job_row(j) for j in follow_ups],
                            can_cancel=can_cancel)

    @router.get("/jobs/{job_id}/state")
    def job_state(request: Request, job_id: str) -> JSONResponse:
        """What the job page polls: 401 without a valid session (a script cannot follow a sign-in redirect)."""
        try:
            _principal, svc = pages.acting(request)
        except RegistryError as exc:  # Unauthenticated, or the token was revoked or has expired
            return _json({"error": str(exc)}, 401 if isinstance(exc, Unauthenticated) else 403)
        try:
            job = _job(svc, job_id)
        except RegistryError as exc:
            return _json({"error": str(exc)}, 404 if isinstance(exc, NoSuchJob) else 400)
        return _json({"id": job.id, "status": job.status, "done": job.done, "progress": job.progress,
                      "percent": round(100 * job.progress), "message": job.message, "result_ref": job.result_ref})

    @router.post("/jobs/{job_id}/cancel")
    async def cancel_job(request: Request, job_id: str) -> Response:
        form = await request.form()
        return await run_in_threadpool(_cancel, pages, request, form, job_id)


def _cancel(pages: Pages, request: Request, form: Any, job_id: str) -> Response:
    principal = None
    try:
        principal, svc = pages.acting(request)
        pages.check_form(request, form)
        number = _number(job_id)
        endpoints.BY_NAME["cancel"].rule(principal, {"job_id": number}, pages.svc)
        submit.cancel(svc, number)
    except RegistryError as exc:
        return pages.error(request, exc, principal)
    return RedirectResponse(f"/jobs/{number}", status_code=303)


def _allowed(principal: auth.Principal, job_id: int, pages: Pages) -> bool:
    """Whether the API would let this principal cancel the job (the same rule: write on what the job writes)."""
    try:
        endpoints.BY_NAME["cancel"].rule(principal, {"job_id": job_id}, pages.svc)
    except Forbidden:
        return False
    return True


def _number(job_id: str) -> int:
    if not job_id.isdigit() or not 1 <= int(job_id) <= MAX_ID:
        raise NoSuchJob(f"no job {job_id[:40]!r}: a job is named by its number")
    return int(job_id)


def _job(svc: Any, job_id: str) -> job_specs.Job:
    number = _number(job_id)
    try:
        return submit.job(svc, number)
    except RegistryError as exc:
        raise NoSuchJob(str(exc), hint=exc.hint) from None


def _json(data: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers=SECURITY_HEADERS)


def job_row(job: job_specs.Job) -> dict[str, Any]:
    """One line of a jobs table: what it is about in a few words."""
    spec = job.spec or {}
    sources = [s.get("ref") for s in spec.get("sources") or [] if isinstance(s, dict)]
    if job.kind == "merge":
        about = f"{', '.join(filter(None, sources))} → {spec.get('name', '?')} ({spec.get('method', '?')})"
    elif job.kind == "train":
        origin = ", ".join(filter(None, sources)) or "a new adapter"
        about = f"{origin} → {', '.join(spec.get('names') or [])} ({spec.get('steps', '?')} steps)"
    else:
        target = spec.get("target") or {}
        about = str(spec.get("ref") or "") + (f" → {target.get('repo_id')}" if isinstance(target, dict)
                                                and target.get("repo_id") else "")
    return {"id": job.id, "kind": job.kind, "status": job.status, "progress": job.progress,
            "percent": round(100 * job.progress), "message": job.message, "created": job.created_at,
            "finished": job.finished_at, "result_ref": job.result_ref, "about": about, "error": job.error,
            "error_type": job.error_type, "done": job.done, "parent": job.parent_job_id}


def spec_view(job: job_specs.Job) -> dict[str, Any]:
    """The spec as people read it: inputs (refs with their weights), method, parameters, output; and all of it as
    JSON."""
    spec = job.spec or {}
    sources = [s for s in spec.get("sources") or [] if isinstance(s, dict)]
    weights = spec.get("weights") or []
    inputs = [{"ref": s.get("ref"), "weight": weights[i] if i < len(weights) else None,
               "sha256": s.get("weights_sha256")} for i, s in enumerate(sources)]
    if not inputs and spec.get("ref"):
        inputs = [{"ref": spec["ref"], "weight": None, "sha256": None}]
    parameters: dict[str, Any] = {}
    if isinstance(spec.get("params"), dict):
        parameters.update({k: v for k, v in spec["params"].items() if v is not None})
    if isinstance(spec.get("new"), dict):
        parameters.update({f"new adapter {k}": v for k, v in spec["new"].items()})
    data = spec.get("data") if isinstance(spec.get("data"), dict) else None
    parameters.update({k: v for k, v in spec.items() if k not in _SPEC_SHOWN_ELSEWHERE and v not in (None, [], {})})
    outputs = spec.get("names") or ([spec["name"]] if spec.get("name") else [])
    return {"inputs": inputs, "method": spec.get("method") or job.kind, "parameters": _flat(parameters),
            "outputs": outputs, "data": data, "tags": spec.get("tags") or {}, "description": spec.get("description"),
            "json": json.dumps(spec, indent=2, sort_keys=True, default=str)}


def _flat(values: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, text) pairs; nested values as compact JSON."""
    out = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "yes" if value else "no"
        elif isinstance(value, dict | list):
            text = json.dumps(value, sort_keys=True, default=str)
        elif isinstance(value, float):
            text = f"{value:g}"
        else:
            text = str(value)
        out.append((str(key), text))
    return out


def report_view(job: job_specs.Job) -> dict[str, Any]:
    """Which report the job has, and what its template shows: ``merge``, ``validation``, ``training``, or
    ``other`` (shown as JSON); ``None`` when there is none yet."""
    report = job.report if isinstance(job.report, dict) else {}
    if not report:
        return {"kind": None}
    view: dict[str, Any] = {"json": json.dumps(report, indent=2, sort_keys=True, default=str)}
    if "loss_curve" in report:
        view.update(kind="training", chart=loss_chart(report.get("loss_curve") or []), facts=_training_facts(report))
    elif "layer_status" in report or "logits" in report:
        view.update(kind="validation", rows=validation_rows(report), facts=_pairs(report, (
            ("ref", "version"), ("device", "device"), ("model_class", "model class"),
            ("loaded_weights_match_stored", "loaded weights match the stored file"))))
    elif "overall" in report and "modules" in report:
        view.update(kind="merge", facts=_merge_facts(report), modules=_merge_modules(report),
                    warnings=[str(w) for w in report.get("warnings") or []])
    else:
        view.update(kind="other")
    if isinstance(report.get("retention"), dict):
        view["retention"] = _retention(report["retention"])
    if isinstance(report.get("learned_weights"), dict):
        view["learned"] = _learned(report["learned_weights"])
    return view


def _learned(learned: dict[str, Any]) -> dict[str, Any]:
    """A merge's learned-weights section: per parent the starting and learned weight and its held-out loss before
    and after; the search's settings; its objective per step as a chart."""
    def at(key: str, i: int) -> str:
        values = learned.get(key)
        return _text(values[i]) if isinstance(values, list) and i < len(values) and values[i] is not None else "-"

    parents = [d.get("ref") if isinstance(d, dict) else None for d in learned.get("data") or []]
    rows = [{"parent": _text(ref), "initial": at("initial", i), "weight": at("weights", i),
             "loss_before": at("losses_initial", i), "loss_after": at("losses_final", i),
             "norm_before": at("normalised_initial", i), "norm_after": at("normalised_final", i)}
            for i, ref in enumerate(parents)]
    facts = [(label, _text(learned[key])) for key, label in (
        ("objective", "objective"), ("tau", "tau (smooth maximum)"),
        ("objective_initial", "objective at the start"), ("objective_final", "objective at the learned weights"),
        ("best_step", "best step"), ("budget", "steps"), ("examples", "examples per parent"), ("l1", "L1 weight"),
        ("lr", "learning rate"), ("seed", "seed"), ("optimizer", "optimizer"), ("device", "device"),
        ("seconds", "seconds")) if learned.get(key) is not None]
    trace = [[t.get("step"), t.get("objective")] for t in learned.get("trace") or [] if isinstance(t, dict)]
    return {"rows": rows, "facts": facts, "chart": loss_chart(trace), "worst": learned.get("objective") == "worst"}


def _retention(measured: dict[str, Any]) -> dict[str, Any]:
    """A retention section (a merge's or its validation's) as table rows, one per parent dataset."""
    rows = []
    for parent in measured.get("parents") or []:
        for data in (parent.get("datasets") or []) if isinstance(parent, dict) else []:
            if isinstance(data, dict):
                rows.append({"parent": _text(parent.get("parent")), "dataset": _text(data.get("dataset")),
                             **{k: _text(data.get(k)) if data.get(k) is not None else "-"
                                for k in ("base_loss", "parent_loss", "merged_loss", "retention")}})
    return {"rows": rows, "mean": _text(measured.get("mean")) if measured.get("mean") is not None else "-",
            "min": _text(measured.get("min")) if measured.get("min") is not None else "-"}


def _pairs(report: dict[str, Any], keys: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    return [(label, _text(report[key])) for key, label in keys if report.get(key) is not None]


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _merge_facts(report: dict[str, Any]) -> list[tuple[str, str]]:
    overall = report.get("overall") or {}
    facts = [("method", _text(report.get("method"))), ("output rank", _text(report.get("out_rank"))),
             ("weights", ", ".join(_text(w) for w in report.get("weights") or [])),
             ("parameters", ", ".join(f"{k}={_text(v)}" for k, v in (report.get("params") or {}).items()
                                      if v is not None) or "-"),
             ("modules", _text(overall.get("modules"))),
             ("relative error (all modules)", _text(overall.get("rel_error"))),
             ("mean / max module error",
              f"{_text(overall.get('mean_rel_error'))} / {_text(overall.get('max_rel_error'))}"),
             ("dtype", _text(report.get("dtype"))), ("seconds", _text(report.get("seconds"))),
             ("peak memory", _size(report.get("peak_rss_bytes"))),
             ("largest module working set", _size(report.get("peak_module_bytes")))]
    for key, label in (("partial_modules", "modules missing from some inputs"),
                       ("saved_modules", "modules_to_save carried")):
        if report.get(key):
            facts.append((label, _text(report[key])))
    if report.get("registered"):
        facts.append(("registered", ", ".join(report["registered"])))
    return facts


def _merge_modules(report: dict[str, Any]) -> list[dict[str, str]]:
    return [{"module": str(m.get("module")), "inputs": _text(m.get("inputs")), "out_rank": _text(m.get("out_rank")),
             "rel_error": "-" if m.get("rel_error") is None else _text(m.get("rel_error"))}
            for m in report.get("modules") or [] if isinstance(m, dict)]


def _training_facts(report: dict[str, Any]) -> list[tuple[str, str]]:
    facts = []
    for metric in ("loss", "accuracy"):
        before, after = report.get(f"eval_{metric}_before"), report.get(f"eval_{metric}_after")
        if after is not None:
            facts.append((f"eval {metric} before → after",
                          f"{_text(before) if before is not None else '-'} → {_text(after)}"
                          + (f" ({report['eval_rows']} held-out rows)" if report.get("eval_rows") else "")))
    facts += _pairs(report, (("steps", "steps"), ("train_rows", "training rows"), ("tokens_per_second", "tokens/s"),
                             ("seconds", "seconds"), ("device", "device"), ("resumed_from_step", "resumed from step")))
    if isinstance(report.get("update_norms"), dict):
        facts.append(("update norms", ", ".join(f"{k}={_text(v)}" for k, v in report["update_norms"].items())))
    if isinstance(report.get("timings"), dict):
        facts.append(("time", ", ".join(f"{k} {_text(v)}s" for k, v in report["timings"].items())))
    if report.get("registered"):
        facts.append(("registered", ", ".join(map(str, report["registered"]))))
    return facts


def _size(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(value)


def loss_chart(curve: list[Any], width: int = 640, height: int = 240) -> dict[str, Any] | None:
    """An SVG line chart of ``[[step, loss], ...]`` (non-finite or malformed points skipped, at most
    ``MAX_CHART_POINTS`` points drawn): the polyline and the axes' labels (first/last step, min/max loss)."""
    points = []
    for item in curve:
        if isinstance(item, list | tuple) and len(item) == 2:
            try:
                step, loss = float(item[0]), float(item[1])
            except (TypeError, ValueError):
                continue
            if math.isfinite(step) and math.isfinite(loss):
                points.append((step, loss))
    if not points:
        return None
    if len(points) > MAX_CHART_POINTS:
        stride = math.ceil(len(points) / MAX_CHART_POINTS)
        points = points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])
    left, right, top, bottom = 64, 16, 12, 36
    x0, x1 = points[0][0], points[-1][0]
    lows = [loss for _, loss in points]
    y0, y1 = min(lows), max(lows)
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(step: float) -> float:
        return left + (step - x0) / ((x1 - x0) or 1) * plot_w

    def y(loss: float) -> float:
        return top + (y1 - loss) / ((y1 - y0) or 1) * plot_h

    polyline = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in points)
    return {"width": width, "height": height, "points": polyline, "count": len(curve),
            "left": left, "right": width - right, "top": top, "bottom": height - bottom,
            "y_max": f"{y1:.4g}", "y_min": f"{y0:.4g}", "x_min": f"{x0:g}", "x_max": f"{x1:g}",
            "first": f"{points[0][1]:.4g}", "last": f"{points[-1][1]:.4g}"}
