"""The HTTP API (``adreg serve``) against the embedded registry: latency, file transfer, concurrent load.

Starts a real ``adreg serve`` process (a subprocess on a free port of 127.0.0.1, its admin token from
``adreg init --admin bench``) over a throw-away PostgreSQL schema loaded by ``benchmarks/catalog.py``'s bulk
loader, and measures, in one run:

1. ``show`` (``get("name:N")``), ``search`` (base model + 2 tags, a page of 50 with the total) and ``lineage``
   (middle of a 200-deep chain) through HTTP (``RemoteRegistry``, one keep-alive client) vs in-process (an
   embedded ``Registry`` on the same catalog), round-robin; p50/p99 per call, and the HTTP overhead at p50
   (target: at most 5 ms). An extra row times the bare HTTP exchange (httpx + ``json()``, no SDK decoding).
2. Upload and download of a ~500 MB LoRA adapter (real safetensors, lora_A/lora_B for every projection of a
   config-only Llama base; a valid adapter_config.json) on loopback: ``RemoteRegistry.register`` (which hashes
   and scans the file, uploads it; the server hashes it as it arrives, then checks and registers it) and
   ``RemoteRegistry.download`` (verified by sha256) vs ``shutil.copyfile`` of the same file, whose speed is
   the reference (target: at least half of it). Each upload trial changes one value of the file, so the
   server never holds its sha256 already.
3. 32 concurrent clients for 60 s, each a thread with its own keep-alive httpx client (spread over a few
   processes), looping over get / search: requests, errors (must be 0), p50/p99 latency, requests/s.
4. The web pages (issue 16), signed in through the sign-in form (a session cookie): ``GET /`` (the adapters page:
   first page, a text search, base + tag filters), ``GET /v/{ref}`` (the version page) and ``GET /lineage/{ref}``
   (the lineage page of the middle of the 200-deep chain), one keep-alive client, round-robin; p50/p99 of the round
   trip on loopback (the server's time plus ~1 ms: ``/healthz`` is timed as the floor) and the page's size. Target:
   the version and lineage pages under 300 ms. A route the server does not have is printed as missing, not timed.

Prints the machine (CPU count, load average); numbers are from one run. The schema, the server process and
every file are removed at the end, also on failure.

    python benchmarks/api.py            # 100,000 versions, 500 MB adapter, 32 clients x 60 s
    python benchmarks/api.py --quick    # 10,000 versions, 100 MB adapter, 32 clients x 10 s
    python benchmarks/api.py --skip latency transfer load    # only the web pages, at 100,000 versions
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from catalog import BASES, LANGS, PER_ADAPTER, STYLES, TEAMS, load, run_interleaved
from timing import pct, scratch_schema

PG = os.environ.get("ADREG_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
OVERHEAD_TARGET_MS = 5.0
TRANSFER_TARGET = 0.5  # of shutil.copyfile's speed
PAGE_TARGET_MS = 300.0  # the version and lineage pages (issue 16)
MB = 1_000_000
# The big adapter: r=128 LoRA on every projection of a Llama with hidden 2048 / intermediate 5632 (float32):
# 20.2 MB per layer; the layer count is chosen to reach the requested size.
HIDDEN, INTERMEDIATE, RANK = 2048, 5632, 128
ATTN, MLP = ["q_proj", "k_proj", "v_proj", "o_proj"], ["gate_proj", "up_proj", "down_proj"]


# -- the server ------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def adreg_server(db_url: str, home: Path) -> Iterator[tuple[str, str]]:
    """``adreg init --admin bench`` then ``adreg serve`` on a free port; yields (url, admin token); stopped after."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADREG_")}
    env.update(ADREG_DATABASE_URL=db_url, ADREG_HOME=str(home), ADREG_CONFIG_DIR=str(home / "config"))
    adreg = [sys.executable, "-m", "registry.cli"]
    init = subprocess.run([*adreg, "init", "--admin", "bench", "--json"], env=env, capture_output=True, text=True)
    if init.returncode:
        raise RuntimeError(f"adreg init failed:\n{init.stdout}{init.stderr}")
    token = json.loads(init.stdout)["token"]
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (home / "serve.log").open("w")
    proc = subprocess.Popen([*adreg, "serve", "--port", str(port), "--log-level", "warning"], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"adreg serve exited early:\n{(home / 'serve.log').read_text()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"adreg serve not up after 60 s:\n{(home / 'serve.log').read_text()}")
            time.sleep(0.1)
        yield url, token
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()


# -- 1. latency ------------------------------------------------------------------------------------------------


def latency(remote: Any, local: Any, info: dict[str, Any], iterations: int) -> list[tuple[str, dict]]:
    """show / search / lineage through both registries, round-robin; plus the bare HTTP exchange of each."""
    from pydantic_core import to_jsonable_python

    from registry.queries import SearchFilters

    rnd = random.Random(1)
    adapters = info["adapters"]
    shows = [(f"adapter-{rnd.randint(1, adapters)}:{rnd.randint(1, PER_ADAPTER)}",) for _ in range(iterations)]
    searches = [(BASES[rnd.randrange(len(BASES))][0], {"team": rnd.choice(TEAMS), "lang": rnd.choice(LANGS)})
                for _ in range(iterations)]
    mid = [(info["chain"],)] * iterations
    client = remote.client  # the same keep-alive connection

    def raw_get(path: str) -> Any:
        answer = client.get(path)
        answer.raise_for_status()
        return answer.json()

    def raw_search(base: str, tags: dict[str, str]) -> Any:
        body = {"filters": to_jsonable_python(SearchFilters(base_model=base, tags=tags, limit=50))}
        answer = client.post("/v1/search", json=body)
        answer.raise_for_status()
        return answer.json()

    # Same answers both ways, before timing anything.
    assert remote.get(shows[0][0]) == local.get(shows[0][0]), "show differs between HTTP and in-process"
    s_remote = remote.search(base_model=searches[0][0], tags=searches[0][1])
    assert s_remote and s_remote == local.search(base_model=searches[0][0], tags=searches[0][1]), "search differs"
    assert remote.lineage(mid[0][0]) == local.lineage(mid[0][0]), "lineage differs"
    nodes = len(local.lineage(mid[0][0]).nodes)

    def search_with(reg: Any) -> Callable[[str, dict[str, str]], Any]:
        return lambda base, tags: reg.search(base_model=base, tags=tags, limit=50)

    t = run_interleaved({
        "show http": (remote.get, shows), "show local": (local.get, shows),
        "show raw": (lambda ref: raw_get(f"/v1/versions/{ref}"), shows),
        "search http": (search_with(remote), searches), "search local": (search_with(local), searches),
        "search raw": (raw_search, searches),
        "lineage http": (remote.lineage, mid), "lineage local": (local.lineage, mid),
        "lineage raw": (lambda ref: raw_get(f"/v1/versions/{ref}/lineage"), mid),
    }, warmup=5)
    return [
        ("show name:N", {k: t[f"show {k}"] for k in ("http", "local", "raw")}),
        ("search base + 2 tags (page of 50)", {k: t[f"search {k}"] for k in ("http", "local", "raw")}),
        (f"lineage mid of 200-chain ({nodes} nodes)", {k: t[f"lineage {k}"] for k in ("http", "local", "raw")}),
    ]


# -- 2. transfer -----------------------------------------------------------------------------------------------


def build_big_adapter(work: Path, size_mb: int) -> tuple[Path, Path, Path]:
    """A config-only Llama base (the registry reads shapes from config.json on the meta device), a LoRA adapter
    on every projection of it, about ``size_mb`` MB of float32 safetensors, and a one-layer adapter of the same
    kind (to warm both ends up); returns (base, adapter, small adapter)."""
    from transformers import LlamaConfig

    per_layer = 4 * RANK * (len(ATTN) * 2 * HIDDEN + len(MLP) * (HIDDEN + INTERMEDIATE))
    layers = max(1, math.ceil(size_mb * MB / per_layer))
    base = work / "base"
    LlamaConfig(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=layers,
                num_attention_heads=16, num_key_value_heads=16, vocab_size=32000,
                architectures=["LlamaForCausalLM"]).save_pretrained(base)
    return base, _write_adapter(work / "big-adapter", base, layers), _write_adapter(work / "small-adapter", base, 1)


def _write_adapter(adapter: Path, base: Path, layers: int) -> Path:
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(layers)
    tensors = {}
    for layer in range(layers):
        for group, names in (("self_attn", ATTN), ("mlp", MLP)):
            for name in names:
                fan_in = INTERMEDIATE if name == "down_proj" else HIDDEN
                fan_out = INTERMEDIATE if name in ("gate_proj", "up_proj") else HIDDEN
                key = f"base_model.model.model.layers.{layer}.{group}.{name}"
                tensors[f"{key}.lora_A.weight"] = rng.standard_normal((RANK, fan_in), dtype=np.float32) * 0.01
                tensors[f"{key}.lora_B.weight"] = rng.standard_normal((fan_out, RANK), dtype=np.float32) * 0.01
    adapter.mkdir()
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": 2 * RANK, "lora_dropout": 0.0,
        "target_modules": ATTN + MLP, "base_model_name_or_path": str(base), "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "peft_version": "0.17.1",
    }, indent=2))
    return adapter


