"""Read-side queries: search, detail views and lineage (one recursive CTE per direction)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Integer,
    Select,
    and_,
    any_,
    bindparam,
    exists,
    func,
    literal,
    select,
    type_coerce,
    union,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session, aliased, defer

from registry import models as m
from registry import types as t
from registry.catalog import find_base
from registry.errors import RegistryError
from registry.refs import check_tag

#: What ``SearchFilters.status`` accepts: ``live`` = ready or deprecated (the default: deleted versions are hidden).
STATUS_FILTERS = ("live", "ready", "deprecated", "deleted", "any", None)
MAX_FILTER_CHARS = 256  # a search filter's text (NUL and other control characters refused)
SORT_KEYS = {
    "created": m.AdapterVersion.created_at,
    "name": m.Adapter.name,
    "version": m.AdapterVersion.version,
    "rank": m.AdapterVersion.r,
    "size": m.AdapterVersion.size_bytes,
}


@dataclass
class SearchFilters:
    """What ``Registry.search`` and ``adreg list`` filter on; every set field is ANDed."""

    base_model: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    task_type: str | None = None
    peft_type: str | None = None
    min_rank: int | None = None
    max_rank: int | None = None
    target_module: str | None = None
    name_like: str | None = None
    compatible_with: str | None = None  # a base model (name, short name or folder) with compatibility evidence
    # ``live`` (ready and deprecated), ``ready``, ``deprecated``, ``deleted``, or ``any`` / None (every status)
    status: str | None = "live"
    query: str | None = None  # full-text over names, descriptions and tags, ranked
    where: str | None = None  # metric conditions: "eval_loss<2.5 and accuracy>=0.9" (registry.where's grammar)
    sort: str | None = None  # None: "relevance" with a query (best first), else "created"
    descending: bool = True
    limit: int = 50
    offset: int = 0


MAX_PAGE = 1000


def check_page(limit: int, offset: int = 0) -> None:
    """A page size of 1 to :data:`MAX_PAGE` and a non-negative offset (a negative LIMIT means "all" on SQLite)."""
    if not 1 <= limit <= MAX_PAGE:
        raise RegistryError(f"limit must be between 1 and {MAX_PAGE}, not {limit}")
    if not 0 <= offset <= 2**31 - 1:
        raise RegistryError(f"offset must be between 0 and {2**31 - 1}, not {offset}")


def _where(session: Session, f: SearchFilters) -> list[ColumnElement[bool]]:
    v = m.AdapterVersion
    conds: list[ColumnElement[bool]] = []
    if f.base_model:
        base = find_base(session, f.base_model)
        conds.append(v.base_model_id == base.id)
    if f.tags and session.get_bind().dialect.name == "postgresql":
        conds.append(type_coerce(v.tag_doc, JSONB).contains(f.tags))  # one GIN lookup for all the tags
    else:
        for key, value in f.tags.items():
            conds.append(exists().where(m.Tag.version_id == v.id, m.Tag.key == key, m.Tag.value == value))
    if f.task_type:
        conds.append(v.task_type == f.task_type.upper())
    if f.peft_type:
        conds.append(v.peft_type == f.peft_type.upper())
    if f.min_rank is not None:
        conds.append(v.r >= f.min_rank)
    if f.max_rank is not None:
        conds.append(v.r <= f.max_rank)
    if f.target_module:
        conds.append(exists().where(m.TargetModule.version_id == v.id, m.TargetModule.module == f.target_module))
    if f.name_like:
        escaped = f.name_like.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conds.append(m.Adapter.name.like(f"%{escaped}%", escape="\\"))

    # -- lifecycle (issue 15) --
    if f.status not in STATUS_FILTERS:
        raise RegistryError(f"status must be one of {', '.join(map(str, STATUS_FILTERS))}, not {f.status!r}")
    if f.status == "live":
        conds.append(v.status.in_(("ready", "deprecated")))
    elif f.status not in (None, "any"):
        conds.append(v.status == f.status)
    # -- end lifecycle --

    # -- text search (issue 15) --
    if f.query is not None:
        from registry import fulltext

        fulltext.check_query(f.query, MAX_FILTER_CHARS)
        conds.append(fulltext.condition(session, f.query))
    # -- end text search --

    # -- metrics (issue 15) --
    if f.where is not None:  # each condition: the version has the metric (on that dataset) with a matching value
        from registry import where as metric_filter

        for c in metric_filter.parse(f.where, max_chars=MAX_FILTER_CHARS):
            mt = m.Metric
            conds.append(exists().where(mt.version_id == v.id, mt.name == c.metric, mt.dataset == c.dataset,
                                        metric_filter.OPERATORS[c.op](mt.value, c.value)))
    # -- end metrics --

    # -- diff (issue 15) --
    # -- end diff --

    # -- named bases (issue 15) --
    if f.compatible_with:
        from registry.compat import EVIDENCE_LEVELS  # (here: keeps this feature inside its section)

        # Every version with evidence that it fits the base (exact, shape or validated; a 'declared' claim was never
        # checked), whichever base it was registered against: one EXISTS on the compatibility index.
        if len(f.compatible_with) > MAX_FILTER_CHARS or any(ord(c) < 32 for c in f.compatible_with):
            raise RegistryError(f"the compatible_with filter must be at most {MAX_FILTER_CHARS} printable characters")
        target = find_base(session, f.compatible_with)
        conds.append(exists().where(m.Compatibility.version_id == v.id, m.Compatibility.base_model_id == target.id,
                                    m.Compatibility.level.in_(EVIDENCE_LEVELS)))
    # -- end named bases --

    return conds


def _sort_key(session: Session, f: SearchFilters) -> ColumnElement:  # type: ignore[type-arg]
    """The expression ``search`` orders by (then by id, newest first)."""
    # -- text search (issue 15) --
    # No sort asked for: by relevance (best first) with a query, else by creation (newest first).
    if f.sort is None or f.sort == "relevance":
        if f.query is not None:
            from registry import fulltext

            fulltext.check_query(f.query, MAX_FILTER_CHARS)
            return fulltext.relevance(session, f.query)
        if f.sort == "relevance":
            raise RegistryError("sort by relevance needs a query", hint='add --query "words" (query= in the SDK)')
        return SORT_KEYS["created"]
    # -- end text search --

    # -- metrics (issue 15) --
    from registry import where as metric_filter

    chosen = metric_filter.parse_metric_sort(f.sort)  # metric:NAME or metric:NAME[DATASET]
    if chosen is not None:
        # The order as one key (search pages it faster, by walking the metric's index: _metric_page). Metric
        # values are finite, so an infinite stand-in puts versions lacking the metric last either way.
        mt = m.Metric
        value = select(mt.value).where(mt.version_id == m.AdapterVersion.id, mt.name == chosen[0],
                                       mt.dataset == chosen[1]).scalar_subquery()
        return func.coalesce(value, literal(float("-inf") if f.descending else float("inf")))
    # -- end metrics --

    if f.sort not in SORT_KEYS:
        raise RegistryError(f"sort must be one of {', '.join(SORT_KEYS)}, relevance (with a query) or metric:NAME, "
                            f"not {f.sort!r}")
    return SORT_KEYS[f.sort]


def search(session: Session, f: SearchFilters) -> tuple[list[m.AdapterVersion], int]:
    """One page of matching versions and the total count.

    The filters run once: the matching (id, sort key) pairs are a CTE that the count and the page both read.
    Then the page's rows are loaded by id, without the JSON that ``describe`` does not show.
    """
    check_page(f.limit, f.offset)
    for what in ("base_model", "task_type", "peft_type", "target_module", "name_like"):
        value = getattr(f, what)
        if value is not None and (len(value) > MAX_FILTER_CHARS or any(ord(c) < 32 for c in value)):
            raise RegistryError(f"the {what} filter must be at most {MAX_FILTER_CHARS} printable characters")
    for key, value in f.tags.items():
        check_tag(key, value)
    v = m.AdapterVersion
    key = _sort_key(session, f)
    matching = select(v.id.label("id"), key.label("sort_key")).where(*_where(session, f))
    if f.name_like or f.sort == "name":
        matching = matching.join(m.Adapter)
    if f.sort and f.sort.startswith("metric:"):  # walk the metric's index instead of keying every match
        ids, total = _metric_page(session, matching, f)
        return _rows_by_id(session, ids), total
    hits = matching.cte("hits")
    total = select(func.count()).select_from(hits).scalar_subquery()
    order = [hits.c.sort_key.desc() if f.descending else hits.c.sort_key.asc(), hits.c.id.desc()]
    page = session.execute(
        select(hits.c.id, total.label("total")).order_by(*order).limit(f.limit).offset(f.offset)
    ).all()
    if not page:  # nothing matches, or the offset is past the end
        return [], int(session.scalar(select(func.count()).select_from(hits)) or 0) if f.offset else 0
    return _rows_by_id(session, [p.id for p in page]), int(page[0].total)


def _rows_by_id(session: Session, ids: list[int]) -> list[m.AdapterVersion]:
    """The versions ``ids`` in that order, without the JSON that ``describe`` does not show."""
    v = m.AdapterVersion
    rows = {r.id: r for r in session.scalars(
        select(v).where(v.id.in_(ids)).options(defer(v.module_tensors), defer(v.adapter_config), defer(v.tag_doc))
    )} if ids else {}
    return [rows[i] for i in ids]


# -- metrics (issue 15): one page of a metric sort -----------------------------------------------------------

_SORT_METRIC = aliased(m.Metric, name="sort_metric")


def _metric_page(session: Session, matching: Select, f: SearchFilters) -> tuple[list[int], int]:  # type: ignore[type-arg]
    """The ids of one page of ``matching`` (search's filtered select) sorted by ``f.sort`` = ``metric:NAME[DATASET]``,
    versions lacking the metric last (newest first), and the total.

    Keying every match with the metric (a correlated subquery per version, then a sort) costs ~100k index probes
    at 100k versions. Instead the versions that have the metric are read in the order of the index
    ``ix_version_metrics_name_dataset_value`` (a LIMIT stops the walk), the total is a plain count of the matches,
    and only a page that runs past the last version with the metric reads those without it.
    """
    from registry import where as metric_filter

    name, dataset = metric_filter.parse_metric_sort(f.sort) or ("", "")
    v, mt = m.AdapterVersion, _SORT_METRIC  # an alias: where-filter EXISTS on version_metrics stay uncorrelated
    matching = matching.with_only_columns(v.id)  # the key column is not needed: the index gives the order
    total = int(session.scalar(select(func.count()).select_from(matching.subquery())) or 0)
    if f.offset >= total:
        return [], total
    has_metric = and_(mt.version_id == v.id, mt.name == name, mt.dataset == dataset)
    with_metric = matching.join(mt, has_metric)
    ids = list(session.scalars(with_metric.order_by(mt.value.desc() if f.descending else mt.value.asc(), v.id.desc())
                               .limit(f.limit).offset(f.offset)))
    if len(ids) == f.limit or f.offset + len(ids) >= total:
        return ids, total
    # The page runs past the versions that have the metric: the rest come from those that lack it.
    having = f.offset + len(ids) if ids or not f.offset else int(
        session.scalar(select(func.count()).select_from(with_metric.subquery())) or 0)
    lacking = matching.where(~exists().where(has_metric))
    ids += session.scalars(lacking.order_by(v.id.desc()).limit(f.limit - len(ids)).offset(max(0, f.offset - having)))
    return ids, total


# Built once: a fresh aliased() per call costs more (~1.5 ms) than the query it is used in.
_PARENT_VERSION = aliased(m.AdapterVersion, name="parent_version")
_PARENT_ADAPTER = aliased(m.Adapter, name="parent_adapter")


def describe(session: Session, rows: list[m.AdapterVersion], store_root: Path) -> list[t.AdapterVersion]:
    """Turn rows into SDK objects, loading tags, aliases, parents and compatibility in bulk (five queries for
    any number of rows), so that a listing carries every field ``show`` has."""
    ids = [r.id for r in rows]
    if not ids:
        return []
    adapters = {a.id: a for a in session.execute(
        select(m.Adapter.id, m.Adapter.name, m.Adapter.description)
        .where(m.Adapter.id.in_({r.adapter_id for r in rows}))
    )}
    bases = {b.id: b for b in session.execute(
        select(m.BaseModelRecord.id, m.BaseModelRecord.name, m.BaseModelRecord.revision)
        .where(m.BaseModelRecord.id.in_({r.base_model_id for r in rows if r.base_model_id}))
    )}
    tags: dict[int, dict[str, str]] = defaultdict(dict)
    tag_rows = session.execute(select(m.Tag.version_id, m.Tag.key, m.Tag.value).where(m.Tag.version_id.in_(ids)))
    for vid, key, value in tag_rows:
        tags[vid][key] = value
    aliases: dict[int, list[str]] = defaultdict(list)
    for vid, name in session.execute(
        select(m.Alias.version_id, m.Alias.name).where(m.Alias.version_id.in_(ids)).order_by(m.Alias.name)
    ):
        aliases[vid].append(name)
    parents: dict[int, list[t.ParentLink]] = defaultdict(list)
    p_ver, p_ad = _PARENT_VERSION, _PARENT_ADAPTER
    for e, pname, pversion in session.execute(
        select(m.LineageEdge, p_ad.name, p_ver.version)
        .join(p_ver, p_ver.id == m.LineageEdge.parent_id).join(p_ad, p_ad.id == p_ver.adapter_id)
        .where(m.LineageEdge.child_id.in_(ids)).order_by(m.LineageEdge.position)
    ):
        parents[e.child_id].append(t.ParentLink(
            ref=f"{pname}:{pversion}", relation=e.relation, weight=e.weight, position=e.position,
            params=e.params or {},
        ))
    compat: dict[int, list[t.CompatInfo]] = defaultdict(list)
    for c, bname, brev in session.execute(
        select(m.Compatibility, m.BaseModelRecord.name, m.BaseModelRecord.revision)
        .join(m.BaseModelRecord, m.BaseModelRecord.id == m.Compatibility.base_model_id)
        .where(m.Compatibility.version_id.in_(ids)).order_by(m.Compatibility.id)
    ):
        compat[c.version_id].append(
            t.CompatInfo(base_model=bname, revision=brev, level=c.level, evidence=c.evidence or {})
        )

    metrics: dict[int, list[t.MetricInfo]] = defaultdict(list)
    for x in session.scalars(select(m.Metric).where(m.Metric.version_id.in_(ids))
                             .order_by(m.Metric.name, m.Metric.dataset)):
        metrics[x.version_id].append(t.MetricInfo(
            name=x.name, value=x.value, dataset=x.dataset, source=x.source, job_id=x.job_id,
            recorded_at=x.recorded_at, recorded_by=x.recorded_by,
        ))

    linked: dict[int, list[t.DatasetLink]] = defaultdict(list)
    for vid, role, dname, dversion, dsha, drows in session.execute(
        select(m.VersionDataset.version_id, m.VersionDataset.role, m.Dataset.name, m.Dataset.version,
               m.Dataset.sha256, m.Dataset.rows)
        .join(m.Dataset, m.Dataset.id == m.VersionDataset.dataset_id)
        .where(m.VersionDataset.version_id.in_(ids)).order_by(m.VersionDataset.role, m.Dataset.name, m.Dataset.version)
    ):
        linked[vid].append(t.DatasetLink(ref=f"{dname}:{dversion}", role=role, sha256=dsha, rows=drows))

    out = []
    for r in rows:
        base = bases.get(r.base_model_id) if r.base_model_id else None
        name = adapters[r.adapter_id].name
        out.append(t.AdapterVersion(
            id=r.id, name=name, version=r.version, ref=f"{name}:{r.version}", status=r.status,
            base_model=base.name if base else None, base_revision=base.revision if base else None,
            peft_type=r.peft_type, task_type=r.task_type, r=r.r, lora_alpha=r.lora_alpha,
            use_rslora=r.use_rslora, use_dora=r.use_dora, target_modules=list(r.target_modules or []),
            modules_to_save=list(r.modules_to_save or []), rank_pattern=dict(r.rank_pattern or {}),
            alpha_pattern=dict(r.alpha_pattern or {}), fan_in_fan_out=r.fan_in_fan_out,
            peft_version=r.peft_version, weights_sha256=r.weights_sha256, size_bytes=r.size_bytes,
            param_count=r.param_count, dtypes=list(r.dtypes or []), module_count=r.module_count,
            path=str(store_root / r.storage_path), source_uri=r.source_uri, description=r.description,
            created_at=r.created_at, created_by=r.created_by,
            tags=dict(tags.get(r.id, {})), aliases=aliases.get(r.id, []), parents=parents.get(r.id, []),
            compatible=compat.get(r.id, []), status_reason=r.status_reason,
            adapter_description=adapters[r.adapter_id].description, metrics=metrics.get(r.id, []),
            datasets=linked.get(r.id, []),
        ))
    return out


def lineage(session: Session, version_id: int) -> t.LineageGraph:
    """Every ancestor and descendant of ``version_id`` (and itself), and the edges among them.

    Two recursive CTEs (up and down) in one statement; ``UNION`` (not ``UNION ALL``) makes them
    terminate on any DAG.
    """
    e = m.LineageEdge
    up = select(literal(version_id).label("id")).cte("ancestors", recursive=True)
    up = up.union(select(e.parent_id).join(up, e.child_id == up.c.id))
    down = select(literal(version_id).label("id")).cte("descendants", recursive=True)
    down = down.union(select(e.child_id).join(down, e.parent_id == down.c.id))
    ids = union(select(up.c.id), select(down.c.id)).subquery()
    rows = session.execute(
        select(m.AdapterVersion.id, m.Adapter.name, m.AdapterVersion.version,
               m.AdapterVersion.weights_sha256, m.AdapterVersion.created_at, m.AdapterVersion.status)
        .join(m.Adapter).where(m.AdapterVersion.id.in_(select(ids.c.id)))
        .order_by(m.AdapterVersion.created_at, m.AdapterVersion.id)
    ).all()
    refs = {r.id: f"{r.name}:{r.version}" for r in rows}
    if session.get_bind().dialect.name == "postgresql":  # one array parameter, not two IN lists of every node
        nodes = bindparam("nodes", list(refs), type_=ARRAY(Integer))
        among = and_(e.child_id == any_(nodes), e.parent_id == any_(nodes))
    else:
        among = and_(e.child_id.in_(refs), e.parent_id.in_(refs))
    edges = session.execute(
        select(e.child_id, e.parent_id, e.relation, e.weight, e.position, e.params)
        .where(among).order_by(e.child_id, e.position)
    ).all()
    return t.LineageGraph(
        root=refs[version_id],
        nodes=[t.LineageNode(id=r.id, ref=refs[r.id], weights_sha256=r.weights_sha256, created_at=r.created_at,
                             status=r.status) for r in rows],
        edges=[t.LineageEdgeInfo(child=refs[x.child_id], parent=refs[x.parent_id], relation=x.relation,
                                 weight=x.weight, position=x.position, params=x.params or {}) for x in edges],
    )


def base_models(session: Session) -> list[t.BaseModelInfo]:
    counts = dict(session.execute(
        select(m.AdapterVersion.base_model_id, func.count()).group_by(m.AdapterVersion.base_model_id)
    ).all())
    return [
        t.BaseModelInfo(
            id=b.id, name=b.name, revision=b.revision, local_path=b.local_path, architecture=b.architecture,
            model_type=b.model_type, config_hash=b.config_hash, vocab_size=b.vocab_size,
            module_count=len(b.module_shapes or {}), adapter_versions=int(counts.get(b.id, 0)),
            short_name=b.short_name,
        )
        for b in session.scalars(select(m.BaseModelRecord).order_by(m.BaseModelRecord.name, m.BaseModelRecord.id))
    ]


def aliases(session: Session, name: str | None = None) -> list[t.AliasInfo]:
    """Every alias (of one adapter when ``name`` is given), by adapter and alias name."""
    query = (
        select(m.Adapter.name, m.Alias.name, m.AdapterVersion.version, m.Alias.updated_at, m.Alias.protected)
        .join(m.Alias, m.Alias.adapter_id == m.Adapter.id)
        .join(m.AdapterVersion, m.AdapterVersion.id == m.Alias.version_id)
        .order_by(m.Adapter.name, m.Alias.name)
    )
    if name is not None:
        query = query.where(m.Adapter.name == name)
    return [t.AliasInfo(name=adapter, alias=alias, ref=f"{adapter}:{version}", updated_at=updated,
                        protected=protected)
            for adapter, alias, version, updated, protected in session.execute(query)]
