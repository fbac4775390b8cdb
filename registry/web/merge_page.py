"""The merge form (issue 16): ``GET /merge`` and ``POST /merge``.

The method list and each method's parameters come from the merge-method table (``registry.merge_rules.METHODS``
and ``PARAMS``; input types from ``jobs.MergeParams``), so a new method or parameter appears here with no change.
Every parameter is in the page; a small script shows only the selected method's (without it, all are shown and
each says which methods use it). A post runs the same static validation as the API before any job exists
(``submit.merge`` checks everything, then queues): every problem is shown above the form, which keeps what the
user typed (200); a queued job redirects (303) to its page ``/jobs/{id}``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from registry import auth, jobs
from registry.endpoints import BY_NAME
from registry.errors import BrokerUnavailable, Forbidden, IncompatibleAdapters, RegistryError
from registry.merge_rules import METHODS, PARAMS, Method
from registry.refs import check_slug, parse_tag
from registry.service import Service
from registry.web.version_view import Pages

MAX_SOURCES = 64  # parent rows read from a form
EMPTY_ROWS = 3  # blank parent rows offered (JavaScript adds more)
MAX_FIELD = 4096
#: What each way of combining does (``merge_rules.Combine``), for the method list.
COMBINE_TEXT = {
    "cat": "concatenates the inputs' factors: exact",
    "factors": "combines the A and B factors separately (PEFT's approximation)",
    "exact_svd": "truncated SVD of the exact weighted sum",
    "dense_svd": "prunes the dense deltas, then truncates by SVD",
    "iso": "isotropic spectrum of the weighted sum (Iso-C)",
    "tsv": "each task's top singular vectors, orthogonalised across tasks (TSV-M)",
    "cts": "common and task-specific singular vectors, orthogonalised, isotropic spectrum (Iso-CTS)",
    "knots": "one SVD of the concatenated updates, the tasks' aligned parts merged (KnOTS)",
    "core": "the tasks in the reference bases of their stacked factors, merged there (Core Space)",
}


@dataclasses.dataclass(frozen=True)
class MethodOption:
    """One row of the method table, as the method select shows it."""

    name: str
    text: str
    accepts: list[str]
    requires: list[str]


@dataclasses.dataclass(frozen=True)
class ParamField:
    """One merge parameter as a form input: its type (from ``jobs.MergeParams``), what it must be, which methods
    accept and require it."""

    name: str
    meaning: str
    help: str
    default: Any
    kind: str  # int, float, choice or text
    choices: list[str]
    methods: list[str]
    required_by: list[str]


def _describe_method(name: str, method: Method) -> str:
    parts = [COMBINE_TEXT.get(method.combine, method.combine), f"rank: {method.rank_rule_text}"]
    if method.requires:
        parts.append("needs " + ", ".join(sorted(method.requires)))
    if method.random:
        parts.append("random masks (seed)")
    return f"{name}: " + "; ".join(parts)


def _kind(annotation: Any) -> tuple[str, list[str]]:
    """The input kind of a ``MergeParams`` field's type (``int | None`` -> int, ``Literal[...]`` -> choice)."""
    if typing.get_origin(annotation) is typing.Literal:
        return "choice", [str(x) for x in typing.get_args(annotation)]
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    first = args[0]
    if typing.get_origin(first) is typing.Literal:
        return "choice", [str(x) for x in typing.get_args(first)]
    if first is int:
        return "int", []
    if first is float:
        return "float", []
    return "text", []


def method_table() -> tuple[list[MethodOption], list[ParamField]]:
    """The methods and every parameter, read from ``merge_rules`` (and the parameters' types from the job spec)."""
    options = [MethodOption(name=n, text=_describe_method(n, m), accepts=sorted(m.accepts),
                            requires=sorted(m.requires)) for n, m in METHODS.items()]
    hints = jobs.MergeParams.model_fields
    fields = []
    for name, param in PARAMS.items():
        kind, choices = _kind(hints[name].annotation) if name in hints else ("text", [])
        fields.append(ParamField(
            name=name, meaning=param.meaning, help=param.help, default=param.default, kind=kind, choices=choices,
            methods=[n for n, m in METHODS.items() if name in m.accepts],
            required_by=[n for n, m in METHODS.items() if name in m.requires]))
    return options, fields