def _change_one_value(weights: Path, trial: int) -> None:
    """Overwrite the file's last float32 (a lora_B value) in place: new bytes, new sha256, same shapes."""
    with weights.open("r+b") as fh:
        fh.seek(-4, os.SEEK_END)
        fh.write(struct.pack("<f", 1e-3 * (trial + 1)))


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def transfer(remote: Any, work: Path, size_mb: int, trials: int) -> dict[str, Any]:
    from registry.inspect import inspect_adapter, sha256_file

    started = time.perf_counter()
    base, adapter, small = build_big_adapter(work, size_mb)
    weights = adapter / "adapter_model.safetensors"
    size = weights.stat().st_size
    built = time.perf_counter() - started
    sha256_file(weights)  # into the page cache, for every reader alike
    remote.register(small, name="warmup", base_path=base)  # first-call costs (imports, base description) on both ends
    remote.download("warmup:1", work / "download-warmup")

    def copy(sync: bool) -> None:
        target = work / "copy.safetensors"
        shutil.copyfile(weights, target)
        if sync:
            with target.open("rb") as fh:
                os.fsync(fh.fileno())
        target.unlink()

    out: dict[str, Any] = {"size": size, "built": built, "copy": [], "copy_fsync": [], "sha256": [], "upload": [],
                           "download": []}
    for trial in range(trials):  # interleaved, so that a burst of load falls on each alike
        out["copy"].append(_timed(lambda: copy(False)))
        out["copy_fsync"].append(_timed(lambda: copy(True)))
        out["sha256"].append(_timed(lambda: sha256_file(weights)))
        _change_one_value(weights, trial)
        out["upload"].append(_timed(lambda: remote.register(adapter, name="big", base_path=base)))
        target = work / f"download-{trial}"
        out["download"].append(_timed(lambda t=trial, at=target: remote.download(f"big:{t + 1}", at)))
        shutil.rmtree(target)

    # Where an upload's time goes (one more version): the client's inspect (hash + NaN scan), the PUT (the
    # server hashes and fsyncs as it receives), the POST (the server inspects the stored blob and registers).
    _change_one_value(weights, trials)
    phases: dict[str, float] = {}
    start = time.perf_counter()
    manifest = inspect_adapter(adapter)
    phases["client inspect (hash + NaN scan)"] = time.perf_counter() - start
    phases["PUT /v1/blobs (server hashes + fsync)"] = _timed(lambda: remote.upload(weights, manifest.weights_sha256))
    phases["register with the blob present (client inspect + POST)"] = _timed(
        lambda: remote.register(adapter, name="big", base_path=base))
    out["phases"] = phases
    return out


