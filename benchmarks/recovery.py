"""Recovery times of Celery jobs after three faults, with real worker processes (docs/jobs.md quotes them):

1. worker SIGKILL while it runs a job: until a second, idle worker has finished it;
2. Redis restarted without persistence while a job is queued (its message is lost): until the job has run;
3. the catalog database unreachable from the worker (a TCP proxy in front of PostgreSQL is cut for --outage
   seconds while a job is submitted): from the moment it is reachable again until the job has run.

Each is printed in seconds and against the setting that bounds it (the lease for 1, the queued grace for 2,
the retry backoff for 3). Needs the PostgreSQL and Redis of the test setup; fault 2 restarts the local Redis
(run it when nothing else uses Redis).

    python benchmarks/recovery.py --lease 10 --grace 10 --outage 20
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy.engine import make_url
from timing import scratch_schema

PG = os.environ.get("ADREG_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("ADREG_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    fh = log.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "registry.cli", "worker", "--queues", "cpu", "-c", "1"],
                            env=env, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while " ready." not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(log.read_text())
        time.sleep(0.1)
    return proc


def restart_redis() -> None:
    import redis

    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    with contextlib.suppress(redis.exceptions.ConnectionError):
        client.shutdown(nosave=True)
    subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379", "--save",
                    "", "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log"],
                   check=True)
    while True:
        with contextlib.suppress(redis.exceptions.ConnectionError):
            if client.ping():
                return
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lease", type=float, default=10, help="ADREG_JOB_LEASE_SECONDS")
    parser.add_argument("--grace", type=float, default=10, help="ADREG_QUEUED_GRACE_SECONDS")
    parser.add_argument("--outage", type=float, default=20, help="seconds the database stays unreachable")
    args = parser.parse_args()

    from workers.quiet import quiet_hf
    from workers.tinymodels import build_adapter, build_base

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tcp_proxy import TcpProxy  # the tests' forwarder

    quiet_hf()
    work = Path(tempfile.mkdtemp(prefix="adreg-recovery-"))
    with scratch_schema(PG) as url:
        env = {**os.environ, "ADREG_DATABASE_URL": url, "ADREG_BROKER_URL": REDIS, "ADREG_HOME": str(work / "home"),
               "ADREG_JOB_LEASE_SECONDS": str(args.lease), "ADREG_QUEUED_GRACE_SECONDS": str(args.grace),
               "ADREG_GPU_FALLBACK_TO_CPU": "1"}  # validation jobs on the cpu queue: one kind of worker
        os.environ.update({k: env[k] for k in ("ADREG_DATABASE_URL", "ADREG_BROKER_URL", "ADREG_HOME",
                                               "ADREG_JOB_LEASE_SECONDS", "ADREG_GPU_FALLBACK_TO_CPU")})
        workers: list[subprocess.Popen] = []
        parsed = make_url(url)
        proxy = TcpProxy((parsed.host or "127.0.0.1", parsed.port or 5432))
        try:
            from registry import Registry

            Registry.init(url)
            base = build_base(work / "base")
            reg = Registry()
            reg.register(build_adapter(base, work / "a", seed=1), name="a", base_path=base)
            reg.register(build_adapter(base, work / "b", seed=2), name="b", base_path=base)

            # 1. SIGKILL mid-job: a validation job (it spends seconds loading PEFT/transformers in a fresh worker).
            first = start_worker(env, work / "w1.log")
            second = None
            job = reg.validate("b:1")
            deadline = time.monotonic() + 120
            while job.refresh().status != "running":
                if time.monotonic() > deadline:
                    raise RuntimeError((work / "w1.log").read_text())
                time.sleep(0.05)
            second = start_worker(env, work / "w2.log")
            killed = time.monotonic()
            os.kill(first.pid, signal.SIGKILL)
            first.wait(10)
            job.wait(timeout=20 * args.lease)
            kill = time.monotonic() - killed
            print(f"1. worker SIGKILL mid-job -> finished by another worker: {kill:.1f} s", flush=True)
            second.terminate()
            second.wait(30)

            # 2. Redis restart with a queued job and no worker: the message is lost, the sweep re-sends it.
            import redis

            redis.Redis.from_url(REDIS).flushdb()
            job = reg.merge(["a:1", "b:1"], weights=[0.5, 0.5], method="cat", name="after-redis")
            restart_redis()
            restarted = time.monotonic()
            workers.append(start_worker(env, work / "w3.log"))
            job.wait(timeout=20 * args.grace + 120)
            redis_s = time.monotonic() - restarted
            print(f"2. Redis restart -> job done: {redis_s:.1f} s", flush=True)
            workers[-1].terminate()
            workers[-1].wait(30)

            # 3. The worker's database unreachable while a job is submitted; measured from when it is back.
            proxy.start()
            via = parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
            workers.append(start_worker({**env, "ADREG_DATABASE_URL": via, "ADREG_QUEUED_GRACE_SECONDS": "3600"},
                                        work / "w4.log"))
            proxy.cut()
            job = reg.merge(["a:1", "b:1"], weights=[0.3, 0.7], method="cat", name="after-db")
            time.sleep(args.outage)
            assert job.refresh().status == "queued"
            proxy.start()
            back = time.monotonic()
            job.wait(timeout=180)
            db_s = time.monotonic() - back

            print(f"worker SIGKILL mid-job -> finished by another worker: {kill:.1f} s "
                  f"({kill / args.lease:.2f} x the {args.lease:g} s lease)")
            print(f"Redis restart (queued message lost) -> job done: {redis_s:.1f} s "
                  f"({redis_s / args.grace:.2f} x the {args.grace:g} s queued grace)")
            print(f"database unreachable for {args.outage:g} s -> job done {db_s:.1f} s after it is back "
                  "(retry backoff 1, 2, 4 ... 60 s)")
        finally:
            proxy.cut()
            for proc in workers:
                if proc.poll() is None:
                    proc.kill()


if __name__ == "__main__":
    main()