def dtype_choices() -> list[str]:
    return _kind(jobs.MergeParams.model_fields["dtype"].annotation)[1]


@dataclasses.dataclass
class MergeRequest:
    """A merge form read into ``submit.merge``'s arguments, and the problems found reading it."""

    sources: list[str]
    weights: list[float] | None  # None: learned from 1/n each
    options: dict[str, Any]
    problems: list[str]


def read_form(form: Any) -> MergeRequest:
    """The form's parents (``source``/``weight`` rows; blank rows skipped), method, parameters and options, with
    a problem for each field that cannot be read (messages for parameters come from the method table)."""
    problems: list[str] = []
    sources_in, weights_in = form.getlist("source")[:MAX_SOURCES], form.getlist("weight")[:MAX_SOURCES]
    learn = form.get("learn_weights") in ("1", "on")
    sources: list[str] = []
    weights: list[float] = []
    for i, raw in enumerate(sources_in):
        ref, weight = str(raw).strip()[:MAX_FIELD], str(weights_in[i] if i < len(weights_in) else "").strip()
        if not ref:
            if weight:
                problems.append(f"parent row {i + 1} has a weight ({weight[:40]}) but no version")
            continue
        if learn and not weight:  # learned from 1/n each when no parent has a starting weight
            sources.append(ref)
            continue
        try:
            number = float(weight)
            if not math.isfinite(number):
                raise ValueError
        except ValueError:
            problems.append(f"the weight of {ref} must be a finite number (got {weight[:40]!r})" if weight
                            else f"give {ref} a weight")
            continue
        sources.append(ref)
        weights.append(number)
    if not sources and not problems:
        problems.append("give at least one parent version (name:N or name@alias) with its weight")
    if learn and weights and len(weights) != len(sources):
        problems.append("to learn the weights, give every parent a starting weight, or none (1/n each)")
    method = str(form.get("method") or "")
    options: dict[str, Any] = {"method": method}
    if learn:
        options["learn_weights"] = True
        for key in ("learn_examples", "learn_budget"):
            raw = str(form.get(key) or "").strip()[:MAX_FIELD]
            if raw:
                if raw.isascii() and raw.isdigit() and len(raw) <= 6:
                    options[key] = int(raw)
                else:
                    problems.append(f"{key.replace('_', ' ')} must be a whole number (got {raw[:40]!r})")
        objective = str(form.get("learn_objective") or "").strip()[:MAX_FIELD]
        if objective:
            if objective in jobs.LEARN_OBJECTIVES:
                options["learn_objective"] = objective
            else:
                problems.append(f"the learn objective must be one of {', '.join(jobs.LEARN_OBJECTIVES)} "
                                f"(got {objective[:40]!r})")
    _, fields = method_table()
    for field in fields:
        raw = str(form.get(field.name) or "").strip()[:MAX_FIELD]
        if not raw:
            continue
        if field.kind in ("int", "float"):
            try:
                options[field.name] = int(raw) if field.kind == "int" else float(raw)
            except ValueError:
                problems.append(f"parameter {field.name} must be {field.meaning} (got {raw[:40]!r})")
        else:
            options[field.name] = raw
    name = str(form.get("name") or "").strip()[:MAX_FIELD]
    try:
        options["name"] = check_slug(name, "output name")
    except RegistryError as exc:
        problems.append(str(exc) if name else "give the merged adapter a name (the output name)")
    tags: dict[str, str] = {}
    for item in filter(None, (x.strip() for x in str(form.get("tags") or "")[:MAX_FIELD].split(","))):
        try:
            key, value = parse_tag(item)
            tags[key] = value
        except RegistryError as exc:
            problems.append(str(exc))
    if tags:
        options["tags"] = tags
    description = str(form.get("description") or "").replace("\r\n", "\n").strip()[:MAX_FIELD]
    if description:
        options["description"] = description
    dtype = str(form.get("dtype") or "")
    if dtype:
        options["dtype"] = dtype
    options["validate"] = True if form.get("validate") in ("1", "on") else None  # None: when parents have held-out data
    options["allow_cross_base"] = form.get("allow_cross_base") in ("1", "on")
    return MergeRequest(sources=sources, weights=weights if weights or not learn else None, options=options,
                        problems=problems)


