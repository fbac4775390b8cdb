"""Catalog queries at scale on PostgreSQL: 100,000 adapter versions with tags, aliases, lineage and compatibility.

Creates a throw-away schema in the ``test`` database, migrates it with Alembic, bulk-loads the rows with
PostgreSQL COPY (not Registry.register, which reads real adapter folders), VACUUM ANALYZEs, then times through
the SDK, round-robin so that load from elsewhere on the machine falls on every operation alike:

1. ``Registry.search(base_model=..., tags={...})``: base model + 2 tags, a page of 50 with the total; reference:
   the same page described one row at a time (the N+1 loop that the bulk ``describe`` replaces);
   ``Registry.search(query=...)``: full-text search, ranked, a page of 50 with the total, for one common word (a
   style, ~1/8 of the versions), two words (a domain) and a rare word (~1/2000); reference: ``search_text ILIKE
   '%word%'`` per word, newest first (what a catalog without a full-text index does);
2. ``Registry.get("name:N")`` (``show``): resolve and describe one version with tags, aliases, parents and
   compatibility (``name@alias`` and ``name`` too, for information); no slower way to compare with;
3. ``Registry.lineage(ref)`` in the middle and at the end of a 200-deep chain of ``finetune`` edges; reference:
   a per-node query loop (one query per node and direction, then the nodes), which the recursive CTEs replace.
4. (metrics, issue 15) ``Registry.search(sort="metric:eval_loss", descending=False)`` over every version, and
   ``Registry.search(where="eval_loss<2.5", base_model=...)``; references: the metrics fetched and sorted or
   filtered in Python. The loader adds ``eval_loss`` to 90% of the versions and ``accuracy[glue/sst2]`` to 30%.

Prints p50/p95 in ms, PASS/FAIL against the p50 target (20 ms), the ratio against each reference and the load
average (timings on a busy machine are not comparable). The schema is dropped at the end, also on failure.

    python benchmarks/catalog.py                      # 100,000 versions (~2,000 adapters x 50)
    python benchmarks/catalog.py --versions 10000     # a quick run
    python benchmarks/catalog.py --keep               # keep the schema (its name is printed), e.g. to EXPLAIN
    python benchmarks/catalog.py --schema bench_xxx   # time again against a kept schema, without reloading
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import create_engine, select, text
from timing import pct

PG = os.environ.get("ADREG_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TARGET_MS = 20.0
PER_ADAPTER = 50
CHAIN = 200  # versions in the finetune chain (199 edges)
TEAMS = ["cx", "law", "ops", "ml", "sales", "search"]
LANGS = ["en", "fr", "de", "es", "ja"]
STAGES = ["dev", "staging", "prod"]
PROJ = ["q_proj", "k_proj", "v_proj", "o_proj"]
LAYERS = 4  # 4 layers x 4 projections = 16 modules per base model
# (name, model_type, hidden size): the first three share shapes, so adapters on one fit the other two.
BASES = [
    ("meta-llama/Llama-3.2-1B", "llama", 2048),
    ("meta-llama/Llama-3.2-1B-Instruct", "llama", 2048),
    ("org/llama-1b-continued", "llama", 2048),
    ("mistralai/Mistral-7B-v0.3", "mistral", 4096),
    ("mistralai/Mistral-7B-Instruct-v0.3", "mistral", 4096),
]

# Text for full-text search: each adapter gets a description from a domain, a style and an audience; most versions
# a change note. Word frequencies: a style word (~1/8 of versions), a domain word (~1/30), a rare word (~1/2000).
DOMAINS = ["customer support", "legal contracts", "medical notes", "code review", "sql generation", "summarization",
           "translation", "sentiment analysis", "document retrieval", "chat assistant", "math reasoning",
           "finance reports", "insurance claims", "hr policies", "product descriptions", "email drafting",
           "meeting notes", "tax questions", "security alerts", "log analysis", "recipe writing", "travel booking",
           "tutoring", "news headlines", "patent drafting", "clinical trials", "contract review", "api documentation",
           "data labeling", "speech transcripts"]
STYLES = ["polite", "concise", "formal", "friendly", "detailed", "terse", "empathetic", "neutral"]
AUDIENCES = ["retail customers", "lawyers", "clinicians", "developers", "analysts", "agents", "students",
             "managers", "engineers", "auditors"]
NOTES = ["retrained on {n}k more examples", "fixes repetition on long inputs", "lower learning rate, {n} epochs",
         "merged with the {domain} adapter", "longer context, fewer refusals", "distilled from a larger teacher",
         "cleaned duplicates from the training set", "evaluated on the {domain} benchmark", "{style} tone, rank {r}"]
RARE = "kubernetes"  # in about one version description of 2,000

VERSION_COLUMNS = [
    "id", "adapter_id", "version", "base_model_id", "status", "peft_type", "task_type", "r", "lora_alpha",
    "use_rslora", "use_dora", "fan_in_fan_out", "rank_pattern", "alpha_pattern", "target_modules",
    "modules_to_save", "peft_version", "adapter_config", "weights_sha256", "size_bytes", "param_count", "dtypes",
    "module_tensors", "storage_path", "source_uri", "description", "created_at",
]

TABLES = ["base_models", "adapters", "adapter_versions", "tags", "version_targets", "aliases", "lineage_edges",
          "compatibility"]
# Columns that a schema may have beyond VERSION_COLUMNS (denormalised for search); filled when present.
OPTIONAL_COLUMNS = ["module_count", "tag_doc", "config_sha256", "extra_tensors", "search_text"]


# -- data ------------------------------------------------------------------------------------------------------


def _copy(conn: Any, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """COPY ``rows`` into ``table`` (psycopg 3, text format; JSON columns are passed as JSON text)."""
    count = 0
    with conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
            count += 1
    return count


def _sha(*parts: object) -> str:
    return uuid.uuid5(uuid.NAMESPACE_OID, "/".join(map(str, parts))).hex * 2


def _adapter_name(adapter_id: int, n_adapters: int, chain_adapter: int) -> str:
    if adapter_id <= n_adapters:
        return f"adapter-{adapter_id}"
    return "chain" if adapter_id == chain_adapter else f"chain-merge-{adapter_id - chain_adapter}"


def _search_text(adapter_id: int, adapter_text: str | None, note: str | None, tags: dict[str, str], n_adapters: int,
                 chain_adapter: int) -> str:
    """What ``catalog.refresh_search_text`` writes for a version: adapter name and description, version
    description, tags (``key value``), as words."""
    from registry.fulltext import body

    parts = [_adapter_name(adapter_id, n_adapters, chain_adapter), adapter_text, note,
             *(f"{key} {value}" for key, value in sorted(tags.items()))]
    return body(" ".join(p for p in parts if p))


def load(engine: Any, versions: int, seed: int = 0) -> dict[str, Any]:
    """Bulk-load a catalog of about ``versions`` versions; return what the timings need to pick arguments."""
    started = time.perf_counter()
    rnd = random.Random(seed)
    t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    n_adapters = max(4, (versions - CHAIN) // PER_ADAPTER)
    chain_adapter = n_adapters + 1  # one long-lived series of CHAIN versions, each a finetune of the previous

    # Adapters start over the first ~300 days and add a version every ~1-3 days: versions of different adapters
    # interleave in time, so ids (assigned in creation order) do not cluster by adapter.
    plan: list[tuple[datetime, int, int]] = []  # (created_at, adapter id, version number)
    counts = {a: PER_ADAPTER for a in range(1, n_adapters + 1)}
    counts[chain_adapter] = CHAIN
    for adapter_id, count in counts.items():
        at = t0 + timedelta(days=rnd.uniform(0, 300))
        for number in range(1, count + 1):
            plan.append((at, adapter_id, number))
            at += timedelta(hours=rnd.uniform(4, 72 if count == PER_ADAPTER else 18))
    plan.sort()
    ids = {(a, v): i for i, (_, a, v) in enumerate(plan, start=1)}
    adapter_base = {a: rnd.randrange(len(BASES)) + 1 for a in counts}
    adapter_text = {a: f"{rnd.choice(STYLES).capitalize()} {rnd.choice(DOMAINS)} adapter for {rnd.choice(AUDIENCES)}"
                    for a in counts}
    adapter_text[chain_adapter] = "Long-running finetune series of the assistant"

    base_rows = []
    for i, (name, model_type, hidden) in enumerate(BASES, start=1):
        shapes = {f"model.layers.{layer}.self_attn.{p}": {"kind": "linear", "in": hidden, "out": hidden}
                  for layer in range(LAYERS) for p in PROJ}
        revision = _sha("rev", name)[:40]
        base_rows.append((i, name, revision, revision, None, "LlamaForCausalLM" if model_type == "llama"
                          else "MistralForCausalLM", model_type, _sha("config", model_type), 32000 + i,
                          json.dumps(shapes), False, t0))

    version_rows, tag_rows, target_rows, compat_rows = [], [], [], []
    edges: list[tuple[int, int, str, float | None, int, str]] = []  # child, parent, relation, weight, pos, params
    recent: list[int] = []  # ids of non-chain versions, in creation order (merge parents come from the recent ones)
    latest: dict[int, int] = {}
    derived: dict[int, dict[str, Any]] = {}  # per version: values of OPTIONAL_COLUMNS
    for vid, (created, adapter_id, number) in enumerate(plan, start=1):
        base = adapter_base[adapter_id]
        hidden = BASES[base - 1][2]
        r = rnd.choice([4, 8, 16, 16, 32, 64])
        targets = sorted(rnd.sample(PROJ, rnd.choice([2, 2, 3, 4])))
        tensors = {
            f"model.layers.{layer}.self_attn.{p}": {
                "kind": "linear", "rank": r, "in_features": hidden, "out_features": hidden, "a_shape": [r, hidden],
                "b_shape": [hidden, r], "dtype": "float32", "has_bias": False, "has_magnitude": False,
            }
            for layer in range(LAYERS) for p in targets
        }
        params = 2 * r * hidden * len(tensors)
        config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 2 * r,
                  "target_modules": targets, "base_model_name_or_path": BASES[base - 1][0], "lora_dropout": 0.05}
        note = None  # the version's description
        if rnd.random() < 0.7:
            note = rnd.choice(NOTES).format(n=rnd.randint(2, 90), domain=rnd.choice(DOMAINS),
                                            style=rnd.choice(STYLES), r=r)
            if rnd.random() < 0.0005:
                note += f"; served on {RARE}"
        version_rows.append((
            vid, adapter_id, number, base, "ready", "LORA", "CAUSAL_LM", r, 2.0 * r, False, False, False, "{}", "{}",
            json.dumps(targets), "[]", "0.21.2", json.dumps(config), _sha("weights", vid), params * 4, params,
            '["float32"]', json.dumps(tensors), f"adapters/{_sha('weights', vid)}", None, note, created,
        ))
        tags = {"team": TEAMS[adapter_id % len(TEAMS)] if rnd.random() < 0.8 else rnd.choice(TEAMS),
                "lang": rnd.choice(LANGS), "stage": rnd.choice(STAGES)}
        tag_rows.extend((vid, key, value) for key, value in tags.items())
        derived[vid] = {"module_count": len(tensors), "tag_doc": json.dumps(tags), "config_sha256": _sha("config", vid),
                        "extra_tensors": "{}",
                        "search_text": _search_text(adapter_id, adapter_text[adapter_id], note, tags, n_adapters,
                                                    chain_adapter)}
        target_rows.extend((vid, p) for p in targets)
        compat_rows.append((vid, base, "exact", json.dumps({"declared": True, "shapes_checked": True,
                                                               "modules": len(tensors)}), created))
        model_type = BASES[base - 1][1]
        for other, (_, other_type, _) in enumerate(BASES, start=1):
            if other != base and other_type == model_type:
                compat_rows.append((vid, other, "shape", json.dumps({"same_config": True, "modules": len(tensors)}),
                                    created))
        # lineage
        if adapter_id == chain_adapter:
            if number > 1:
                edges.append((vid, ids[(adapter_id, number - 1)], "finetune", None, 0, '{"epochs": 1}'))
        else:
            roll = rnd.random()
            if number > 1 and roll < 0.6:
                edges.append((vid, latest[adapter_id], "finetune", None, 0, '{"epochs": 2}'))
            elif roll < 0.75 and len(recent) > 50:
                k = rnd.choice([2, 2, 3])
                for pos, parent in enumerate(rnd.sample(recent[-2000:], k)):
                    edges.append((vid, parent, "merge", round(1 / k, 4), pos, '{"method": "ties", "density": 0.5}'))
            recent.append(vid)
        latest[adapter_id] = vid

    # A few merges that take a chain version as a parent: the chain's lineage is not a bare line.
    merge_adapters = []
    next_id = len(plan)
    for k, chain_version in enumerate((60, 120, 180)):
        adapter_id = chain_adapter + 1 + k
        merge_adapters.append(adapter_id)
        next_id += 1
        created = plan[ids[(chain_adapter, chain_version)] - 1][0] + timedelta(hours=1)
        row = dict(zip(VERSION_COLUMNS, version_rows[recent[-1] - 1], strict=True))
        row.update(id=next_id, adapter_id=adapter_id, version=1, weights_sha256=_sha("weights", next_id),
                   storage_path=f"adapters/{_sha('weights', next_id)}", created_at=created)
        version_rows.append(tuple(row[c] for c in VERSION_COLUMNS))
        tag_rows.extend([(next_id, "team", "ml"), (next_id, "lang", "en"), (next_id, "stage", "dev")])
        derived[next_id] = {**derived[recent[-1]], "tag_doc": '{"team": "ml", "lang": "en", "stage": "dev"}',
                            "search_text": _search_text(adapter_id, None, row["description"],
                                                        {"team": "ml", "lang": "en", "stage": "dev"}, n_adapters,
                                                        chain_adapter)}
        compat_rows.append((next_id, row["base_model_id"], "exact", "{}", created))
        edges.append((next_id, ids[(chain_adapter, chain_version)], "merge", 0.5, 0, '{"method": "linear"}'))
        edges.append((next_id, rnd.choice(recent), "merge", 0.5, 1, '{"method": "linear"}'))
    all_adapters = [*counts, *merge_adapters]
    adapter_rows = [(a, _adapter_name(a, n_adapters, chain_adapter), counts.get(a, 1), adapter_text.get(a), t0)
                    for a in all_adapters]

    alias_rows = []
    for a in range(1, n_adapters + 1):
        alias_rows.append((a, "production", ids[(a, rnd.randrange(PER_ADAPTER - 10, PER_ADAPTER + 1))], t0))
        if a % 2 == 0:
            alias_rows.append((a, "staging", ids[(a, PER_ADAPTER)], t0))
        if a % 10 == 0:
            alias_rows.append((a, "canary", ids[(a, PER_ADAPTER - 1)], t0))
    alias_rows.append((chain_adapter, "production", ids[(chain_adapter, CHAIN)], t0))

    metrics = metric_rows([row[0] for row in version_rows], t0, seed)  # metrics (issue 15)
    generated = time.perf_counter()
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        try:  # skip the per-row foreign-key triggers during the load (the rows are consistent by construction)
            conn.execute("SET session_replication_role = replica")
        except Exception:  # not a superuser: load with the checks
            conn.rollback()
        present = {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'adapter_versions' "
            "AND table_schema = current_schema()")}
        extra = [c for c in OPTIONAL_COLUMNS if c in present]
        n = {  # in the order of TABLES
            "base_models": _copy(conn, "base_models", [
                "id", "name", "revision", "revision_key", "local_path", "architecture", "model_type", "config_hash",
                "vocab_size", "module_shapes", "trust_remote_code", "created_at"], base_rows),
            "adapters": _copy(conn, "adapters", ["id", "name", "latest_version", "description", "created_at"],
                              adapter_rows),
            "adapter_versions": _copy(conn, "adapter_versions", [*VERSION_COLUMNS, *extra],
                                      (row + tuple(derived[row[0]][c] for c in extra) for row in version_rows)),
            "tags": _copy(conn, "tags", ["version_id", "key", "value"], tag_rows),
            "version_targets": _copy(conn, "version_targets", ["version_id", "module"], target_rows),
            "aliases": _copy(conn, "aliases", ["adapter_id", "name", "version_id", "updated_at", "protected"],
                             (row + (False,) for row in alias_rows)),  # protected: NOT NULL since migration 0008
            "lineage_edges": _copy(conn, "lineage_edges", ["child_id", "parent_id", "relation", "weight", "position",
                                                           "params"], edges),
            "compatibility": _copy(conn, "compatibility", ["version_id", "base_model_id", "level", "evidence",
                                                           "checked_at"], compat_rows),
        }
        n["version_metrics"] = _copy(conn, "version_metrics", METRIC_COLUMNS, metrics)  # metrics (issue 15)
        with conn.cursor() as cur:
            for table in ("base_models", "adapters", "adapter_versions", "tags", "aliases", "lineage_edges",
                          "compatibility"):
                cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
        conn.commit()
        copied = time.perf_counter()
        conn.autocommit = True
        conn.execute("RESET session_replication_role")
        # VACUUM also sets the visibility map (index-only scans), as autovacuum would have done by now.
        conn.execute(f"VACUUM ANALYZE {', '.join(n)}")
    finally:
        raw.close()
    return {
        "rows": n, "phases": (generated - started, copied - generated, time.perf_counter() - copied),
        "adapters": n_adapters, "chain": f"chain:{CHAIN // 2}", "chain_end": f"chain:{CHAIN}",
        "chain_ids": [ids[(chain_adapter, v)] for v in (CHAIN // 2, CHAIN)],
    }


def loaded_info(engine: Any) -> dict[str, Any]:
    """What ``load`` returned, read back from a schema that an earlier ``--keep`` run loaded."""
    with engine.connect() as conn:
        rows = {table: conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() for table in TABLES}
        adapters = conn.execute(text("SELECT count(*) FROM adapters WHERE name LIKE 'adapter-%'")).scalar_one()
        chain_ids = [conn.execute(text(
            "SELECT v.id FROM adapter_versions v JOIN adapters a ON a.id = v.adapter_id "
            "WHERE a.name = 'chain' AND v.version = :n"), {"n": number}).scalar_one() for number in (CHAIN // 2, CHAIN)]
    return {"rows": rows, "adapters": adapters, "chain": f"chain:{CHAIN // 2}", "chain_end": f"chain:{CHAIN}",
            "chain_ids": chain_ids}


# -- metrics (issue 15) ----------------------------------------------------------------------------------------

METRIC_COLUMNS = ["version_id", "name", "dataset", "value", "source", "job_id", "recorded_at", "recorded_by"]
TABLES.append("version_metrics")


def metric_rows(ids: Sequence[int], t0: datetime, seed: int) -> list[tuple[Any, ...]]:
    """``eval_loss`` (0.5-4.0) on 90% of the versions, ``accuracy`` on dataset ``glue/sst2`` on 30% (own seed)."""
    rnd = random.Random(seed + 15)
    rows: list[tuple[Any, ...]] = []
    for vid in ids:
        if rnd.random() < 0.9:
            rows.append((vid, "eval_loss", "", round(rnd.uniform(0.5, 4.0), 4), "train", None, t0, "bench"))
        if rnd.random() < 0.3:
            rows.append((vid, "accuracy", "glue/sst2", round(rnd.uniform(0.5, 0.99), 4), "user", None, t0, "bench"))
    return rows


def metric_sort_in_python(reg: Any) -> list[Any]:
    """Reference for ``sort="metric:eval_loss"``: every version's eval_loss fetched, sorted in Python (missing
    last, ties by id, newest first), the first 50 described."""
    from registry import models as m
    from registry import queries
    from registry.db import transaction

    v, mt = m.AdapterVersion, m.Metric
    with transaction(reg.service.sessions) as session:
        found = dict(session.execute(select(mt.version_id, mt.value).where(mt.name == "eval_loss", mt.dataset == "")
                                     ).all())
        ids = session.scalars(select(v.id).where(v.status == "ready")).all()
        order = sorted(ids, key=lambda i: (found.get(i, float("inf")), -i))[:50]
        rows = {r.id: r for r in session.scalars(select(v).where(v.id.in_(order)))}
        return queries.describe(session, [rows[i] for i in order], reg.store.root)


def metric_where_in_python(reg: Any, base_model: str) -> list[Any]:
    """Reference for ``where="eval_loss<2.5"`` on one base: the base's versions and every eval_loss fetched,
    filtered and ordered (newest first) in Python, the first 50 described."""
    from registry import models as m
    from registry import queries
    from registry.db import transaction

    v, mt = m.AdapterVersion, m.Metric
    with transaction(reg.service.sessions) as session:
        base = session.scalars(select(m.BaseModelRecord.id).where(m.BaseModelRecord.name == base_model)).first()
        found = dict(session.execute(select(mt.version_id, mt.value).where(mt.name == "eval_loss", mt.dataset == "")
                                     ).all())
        rows = session.execute(select(v.id, v.created_at).where(v.base_model_id == base, v.status == "ready")).all()
        hits = sorted((r for r in rows if found.get(r.id, float("inf")) < 2.5), key=lambda r: (r.created_at, r.id),
                      reverse=True)[:50]
        page = {r.id: r for r in session.scalars(select(v).where(v.id.in_([h.id for h in hits])))}
        return queries.describe(session, [page[h.id] for h in hits], reg.store.root)


def metric_timings(reg: Any, iters: int, few: int) -> list[tuple[str, list[float], list[float] | None, str, bool]]:
    """Sort by a metric (all versions) and filter on one (a base's versions), each against its Python reference;
    and the filter's search without the filter, for what the where adds."""
    rnd = random.Random(15)
    bases = [(BASES[rnd.randrange(len(BASES))][0],) for _ in range(iters)]
    first = reg.search(sort="metric:eval_loss", descending=False, limit=50)
    losses = [next(x.value for x in v.metrics if x.name == "eval_loss") for v in first]
    assert losses == sorted(losses) and [v.id for v in first] == [v.id for v in metric_sort_in_python(reg)]
    filtered = reg.search(where="eval_loss<2.5", base_model=bases[0][0], limit=50)
    assert [v.id for v in filtered] == [v.id for v in metric_where_in_python(reg, bases[0][0])], "where differs"
    t = run_interleaved({
        "sort": (lambda: reg.search(sort="metric:eval_loss", descending=False, limit=50), [()] * iters),
        "sort_ref": (lambda: metric_sort_in_python(reg), [()] * few),
        "where": (lambda b: reg.search(where="eval_loss<2.5", base_model=b, limit=50), bases),
        "where_ref": (lambda b: metric_where_in_python(reg, b), bases[:few]),
        "base": (lambda b: reg.search(base_model=b, limit=50), bases),
    })
    return [
        ("sort metric:eval_loss ascending (page of 50 + total)", t["sort"], t["sort_ref"], "sorted in Python", True),
        ("where eval_loss<2.5 + base (page of 50 + total)", t["where"], t["where_ref"], "filtered in Python", True),
        ("  the same search without the where (base only)", t["base"], None, "", False),
    ]


# -- references ------------------------------------------------------------------------------------------------


def search_row_by_row(reg: Any, base_model: str, tags: dict[str, str]) -> list[Any]:
    """Reference for search: the same page, each row described on its own (one set of queries per row)."""
    from registry import queries
    from registry.db import transaction

    with transaction(reg.service.sessions) as session:
        rows, _ = queries.search(session, queries.SearchFilters(base_model=base_model, tags=tags, limit=50))
        return [queries.describe(session, [row], reg.store.root)[0] for row in rows]


def search_by_ilike(reg: Any, query: str) -> tuple[list[Any], int]:
    """Reference for text search: what a catalog without a full-text index does, a substring scan of the text
    (``search_text ILIKE '%word%'`` for each word, ANDed), newest first: the same page of 50 and total."""
    from sqlalchemy import func

    from registry import models as m
    from registry import queries
    from registry.db import transaction

    v = m.AdapterVersion
    with transaction(reg.service.sessions) as session:
        where = [v.status == "ready", *(v.search_text.ilike(f"%{word}%") for word in query.split())]
        total = session.scalar(select(func.count()).select_from(v).where(*where))
        rows = session.scalars(select(v).where(*where).order_by(v.created_at.desc(), v.id.desc()).limit(50)).all()
        return queries.describe(session, list(rows), reg.store.root), int(total or 0)


def lineage_by_loop(reg: Any, version_id: int) -> tuple[int, int]:
    """Reference for lineage: walk the graph up and down with one query per node, then load the nodes."""
    from registry import models as m
    from registry.db import transaction

    e = m.LineageEdge
    with transaction(reg.service.sessions) as session:
        edges: dict[int, Any] = {}
        nodes = {version_id}
        for near, far in ((e.child_id, "parent_id"), (e.parent_id, "child_id")):
            frontier, seen = [version_id], {version_id}
            while frontier:
                for edge in session.scalars(select(e).where(near == frontier.pop())):
                    edges[edge.id] = edge
                    other = getattr(edge, far)
                    if other not in seen:
                        seen.add(other)
                        frontier.append(other)
            nodes |= seen
        rows = session.execute(
            select(m.AdapterVersion.id, m.Adapter.name, m.AdapterVersion.version).join(m.Adapter)
            .where(m.AdapterVersion.id.in_(nodes))
        ).all()
        return len(rows), len(edges)


# -- timing ----------------------------------------------------------------------------------------------------


def run_interleaved(ops: dict[str, tuple[Callable[..., Any], Sequence[tuple[Any, ...]]]], warmup: int = 3,
                    ) -> dict[str, list[float]]:
    """Time every operation round-robin (call i of each, then call i+1 of each...), so that a burst of load on
    the machine lands on all of them alike; ``ops`` maps a name to (function, argument tuples). Returns ms."""
    for fn, arguments in ops.values():
        for args in arguments[:warmup]:
            fn(*args)
    out: dict[str, list[float]] = {name: [] for name in ops}
    for i in range(max(len(arguments) for _, arguments in ops.values())):
        for name, (fn, arguments) in ops.items():
            if i < len(arguments):
                start = time.perf_counter()
                fn(*arguments[i])
                out[name].append((time.perf_counter() - start) * 1000)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", type=int, default=100_000, help="adapter versions to load (default 100000)")
    parser.add_argument("--iterations", type=int, default=200, help="timed calls per operation (default 200)")
    parser.add_argument("--keep", action="store_true", help="keep the schema afterwards (its name is printed)")
    parser.add_argument("--schema", help="time against this schema, loaded by an earlier --keep run (kept as is)")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 if a p50 misses the target")
    parser.add_argument("--url", default=PG, help=f"PostgreSQL database to create the schema in (default {PG})")
    args = parser.parse_args(argv)

    from registry import Registry
    from registry.db import make_engine, upgrade
    from registry.queries import SearchFilters

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below when killed too
    reuse = args.schema is not None
    schema = args.schema or f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(args.url, isolation_level="AUTOCOMMIT")
    if not reuse:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in args.url else "?"
    url = f"{args.url}{sep}options=-csearch_path%3D{schema}"
    failed = False
    try:
        engine = make_engine(url)
        if reuse:
            info = loaded_info(engine)
            print(f"schema {schema} (loaded by an earlier run):")
        else:
            start = time.perf_counter()
            upgrade(engine)
            migrated = time.perf_counter() - start
            start = time.perf_counter()
            info = load(engine, args.versions)
            loaded = time.perf_counter() - start
            gen, copy, vacuum = info["phases"]
            print(f"schema {schema}: migrated in {migrated:.1f}s; loaded in {loaded:.1f}s (generate {gen:.1f}s, "
                  f"COPY {copy:.1f}s, VACUUM ANALYZE {vacuum:.1f}s):")
        engine.dispose()
        n = info["rows"]
        print("  " + ", ".join(f"{count:,} {table}" for table, count in n.items()))

        rnd = random.Random(1)
        iters = args.iterations
        with tempfile.TemporaryDirectory() as home, Registry(url, home=home) as reg:
            searches = [(BASES[rnd.randrange(len(BASES))][0], {"team": rnd.choice(TEAMS), "lang": rnd.choice(LANGS)})
                        for _ in range(iters)]
            page = reg.search(base_model=searches[0][0], tags=searches[0][1])
            assert page and all(v.tags["team"] == searches[0][1]["team"] for v in page), "search found nothing"
            adapters = info["adapters"]
            shown = reg.get("adapter-1:2")
            assert shown.tags and shown.compatible and shown.parents is not None, "show: no tags or compatibility"
            mid, end = info["chain"], info["chain_end"]
            graph_mid, graph_end = reg.lineage(mid), reg.lineage(end)
            loop_mid = lineage_by_loop(reg, info["chain_ids"][0])
            assert loop_mid == (len(graph_mid.nodes), len(graph_mid.edges)), (loop_mid, len(graph_mid.nodes))

            texts = {  # query shapes: one common word, two words, a rare word (a style, a domain, RARE)
                "common": [(rnd.choice(STYLES),) for _ in range(iters)],
                "two": [(rnd.choice([d for d in DOMAINS if " " in d]),) for _ in range(iters)],
                "rare": [(RARE,)] * iters,
            }
            hits = {shape: reg.search_page(SearchFilters(query=args[0][0], limit=50)).total
                    for shape, args in texts.items()}
            assert all(hits.values()), f"text search found nothing: {hits}"

            few = max(5, iters // 10)  # the references are slow: fewer calls
            load_before = os.getloadavg()[0]
            t = run_interleaved({
                "search": (lambda b, tags: reg.search(base_model=b, tags=tags, limit=50), searches),
                "search_ref": (lambda b, tags: search_row_by_row(reg, b, tags), searches[:few]),
                "show": (reg.get, [(f"adapter-{rnd.randint(1, adapters)}:{rnd.randint(1, PER_ADAPTER)}",)
                                   for _ in range(iters)]),
                "alias": (reg.get, [(f"adapter-{rnd.randint(1, adapters)}@production",) for _ in range(iters)]),
                "latest": (reg.get, [(f"adapter-{rnd.randint(1, adapters)}",) for _ in range(iters)]),
                "lineage_mid": (reg.lineage, [(mid,)] * iters),
                "lineage_end": (reg.lineage, [(end,)] * iters),
                "loop_mid": (lambda: lineage_by_loop(reg, info["chain_ids"][0]), [()] * few),
                "loop_end": (lambda: lineage_by_loop(reg, info["chain_ids"][1]), [()] * few),
                **{f"text_{shape}": (lambda q: reg.search(query=q, limit=50), args) for shape, args in texts.items()},
                **{f"ilike_{shape}": (lambda q: search_by_ilike(reg, q), args[:few]) for shape, args in texts.items()},
            })
            metric_results = metric_timings(reg, iters, few)  # metrics (issue 15)
            load_after = os.getloadavg()[0]

        results = [
            ("search base + 2 tags (page of 50 + total)", t["search"], t["search_ref"], "rows described one by one",
             True),
            ("show name:N", t["show"], None, "", True),
            ("show name@alias", t["alias"], None, "", False),
            ("show name (latest)", t["latest"], None, "", False),
            (f"lineage mid of {CHAIN}-chain ({len(graph_mid.nodes)} nodes, {len(graph_mid.edges)} edges)",
             t["lineage_mid"], t["loop_mid"], "per-node query loop", True),
            (f"lineage end of {CHAIN}-chain ({len(graph_end.nodes)} nodes, {len(graph_end.edges)} edges)",
             t["lineage_end"], t["loop_end"], "per-node query loop", True),
            *((f"text search, {label} (~{hits[shape]:,} hits)", t[f"text_{shape}"],
               t[f"ilike_{shape}"], "ILIKE '%word%' scan", True)
              for shape, label in (("common", "one common word"), ("two", "two words"), ("rare", "a rare word"))),
        ]
        results += metric_results  # metrics (issue 15)
        print(f"\n{n['adapter_versions']:,} versions; {iters} calls each, round-robin (references: {few}); "
              f"load average {load_before:.1f} -> {load_after:.1f} on {os.cpu_count()} CPUs; target p50 < "
              f"{TARGET_MS:.0f} ms")
        print(f"{'operation':<58} {'p50 ms':>7} {'p95 ms':>7} {'mean':>7}  {'':4}  reference p50 (ratio)")
        for name, values, ref, ref_name, gated in results:
            p50 = pct(values, 0.5)
            verdict = ("PASS" if p50 < TARGET_MS else "FAIL") if gated else "info"
            failed |= gated and p50 >= TARGET_MS
            line = f"{name:<58} {p50:>7.2f} {pct(values, 0.95):>7.2f} {statistics.fmean(values):>7.2f}  {verdict}"
            if ref is not None:
                line += f"  {ref_name} {pct(ref, 0.5):.2f} ms ({pct(ref, 0.5) / p50:.1f}x)"
            elif gated:
                line += "  (no slower way to compare with)"
            print(line)
    finally:
        if args.keep and not reuse:
            print(f"kept schema {schema}; reuse it with --schema {schema}; drop it with: DROP SCHEMA {schema} CASCADE")
        elif not reuse:
            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
