"""Catalog queries at scale on PostgreSQL: 100,000 adapter versions with tags, aliases and lineage.

Loads rows in bulk (COPY-speed executemany through SQLAlchemy Core), then times through the SDK:
a tag + base-model search, `show` (resolve + describe with tags, aliases, parents, compatibility), and
lineage in the middle of a 200-deep chain, each against the per-node query loop it replaces where there is
one. Prints p50/p95 in ms. Target: every p50 under 20 ms.

    python benchmarks/catalog.py                 # 100,000 versions
    python benchmarks/catalog.py --versions 20000 --keep
"""

from __future__ import annotations

import argparse
import random
import time
import uuid
from datetime import datetime, timedelta, timezone

from sqlalchemy import create_engine, insert, select, text

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TEAMS, LANGS, STAGES = ["cx", "law", "ops", "ml", "sales"], ["en", "fr", "de", "es"], ["dev", "staging", "prod"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def timed(fn, args_list) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for args in args_list:
        start = time.perf_counter()
        fn(*args)
        out.append((time.perf_counter() - start) * 1000)
    return out


def load(engine, versions: int, chain: int) -> dict:  # type: ignore[no-untyped-def]
    from registry import models as m

    rnd = random.Random(0)
    now = datetime.now(timezone.utc)
    shapes = {f"model.layers.{i}.self_attn.{t}": {"kind": "linear", "in": 2048, "out": 2048}
              for i in range(2) for t in TARGETS}
    per_adapter = 50
    n_adapters = versions // per_adapter
    with engine.begin() as conn:
        conn.execute(insert(m.BaseModelRecord), [
            {"id": b + 1, "name": f"org/base-{b}", "revision": f"{b:040x}", "revision_key": f"{b:040x}",
             "architecture": "LlamaForCausalLM", "model_type": "llama", "config_hash": f"{b:064x}",
             "vocab_size": 32000, "module_shapes": shapes, "trust_remote_code": False, "created_at": now}
            for b in range(5)])
        conn.execute(insert(m.Adapter), [
            {"id": a + 1, "name": f"adapter-{a}", "latest_version": per_adapter, "created_at": now}
            for a in range(n_adapters)])
        rows, tags, targets = [], [], []
        vid = 0
        for a in range(n_adapters):
            base = rnd.randrange(5) + 1
            for v in range(per_adapter):
                vid += 1
                r = rnd.choice([4, 8, 16, 32])
                mods = rnd.sample(TARGETS, 3)
                rows.append({
                    "id": vid, "adapter_id": a + 1, "version": v + 1, "base_model_id": base, "status": "ready",
                    "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 2.0 * r, "use_rslora": False,
                    "use_dora": False, "fan_in_fan_out": False, "rank_pattern": {}, "alpha_pattern": {},
                    "target_modules": sorted(mods), "modules_to_save": [], "peft_version": "0.21.2",
                    "adapter_config": {"r": r, "target_modules": mods}, "weights_sha256": f"{vid:064x}",
                    "size_bytes": 1000 * r, "param_count": 500 * r, "dtypes": ["float32"],
                    "module_tensors": {}, "storage_path": f"adapters/{vid:064x}",
                    "created_at": now + timedelta(seconds=vid),
                })
                tags += [{"version_id": vid, "key": "team", "value": rnd.choice(TEAMS)},
                         {"version_id": vid, "key": "lang", "value": rnd.choice(LANGS)},
                         {"version_id": vid, "key": "stage", "value": rnd.choice(STAGES)}]
                targets += [{"version_id": vid, "module": t} for t in mods]
            if len(rows) >= 20000:
                conn.execute(insert(m.AdapterVersion), rows)
                conn.execute(insert(m.Tag), tags)
                conn.execute(insert(m.TargetModule), targets)
                rows, tags, targets = [], [], []
        if rows:
            conn.execute(insert(m.AdapterVersion), rows)
            conn.execute(insert(m.Tag), tags)
            conn.execute(insert(m.TargetModule), targets)
        # lineage: a 200-deep finetune chain (adapter-0..3 versions linked), plus merges with 2-3 parents
        chain_ids = list(range(1, chain + 1))
        edges = [{"child_id": c, "parent_id": p, "relation": "finetune", "position": 0, "params": {}}
                 for p, c in zip(chain_ids, chain_ids[1:], strict=False)]
        for child in range(chain + 1, versions, 7):
            for pos, parent in enumerate(rnd.sample(range(1, child), k=min(rnd.choice([2, 3]), child - 1))):
                edges.append({"child_id": child, "parent_id": parent, "relation": "merge", "weight": 0.5,
                              "position": pos, "params": {"method": "svd"}})
        conn.execute(insert(m.LineageEdge), edges)
        conn.execute(insert(m.Alias), [{"adapter_id": a + 1, "name": "production", "version_id": a * per_adapter + 1,
                                        "updated_at": now} for a in range(n_adapters)])
        conn.execute(insert(m.Compatibility), [{"version_id": v, "base_model_id": 1, "level": "exact", "evidence": {},
                                                "checked_at": now} for v in range(1, versions + 1, 3)])
        for table in ("base_models", "adapters", "adapter_versions", "tags", "lineage_edges", "aliases",
                      "compatibility"):
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"))
        conn.execute(text("ANALYZE"))
    return {"adapters": n_adapters, "edges": len(edges), "chain": chain_ids}


def lineage_by_loop(reg, version_id: int) -> int:  # type: ignore[no-untyped-def]
    """The reference: walk the graph one query per node (what the recursive CTE replaces)."""
    from registry import models as m

    seen, frontier = {version_id}, [version_id]
    with reg._sessions() as s:
        while frontier:
            node = frontier.pop()
            for (other,) in s.execute(select(m.LineageEdge.parent_id).where(m.LineageEdge.child_id == node)):
                if other not in seen:
                    seen.add(other)
                    frontier.append(other)
        frontier = [version_id]
        down = {version_id}
        while frontier:
            node = frontier.pop()
            for (other,) in s.execute(select(m.LineageEdge.child_id).where(m.LineageEdge.parent_id == node)):
                if other not in down:
                    down.add(other)
                    frontier.append(other)
    return len(seen | down)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", type=int, default=100_000)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--keep", action="store_true", help="keep the schema")
    args = parser.parse_args()
    from registry import Registry
    from registry.db import make_engine, upgrade

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{PG}?options=-csearch_path%3D{schema}"
    try:
        engine = make_engine(url)
        upgrade(engine)
        start = time.perf_counter()
        info = load(engine, args.versions, 200)
        print(f"loaded {args.versions:,} versions of {info['adapters']:,} adapters, {3 * args.versions:,} tags, "
              f"{info['edges']:,} lineage edges in {time.perf_counter() - start:.1f}s (schema {schema})")
        reg = Registry(url)
        rnd = random.Random(1)
        n = args.iterations
        searches = [(f"org/base-{rnd.randrange(5)}", rnd.choice(TEAMS), rnd.choice(LANGS)) for _ in range(n)]
        search = timed(lambda b, t, lang: reg.search(base_model=b, tags={"team": t, "lang": lang}, limit=50),
                       searches)
        shows = [(f"adapter-{rnd.randrange(info['adapters'])}:{rnd.randrange(1, 51)}",) for _ in range(n)]
        show = timed(reg.get, shows)
        aliases = [(f"adapter-{rnd.randrange(info['adapters'])}@production",) for _ in range(n)]
        alias = timed(reg.get, aliases)
        mid = info["chain"][100]
        chain_ref = f"adapter-{(mid - 1) // 50}:{(mid - 1) % 50 + 1}"
        graph = reg.lineage(chain_ref)
        lin = timed(reg.lineage, [(chain_ref,)] * n)
        loop = timed(lambda: lineage_by_loop(reg, mid), [()] * max(10, n // 10))
        rows = [("tag+base search (50 rows)", search), ("show name:N", show), ("show name@alias", alias),
                (f"lineage, 200-deep chain ({len(graph.nodes)} nodes)", lin)]
        print(f"{'operation':<44} {'p50 ms':>8} {'p95 ms':>8}  target p50 < 20 ms")
        for name, values in rows:
            p50 = pct(values, 0.5)
            print(f"{name:<44} {p50:>8.2f} {pct(values, 0.95):>8.2f}  {'PASS' if p50 < 20 else 'FAIL'}")
        print(f"lineage: recursive CTE {pct(lin, 0.5):.2f} ms vs per-node query loop {pct(loop, 0.5):.2f} ms "
              f"({pct(loop, 0.5) / pct(lin, 0.5):.1f}x faster)")
        reg.close()
    finally:
        if not args.keep:
            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


if __name__ == "__main__":
    main()