# -- 3. concurrent load ----------------------------------------------------------------------------------------


def _client_process(url: str, token: str, threads: int, seconds: float, requests: list[tuple[str, str, Any]],
                    seed: int) -> tuple[list[float], int, list[str], float]:
    """``threads`` clients, each its own keep-alive httpx client, looping over ``requests`` until the deadline;
    returns (latencies in ms, errors, a few error messages, seconds spent)."""
    import httpx

    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    messages: list[str] = []
    barrier = threading.Barrier(threads + 1)

    def client(i: int) -> None:
        rnd = random.Random(seed * 1000 + i)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
            http.get("/healthz")  # connect before the clock starts
            barrier.wait()
            deadline = time.perf_counter() + seconds
            mine = latencies[i]
            while time.perf_counter() < deadline:
                method, path, body = requests[rnd.randrange(len(requests))]
                start = time.perf_counter()
                try:
                    answer = http.request(method, path, json=body)
                    if answer.status_code != 200:
                        raise RuntimeError(f"HTTP {answer.status_code}: {answer.text[:200]}")
                    answer.json()
                except Exception as exc:  # counted and shown, never fatal
                    errors[i] += 1
                    if len(messages) < 5:
                        messages.append(f"{method} {path}: {type(exc).__name__}: {exc}")
                    continue
                mine.append((time.perf_counter() - start) * 1000)

    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    start = time.perf_counter()
    for w in workers:
        w.join()
    return [x for per in latencies for x in per], sum(errors), messages, time.perf_counter() - start


