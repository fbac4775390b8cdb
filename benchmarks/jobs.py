"""Job overhead: small merge jobs through Redis and one real Celery worker vs the runner called directly.

Prints p50/p95 submit-to-start latency (the job row's created_at -> started_at, both written by the
catalog) and throughput of both paths, and the overhead ratio. Target: p50 submit-to-start < 50 ms.
Needs the PostgreSQL and Redis of the test setup (ADREG_BENCH_PG_URL, ADREG_BENCH_REDIS_URL).

    python benchmarks/jobs.py --jobs 40
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import pct, scratch_schema

PG = os.environ.get("ADREG_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("ADREG_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=40)
    args = parser.parse_args()

    from workers.tinymodels import build_adapter, build_base, quiet_hf

    quiet_hf()
    work = Path(tempfile.mkdtemp(prefix="adreg-jobs-bench-"))
    with scratch_schema(PG) as url:
        import redis

        redis.Redis.from_url(REDIS).flushdb()
        env = {**os.environ, "ADREG_DATABASE_URL": url, "ADREG_BROKER_URL": REDIS, "ADREG_HOME": str(work / "home")}
        os.environ.update({k: env[k] for k in ("ADREG_DATABASE_URL", "ADREG_BROKER_URL", "ADREG_HOME")})
        worker = None
        try:
            from registry import Registry

            Registry.init(url)
            base = build_base(work / "base")
            reg = Registry()
            for i in range(2):
                reg.register(build_adapter(base, work / f"a{i}", seed=i + 1), name=f"in{i}", base_path=base)
            log = (work / "worker.log").open("w")
            worker = subprocess.Popen([sys.executable, "-m", "registry.cli", "worker", "--queues", "cpu", "-c", "1"],
                                      env=env, stdout=log, stderr=subprocess.STDOUT)
            while " ready." not in (work / "worker.log").read_text():
                time.sleep(0.1)
            reg.merge(["in0:1", "in1:1"], weights=[0.5, 0.5], method="cat", name="warmup").wait(timeout=120)

            def batch(registry, prefix: str) -> tuple[float, list]:  # type: ignore[no-untyped-def]
                start = time.perf_counter()
                jobs = [registry.merge(["in0:1", "in1:1"], weights=[0.5 + i / 1000, 0.5], method="cat",
                                       name=f"{prefix}{i}") for i in range(args.jobs)]
                for job in jobs:
                    job.wait(timeout=300, poll=0.01)
                return time.perf_counter() - start, [j.refresh() for j in jobs]

            latency = []
            for i in range(args.jobs):  # one at a time, on an idle worker: pure submit-to-start
                job = reg.merge(["in0:1", "in1:1"], weights=[0.25 + i / 1000, 0.5], method="cat", name=f"l{i}")
                job.wait(timeout=120, poll=0.005)
                latency.append((job.started_at - job.created_at).total_seconds() * 1000)
            celery_seconds, _ = batch(reg, "c")
            os.environ.pop("ADREG_BROKER_URL")
            direct = Registry()  # no broker: the local executor runs the same runner in this process
            direct.merge(["in0:1", "in1:1"], weights=[0.5, 0.5], method="cat", name="warmup-direct")
            direct_seconds, _ = batch(direct, "d")

            print(f"{args.jobs} small merge jobs (cat of two r=4 adapters on a tiny Llama)")
            p50, p95 = pct(latency, 0.5), pct(latency, 0.95)
            print(f"submit-to-start through Redis + 1 worker: p50 {p50:.1f} ms, p95 {p95:.1f} ms, "
                  f"mean {statistics.mean(latency):.1f} ms (target p50 < 50 ms: {'PASS' if p50 < 50 else 'FAIL'})")
            print(f"throughput: Celery {args.jobs / celery_seconds:.1f} jobs/s, direct runner "
                  f"{args.jobs / direct_seconds:.1f} jobs/s; overhead ratio {celery_seconds / direct_seconds:.2f}x")
        finally:
            if worker is not None:
                worker.terminate()
                worker.wait(20)


if __name__ == "__main__":
    main()