def submit_merge(principal: auth.Principal, svc: Service, request: MergeRequest) -> tuple[int | None, list[str]]:
    """Check the API's permission rule and submit the merge (``submit.merge``: every static check first): the
    new job's id, or the problems that stopped it (no job exists then)."""
    if request.problems:
        return None, request.problems
    endpoint = BY_NAME["merge"]
    args = {"sources": request.sources, "weights": request.weights, **request.options}
    try:
        endpoint.rule(principal, args, svc)
    except Forbidden as exc:  # a write token without a grant on the output name: a problem of the form
        return None, [str(exc)]
    try:
        job = endpoint.function(svc, **args)
    except IncompatibleAdapters as exc:
        return None, list(exc.problems)
    except BrokerUnavailable as exc:  # the job is recorded; the recovery sweep sends it: its page says so
        return exc.job_id, []
    except RegistryError as exc:
        return None, [str(exc) + (f" ({exc.hint})" if exc.hint else "")]
    return job.id, []


def add_routes(pages: Pages) -> None:
    router = pages.router

    def form_page(request: Request, principal: auth.Principal, values: dict[str, Any], problems: list[str]
                  ) -> Response:
        methods, fields = method_table()
        sources = list(values.get("source") or [])
        weights = list(values.get("weight") or [])
        rows = [(s, weights[i] if i < len(weights) else "") for i, s in enumerate(sources) if s or
                (i < len(weights) and weights[i])]
        rows += [("", "")] * max(EMPTY_ROWS - len(rows), 1)
        invalid = {f.name for f in fields if any(f"parameter {f.name} " in p for p in problems)}
        return pages.render(request, "merge.html", user=principal, methods=methods, fields=fields,
                            dtypes=dtype_choices(), learn_objectives=jobs.LEARN_OBJECTIVES, rows=rows,
                            values=values, problems=problems, invalid=invalid,
                            may_merge=principal.scope != "read", title="Merge")

    @router.get("/merge", response_class=HTMLResponse)
    def merge_form(request: Request) -> Response:
        try:
            principal = pages.who(request)
        except RegistryError as exc:
            return pages.error(request, exc)
        query = request.query_params
        values: dict[str, Any] = {"source": query.getlist("source")[:MAX_SOURCES],
                                  "weight": query.getlist("weight")[:MAX_SOURCES],
                                  "method": query.get("method") or "svd"}
        return form_page(request, principal, values, [])

    @router.post("/merge")
    async def merge(request: Request) -> Response:
        try:
            principal, svc = await run_in_threadpool(pages.acting, request)
        except RegistryError as exc:
            return pages.error(request, exc)
        form = await request.form()
        try:
            pages.check_form(request, form)
            if principal.scope == "read":
                principal.require("write", str(form.get("name") or "") or "the merged adapter")
        except Forbidden as exc:
            return pages.error(request, exc, principal)
        job_id, problems = await run_in_threadpool(submit_merge, principal, svc, read_form(form))
        if job_id is not None:
            return RedirectResponse(f"/jobs/{job_id}", status_code=303)
        values = {k: str(v)[:MAX_FIELD] for k, v in form.items()}
        values["source"], values["weight"] = form.getlist("source")[:MAX_SOURCES], form.getlist("weight")[:MAX_SOURCES]
        return form_page(request, principal, values, problems)