def load_test(url: str, token: str, info: dict[str, Any], clients: int, processes: int, seconds: float,
              ) -> dict[str, Any]:
    """``clients`` concurrent clients (threads spread over ``processes`` processes) for ``seconds``."""
    from pydantic_core import to_jsonable_python

    from registry.queries import SearchFilters

    rnd = random.Random(2)
    adapters = info["adapters"]
    requests: list[tuple[str, str, Any]] = []
    for _ in range(500):
        requests.append(("GET", f"/v1/versions/adapter-{rnd.randint(1, adapters)}:{rnd.randint(1, PER_ADAPTER)}",
                         None))
        filters = SearchFilters(base_model=rnd.choice(BASES)[0],
                                tags={"team": rnd.choice(TEAMS), "lang": rnd.choice(LANGS)}, limit=50)
        requests.append(("POST", "/v1/search", {"filters": to_jsonable_python(filters)}))
    processes = max(1, min(processes, clients))
    split = [clients // processes + (1 if p < clients % processes else 0) for p in range(processes)]
    ctx = multiprocessing.get_context("spawn")
    load_before = os.getloadavg()[0]
    with ctx.Pool(processes) as pool:
        results = pool.starmap(_client_process, [(url, token, n, seconds, requests, p) for p, n in enumerate(split)])
    latencies = [x for r in results for x in r[0]]
    return {"clients": clients, "processes": processes, "latencies": latencies, "errors": sum(r[1] for r in results),
            "messages": [m for r in results for m in r[2]][:5], "seconds": max(r[3] for r in results),
            "load": (load_before, os.getloadavg()[0])}


# -- 4. web pages ----------------------------------------------------------------------------------------------


def _page_state(http: Any, path: str) -> str:
    """``ok`` for an HTML page; ``missing`` when no route answers (FastAPI's own 404, which is not a page); else
    what went wrong (a page that answers with an error is not timed as a pass)."""
    answer = http.get(path)
    html = answer.headers.get("content-type", "").startswith("text/html")
    if answer.status_code == 200 and html:
        return "ok"
    if answer.status_code == 404 and not html:
        return "missing"
    return f"HTTP {answer.status_code} ({answer.headers.get('content-type', '?')})"


def web_pages(url: str, token: str, info: dict[str, Any], iterations: int) -> dict[str, Any]:
    """Time the web pages through one keep-alive client holding a session cookie; routes that are not there are
    reported as missing."""
    import httpx

    rnd = random.Random(3)
    adapters = info["adapters"]
    pages: dict[str, tuple[str, list[str], bool]] = {  # label -> (route, paths, gated by PAGE_TARGET_MS)
        "GET /healthz (the HTTP floor, no page)": ("/healthz", ["/healthz"] * iterations, False),
        "GET / adapters, first page": ("/", ["/"] * iterations, False),
        "GET /?q=WORD text search (~1/8 of versions)": (
            "/", [f"/?q={rnd.choice(STYLES)}" for _ in range(iterations)], False),
        "GET /?base=B&tag=team=T,lang=L filters": (
            "/", [f"/?base={rnd.choice(BASES)[0]}&tag=team%3D{rnd.choice(TEAMS)},lang%3D{rnd.choice(LANGS)}"
                  for _ in range(iterations)], False),
        "GET /v/NAME:N version page": (
            "/v/{ref}", [f"/v/adapter-{rnd.randint(1, adapters)}:{rnd.randint(1, PER_ADAPTER)}"
                         for _ in range(iterations)], True),
        f"GET /v/{info['chain']} version page (200-chain)": ("/v/{ref}", [f"/v/{info['chain']}"] * iterations, True),
        f"GET /lineage/{info['chain']} lineage page (200-chain)": (
            "/lineage/{ref}", [f"/lineage/{info['chain']}"] * iterations, True),
    }
    out: dict[str, Any] = {"iterations": iterations, "rows": []}
    with httpx.Client(base_url=url, follow_redirects=False, timeout=120) as http:
        signed = http.post("/login", data={"token": token, "next": "/"}, headers={"Origin": url})
        if signed.status_code != 303 or "adreg_session" not in http.cookies:
            raise RuntimeError(f"sign-in through the form failed: HTTP {signed.status_code} {signed.text[:300]}")
        sizes: dict[str, int] = {}
        errors: dict[str, int] = {}
        ops: dict[str, tuple[Callable[..., Any], list[tuple[str]]]] = {}
        states: dict[str, str] = {}
        for label, (_route, paths, _gated) in pages.items():
            states[label] = "ok" if paths[0] == "/healthz" else _page_state(http, paths[0])
            if states[label] != "ok":
                continue

            def fetch(path: str, label: str = label) -> None:
                answer = http.get(path)
                sizes[label] = len(answer.content)
                if answer.status_code != 200:
                    errors[label] = errors.get(label, 0) + 1

            ops[label] = (fetch, [(p,) for p in paths])
        load_before = os.getloadavg()[0]
        times = run_interleaved(ops, warmup=3) if ops else {}
        out["load"] = (load_before, os.getloadavg()[0])
        for label, (route, paths, gated) in pages.items():
            found = re.search(r'class="count">([\d,]+) version', http.get(paths[0]).text) if route == "/" else None
            out["rows"].append({"label": label, "route": route, "state": states[label], "gated": gated,
                                "times": times.get(label, []), "bytes": sizes.get(label, 0),
                                "errors": errors.get(label, 0), "note": f"{found[1]} found" if found else ""})
    return out


def report_web(r: dict[str, Any]) -> None:
    load = r.get("load", (0.0, 0.0))
    print(f"4. web pages, ms per page ({r['iterations']} calls each, round-robin, one keep-alive client signed in "
          f"with the session cookie; the round trip on loopback = server time + the /healthz floor); load average "
          f"{load[0]:.1f} -> {load[1]:.1f}")
    print(f"{'page':<58} {'p50':>8} {'p99':>8} {'KB':>7}  target < {PAGE_TARGET_MS:.0f} ms (version, lineage)")
    for row in r["rows"]:
        if row["state"] != "ok":
            verdict = "missing (no such route on this server)" if row["state"] == "missing" else row["state"]
            print(f"{row['label']:<58} {'-':>8} {'-':>8} {'-':>7}  {verdict}")
            continue
        p50, p99 = pct(row["times"], 0.5), pct(row["times"], 0.99)
        verdict = ""
        if row["gated"]:
            verdict = "PASS" if p50 < PAGE_TARGET_MS and not row["errors"] else "FAIL"
        if row["errors"]:
            verdict += f" ({row['errors']} answers were not 200)"
        verdict = f"{verdict} {row['note']}".strip()
        print(f"{row['label']:<58} {p50:>8.1f} {p99:>8.1f} {row['bytes'] / 1000:>7.1f}  {verdict}")
    print()


# -- main ------------------------------------------------------------------------------------------------------


def _rate(size: int, seconds: Sequence[float]) -> float:
    return size / statistics.median(seconds) / MB


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="10,000 versions, 100 calls, a 100 MB adapter, 10 s of load (a smoke run)")
    parser.add_argument("--versions", type=int, help="catalog versions (default 100000; --quick 10000)")
    parser.add_argument("--iterations", type=int, help="timed calls per operation (default 300; --quick 100)")
    parser.add_argument("--adapter-mb", type=int, help="size of the transferred adapter (default 500; --quick 100)")
    parser.add_argument("--trials", type=int, default=3, help="upload/download/copy repetitions (default 3)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--seconds", type=float, help="duration of the load (default 60; --quick 10)")
    parser.add_argument("--client-processes", type=int, default=min(4, os.cpu_count() or 1),
                        help="processes the client threads are spread over (default: CPUs, at most 4)")
    parser.add_argument("--web-iterations", type=int, help="timed calls per web page (default 100; --quick 30)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["latency", "transfer", "load", "web"],
                        help="parts to leave out")
    parser.add_argument("--url", default=PG, help=f"PostgreSQL database for the scratch schema (default {PG})")
    args = parser.parse_args(argv)
    versions = args.versions or (10_000 if args.quick else 100_000)
    iterations = args.iterations or (100 if args.quick else 300)
    adapter_mb = args.adapter_mb or (100 if args.quick else 500)
    seconds = args.seconds or (10.0 if args.quick else 60.0)
    web_iterations = args.web_iterations or (30 if args.quick else 100)

    from registry import Registry
    from registry.db import make_engine, upgrade
    from registry.remote import RemoteRegistry

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below when killed too
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; Python {sys.version.split()[0]}; "
          "server, PostgreSQL and clients share it; numbers are from one run")
    work = Path(tempfile.mkdtemp(prefix="adreg-api-bench-"))
    try:
        with scratch_schema(args.url) as db_url:
            engine = make_engine(db_url)
            start = time.perf_counter()
            upgrade(engine)
            info = load(engine, versions)
            engine.dispose()
            print(f"catalog: {info['rows']['adapter_versions']:,} versions loaded in "
                  f"{time.perf_counter() - start:.1f}s")
            home = work / "home"
            home.mkdir()
            with adreg_server(db_url, home) as (url, token), \
                    RemoteRegistry(url, token=token) as remote, Registry(db_url, home=home) as local:
                print(f"server: adreg serve at {url} (one uvicorn process)\n")
                if "latency" not in args.skip:
                    before = os.getloadavg()[0]
                    rows = latency(remote, local, info, iterations)
                    report_latency(rows, iterations, (before, os.getloadavg()[0]))
                if "transfer" not in args.skip:
                    before = os.getloadavg()[0]
                    result = transfer(remote, work, adapter_mb, args.trials)
                    report_transfer(result, args.trials, (before, os.getloadavg()[0]))
                if "load" not in args.skip:
                    report_load(load_test(url, token, info, args.clients, args.client_processes, seconds), seconds)
                if "web" not in args.skip:
                    report_web(web_pages(url, token, info, web_iterations))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report_latency(rows: list[tuple[str, dict[str, list[float]]]], iterations: int, load: tuple[float, float],
                   ) -> None:
    print(f"1. latency per call, ms ({iterations} calls each, round-robin; http = RemoteRegistry on one keep-alive "
          "connection, raw = the same request with bare httpx + json(), local = embedded Registry); load average "
          f"{load[0]:.1f} -> {load[1]:.1f}")
    print(f"{'operation':<40} {'http p50':>9} {'http p99':>9} {'raw p50':>8} {'local p50':>10} {'local p99':>10} "
          f"{'overhead p50':>13}  target <= {OVERHEAD_TARGET_MS:.0f} ms")
    for name, t in rows:
        overhead = pct(t["http"], 0.5) - pct(t["local"], 0.5)
        verdict = "PASS" if overhead <= OVERHEAD_TARGET_MS else "FAIL"
        print(f"{name:<40} {pct(t['http'], 0.5):>9.2f} {pct(t['http'], 0.99):>9.2f} {pct(t['raw'], 0.5):>8.2f} "
              f"{pct(t['local'], 0.5):>10.2f} {pct(t['local'], 0.99):>10.2f} {overhead:>13.2f}  {verdict} "
              f"(http/local {pct(t['http'], 0.5) / pct(t['local'], 0.5):.2f}x)")
    print()


