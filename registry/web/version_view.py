"""What the version page shows, read from the catalog: the view-model functions behind ``/v/{ref}`` (issue 16).

The page handler stays thin: it calls :func:`load_version_page`, which asks the same service operations as the
API (``versions.get``, ``versions.aliases``, ``versions.alias_history``) and reads, in one session, what no
operation returns: the stored adapter config and module tensors, the children, and the job that made the version.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from datetime import datetime
from typing import Any
from urllib.parse import quote

from sqlalchemy import func, select

from registry import auth, catalog, queries
from registry import models as m
from registry import types as t
from registry.endpoints import BY_NAME
from registry.errors import AdapterNotFound, Forbidden
from registry.operations import versions
from registry.refs import parse_ref
from registry.service import Service
from registry.web.kit import Pages  # noqa: F401  (the page modules take it from here)

MAX_CHILDREN = 200  # children listed on the page; the lineage page shows them all
MAX_HISTORY = 50  # alias moves listed per alias (the newest)
FOLDED_ROWS = 12  # an evidence table longer than this is folded (<details>)


@dataclasses.dataclass(frozen=True)
class ModuleGroup:
    """Adapted modules sharing a leaf name (``q_proj``) and the same shapes, e.g. ``q_proj`` in every layer."""

    leaf: str
    kind: str
    rank: int
    in_features: int
    out_features: int
    a_shape: list[int]
    b_shape: list[int]
    dtype: str
    flags: list[str]  # "bias" (lora_B.bias), "magnitude" (DoRA)
    modules: list[str]  # the full module paths, in layer order


@dataclasses.dataclass(frozen=True)
class ChildLink:
    """A version made from this one (a lineage edge from it)."""

    ref: str
    relation: str
    weight: float | None
    status: str


@dataclasses.dataclass(frozen=True)
class ProducingJob:
    """The job that registered the version, with its recipe (the spec it ran) and, for a recipe run, the run."""

    id: int
    kind: str
    status: str
    submitted_by: str | None
    created_at: datetime
    finished_at: datetime | None
    summary: list[tuple[str, str]]  # the spec's main settings, readable
    sources: list[tuple[str, float | None]]  # input refs and their weights (None: no weight, e.g. training)
    spec_json: str
    report: list[tuple[str, str]]
    run_id: int | None = None
    run_name: str | None = None
    recipe_json: str | None = None


@dataclasses.dataclass(frozen=True)
class AliasView:
    """One alias of the adapter: where it points, whether it points here, and its moves (newest first)."""

    alias: str
    ref: str
    protected: bool
    here: bool
    history: list[dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class VersionPage:
    """Everything the version page renders."""

    version: t.AdapterVersion
    config: list[tuple[str, str]]  # adapter_config.json's keys, values as JSON where not plain text
    config_json: str
    config_sha256: str
    modules: list[ModuleGroup]
    extra_tensors: list[tuple[str, list[int]]]  # non-LoRA tensors (modules_to_save copies, trainable tokens)
    children: list[ChildLink]
    children_total: int
    job: ProducingJob | None
    aliases: list[AliasView]
    may_write: bool  # the signed-in principal passes the write rule on this adapter (forms shown)
    is_admin: bool  # may change an alias's protection
    base_key: str | None  # how /bases/{key} names the version's base


def load_version_page(svc: Service, principal: auth.Principal, ref: str) -> VersionPage:
    """The version page of ``ref`` (``name``, ``name:N``, ``name@alias``); a deleted version as its tombstone."""
    try:
        view = versions.get(svc, ref)
    except AdapterNotFound:
        view = _tombstone(svc, ref)
    with svc.sessions() as session:
        row = session.get(m.AdapterVersion, view.id)
        assert row is not None  # just read
        config = dict(row.adapter_config or {})
        modules = group_modules(row.module_tensors or {})
        extra = sorted((k, list(v)) for k, v in (row.extra_tensors or {}).items())
        config_sha = row.config_sha256
        children, total = children_of(session, row.id)
        job = producing_job(session, row)
    return VersionPage(
        version=view, config=config_rows(config), config_json=json.dumps(config, indent=2, sort_keys=True),
        config_sha256=config_sha, modules=modules, extra_tensors=extra, children=children, children_total=total,
        job=job, aliases=alias_views(svc, view), may_write=may(principal, svc, "set_alias", ref=view.ref),
        is_admin=principal.can("admin"), base_key=base_key(view.base_model, view.base_revision),
    )


def _tombstone(svc: Service, ref: str) -> t.AdapterVersion:
    """A deleted version, for its page (what it was, when and why it was deleted); anything else: not found."""
    with svc.sessions() as session:
        row = catalog.resolve(session, parse_ref(ref), include_deleted=True)
        if row.status != "deleted":  # pragma: no cover - get() found no version, so this one is deleted
            raise AdapterNotFound(f"no version {ref!r}")
        return queries.describe(session, [row], svc.store.root)[0]


def may(principal: auth.Principal, svc: Service, endpoint: str, **args: Any) -> bool:
    """Whether ``principal`` passes the API's permission rule of ``endpoint`` with these arguments."""
    try:
        BY_NAME[endpoint].rule(principal, dict(args), svc)
    except Forbidden:
        return False
    return True


def base_key(name: str | None, revision: str | None) -> str | None:
    """The name ``operations.bases.base`` finds one base record by: ``name@revision`` when pinned, else ``name``."""
    if not name:
        return None
    return f"{name}@{revision}" if revision else name


def base_url(key: str) -> str:
    """The base page's path for a base's name (a Hub id, a folder path with slashes, or a short name)."""
    return "/bases/" + quote(key, safe="@")


def version_url(ref: str, suffix: str = "") -> str:
    return "/v/" + quote(ref, safe=":@") + suffix


def natural_key(text: str) -> list[Any]:
    """Sort key putting ``layers.2`` before ``layers.10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def group_modules(module_tensors: dict[str, dict[str, Any]]) -> list[ModuleGroup]:
    """The stored module tensors (module path -> kind, rank, in/out features, A/B shapes, dtype, flags) grouped by
    leaf name and shapes, so that a 32-layer adapter reads as a few rows; groups by leaf name, modules by layer."""
    groups: dict[tuple[Any, ...], list[str]] = {}
    for path, tensors in module_tensors.items():
        flags = [flag for flag, key in (("bias", "has_bias"), ("magnitude", "has_magnitude")) if tensors.get(key)]
        key = (path.rsplit(".", 1)[-1], tensors.get("kind", "?"), int(tensors.get("rank", 0)),
               int(tensors.get("in_features", 0)), int(tensors.get("out_features", 0)),
               tuple(tensors.get("a_shape") or ()), tuple(tensors.get("b_shape") or ()), str(tensors.get("dtype", "")),
               tuple(flags))
        groups.setdefault(key, []).append(path)
    out = [ModuleGroup(leaf=k[0], kind=k[1], rank=k[2], in_features=k[3], out_features=k[4], a_shape=list(k[5]),
                       b_shape=list(k[6]), dtype=k[7], flags=list(k[8]), modules=sorted(paths, key=natural_key))
           for k, paths in groups.items()]
    return sorted(out, key=lambda g: (natural_key(g.leaf), g.rank, natural_key(g.modules[0])))


def config_rows(config: dict[str, Any]) -> list[tuple[str, str]]:
    """adapter_config.json's set keys as (key, value) rows: text as itself, anything else as compact JSON (keys
    whose value is null are left to the full JSON below the table)."""
    return [(key, value if isinstance(value, str) else json.dumps(value, sort_keys=True))
            for key, value in sorted(config.items()) if value is not None]


def shown(value: Any) -> str:
    """A scalar as a person reads it: yes/no, numbers to 6 significant digits, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        if all(not isinstance(x, (dict, list, tuple)) for x in value):
            return ", ".join(shown(x) for x in value) if value else "(none)"
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def flatten(data: dict[str, Any], prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    """A nested dict (a compatibility record's evidence, a job's report) as (dotted key, readable value) rows:
    ``logits.max_abs_diff_from_base: 0.0123``, ``distance_from_parents.tone:1: 0.05``."""
    rows: list[tuple[str, str]] = []
    for key, value in sorted(data.items(), key=lambda item: str(item[0])):
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and depth < 6:
            rows += flatten(value, f"{name}.", depth + 1)
        elif isinstance(value, list) and value and all(isinstance(x, dict) for x in value) and depth < 6:
            for i, item in enumerate(value):  # e.g. a merge report's per-module rows
                rows += flatten(item, f"{name}[{i}].", depth + 1)
        else:
            rows.append((name, shown(value) if not isinstance(value, dict) else json.dumps(value, default=str)))
    return rows


def children_of(session: Any, version_id: int) -> tuple[list[ChildLink], int]:
    """The versions with a lineage edge from ``version_id`` (at most :data:`MAX_CHILDREN`, newest first), and how
    many there are."""
    e, v, a = m.LineageEdge, m.AdapterVersion, m.Adapter
    rows = session.execute(
        select(a.name, v.version, v.status, e.relation, e.weight).select_from(e)
        .join(v, v.id == e.child_id).join(a, a.id == v.adapter_id)
        .where(e.parent_id == version_id).order_by(e.child_id.desc()).limit(MAX_CHILDREN)
    ).all()
    total = len(rows)
    if total == MAX_CHILDREN:
        total = int(session.scalar(select(func.count()).select_from(e).where(e.parent_id == version_id)) or 0)
    return [ChildLink(ref=f"{r.name}:{r.version}", relation=r.relation, weight=r.weight, status=r.status)
            for r in rows], total


def producing_job(session: Any, row: m.AdapterVersion) -> ProducingJob | None:
    """The job that registered ``row``: the one its ``source_uri`` names (``job:N``, every output of a joint
    training run), else a finished merge or training job whose result it is."""
    job = None
    source = row.source_uri or ""
    if source.startswith("job:") and source[4:].isdigit():
        job = session.get(m.Job, int(source[4:]))
    if job is None:
        job = session.scalars(select(m.Job).where(m.Job.result_version_id == row.id,
                                                  m.Job.kind.in_(("merge", "train")))
                              .order_by(m.Job.id.desc()).limit(1)).first()
    if job is None:
        return None
    spec = dict(job.spec or {})
    run = session.get(m.Run, job.run_id) if job.run_id else None
    return ProducingJob(
        id=job.id, kind=job.kind, status=job.status, submitted_by=spec.get("submitted_by"),
        created_at=job.created_at, finished_at=job.finished_at, summary=spec_summary(spec),
        sources=_sources(spec), spec_json=json.dumps(spec, indent=2, sort_keys=True, default=str),
        report=flatten(dict(job.report or {})), run_id=run.id if run else None,
        run_name=run.recipe_name if run else None,
        recipe_json=json.dumps(run.recipe, indent=2, sort_keys=True, default=str) if run else None,
    )


def _sources(spec: dict[str, Any]) -> list[tuple[str, float | None]]:
    refs = [str(s.get("ref")) for s in spec.get("sources") or [] if isinstance(s, dict)]
    weights = list(spec.get("weights") or [])
    return [(ref, weights[i] if i < len(weights) else None) for i, ref in enumerate(refs)]


#: The settings of a job spec worth a row each on the page (the rest is in the full spec).
_SUMMARY_KEYS = ("method", "params", "name", "names", "new", "data", "steps", "lr", "lrs", "batch_size",
                 "grad_accum", "max_length", "seed", "task_type", "allow_cross_base", "validate_after",
                 "publish_to", "tags", "warnings")


def spec_summary(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """A job spec's main settings (method and parameters, training settings, data) as readable rows."""
    rows: list[tuple[str, str]] = []
    for key in _SUMMARY_KEYS:
        value = spec.get(key)
        if value in (None, {}, [], False):
            continue
        if key == "params" and isinstance(value, dict):
            rows += [(f"params.{k}", shown(v)) for k, v in sorted(value.items()) if v is not None]
        elif key == "data" and isinstance(value, dict):
            rows.append(("data", f"{value.get('path')} ({value.get('rows')} rows, {value.get('fields')}, "
                                 f"sha256 {str(value.get('sha256', ''))[:12]})"))
        elif isinstance(value, dict):
            rows += flatten(value, f"{key}.")
        else:
            rows.append((key, shown(value)))
    return rows


def alias_views(svc: Service, view: t.AdapterVersion) -> list[AliasView]:
    """Every alias of the version's adapter, with its history (``versions.alias_history``, newest first)."""
    out = []
    for info in versions.aliases(svc, view.name):
        history = versions.alias_history(svc, f"{view.name}@{info.alias}")
        out.append(AliasView(alias=info.alias, ref=info.ref, protected=info.protected, here=info.ref == view.ref,
                             history=list(reversed(history))[:MAX_HISTORY]))
    return out