def report_transfer(r: dict[str, Any], trials: int, load: tuple[float, float]) -> None:
    size = r["size"]
    copy = _rate(size, r["copy"])
    print(f"2. transfer of a {size / MB:.0f} MB adapter ({size:,} bytes, built in {r['built']:.1f}s) on loopback; "
          f"median of {trials}, MB/s = 10^6 bytes/s; load average {load[0]:.1f} -> {load[1]:.1f}")
    print(f"{'path':<58} {'MB/s':>8} {'s':>7}  vs copyfile (target >= {TRANSFER_TARGET:.2f})")
    rows = [("shutil.copyfile (page cache; the reference)", r["copy"], None),
            ("shutil.copyfile + fsync (info)", r["copy_fsync"], None),
            ("sha256 of the file, one pass (info)", r["sha256"], None),
            ("RemoteRegistry.register (upload)", r["upload"], True),
            ("RemoteRegistry.download", r["download"], True)]
    for name, times, gated in rows:
        rate = _rate(size, times)
        line = f"{name:<58} {rate:>8.0f} {statistics.median(times):>7.2f}  {rate / copy:.2f}x"
        if gated:
            line += "  PASS" if rate / copy >= TRANSFER_TARGET else "  FAIL"
        print(line)
    print("   one upload, by phase:")
    for name, seconds in r["phases"].items():
        print(f"   {name:<55} {size / seconds / MB:>8.0f} {seconds:>7.2f}")
    print()


def report_load(r: dict[str, Any], seconds: float) -> None:
    lat = r["latencies"]
    total = len(lat) + r["errors"]
    print(f"3. {r['clients']} concurrent clients ({r['processes']} processes, a keep-alive httpx client per thread) "
          f"for {seconds:g} s, random get / search; load average {r['load'][0]:.1f} -> {r['load'][1]:.1f}")
    if lat:
        print(f"   requests {total:,}, errors {r['errors']} ({'PASS' if r['errors'] == 0 else 'FAIL'}), "
              f"{total / r['seconds']:.0f} requests/s, latency p50 {pct(lat, 0.5):.1f} ms, "
              f"p99 {pct(lat, 0.99):.1f} ms, max {max(lat):.1f} ms")
    else:
        print(f"   no request succeeded: {r['errors']} errors")
    for message in r["messages"]:
        print(f"   error: {message}")


if __name__ == "__main__":
    sys.exit(main())
