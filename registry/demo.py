"""``adreg demo``: a real end-to-end run on the embedded default, with nothing to download.

Builds a tiny Llama base and three LoRA adapters with PEFT, registers them, teaches two of them a task each (a
few training steps, a held-out split recorded), merges those two by two methods as catalog jobs, validates each
result at run time with PEFT on the real (tiny) base and measures how much of each parent's skill it keeps
(retention, on the parents' held-out data), continues training the third adapter for a few steps, and returns
what happened so the CLI can show it.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from registry.errors import RegistryError
from registry.sdk import Registry


@dataclass
class DemoReport:
    workdir: str
    catalog: str
    artifacts: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    lineage: dict[str, Any] = field(default_factory=dict)
    #: How to look around in a browser afterwards (the first `adreg serve` prints a sign-in link).
    browse: dict[str, str] = field(default_factory=lambda: {"command": "adreg serve", "url": "http://127.0.0.1:8080/"})

    def to_dict(self) -> dict[str, Any]:
        return {"workdir": self.workdir, "catalog": self.catalog, "artifacts": self.artifacts,
                "steps": self.steps, "lineage": self.lineage, "browse": self.browse}


def retention_line(measured: dict[str, Any]) -> str:
    """``demo-tone:2 0.91, demo-legal:2 0.45 (mean 0.68, min 0.45)`` from a validation's retention section."""
    def number(x: Any) -> str:
        return f"{x:.2f}" if isinstance(x, (int, float)) else "n/a"

    parents = ", ".join(f"{p['parent']} {number(p.get('retention'))}" for p in measured.get("parents", []))
    return f"{parents} (mean {number(measured.get('mean'))}, min {number(measured.get('min'))})"


def run_demo(reg: Registry, say: Callable[[str], None] = lambda _msg: None) -> DemoReport:
    """Build, register and (when available) merge demo adapters in ``reg``; return a report."""
    from workers.tinymodels import LLAMA_TARGETS, build_adapter, build_base, quiet_hf

    quiet_hf()
    work = reg.settings.home / "demo"
    shutil.rmtree(work, ignore_errors=True)
    report = DemoReport(
        workdir=str(work),
        catalog=reg.engine.url.render_as_string(hide_password=True),
        artifacts=str(reg.store.root),
    )

    def step(what: str, fn: Callable[[], Any]) -> Any:
        say(what)
        start = time.perf_counter()
        result = fn()
        report.steps.append({"step": what, "seconds": round(time.perf_counter() - start, 3), "result": ""})
        return result

    base = step("build a tiny Llama base (2 layers, hidden 64)", lambda: build_base(work / "tiny-llama"))
    specs = {
        "demo-tone": dict(r=4, alpha=8, targets=["q_proj", "v_proj"], seed=1),
        "demo-legal": dict(r=4, alpha=16, targets=["q_proj", "v_proj"], seed=2),
        "demo-style": dict(r=8, alpha=8, targets=LLAMA_TARGETS, seed=3),
    }
    folders = {
        name: step(f"make adapter {name} with PEFT", lambda n=name, s=spec: build_adapter(base, work / n, **s))
        for name, spec in specs.items()
    }
    for name, folder in folders.items():
        step(f"register {name}", lambda n=name, f=folder: reg.register(f, name=n, tags={"demo": "yes"}))
    data = work / "demo-chats.jsonl"
    data.write_text("".join(
        json.dumps({"prompt": f"Customer {i}: where is my order?", "completion": " It ships tomorrow, thank you."})
        + "\n" for i in range(40)))
    clauses = work / "demo-clauses.jsonl"
    clauses.write_text("".join(
        json.dumps({"prompt": f"Clause {i}:", "completion": " this agreement is governed by the laws of Oregon."})
        + "\n" for i in range(40)))
    # Two parents that each learned something (held-out split recorded and linked), so a merge has skill to keep.
    for name, task, file in (("demo-tone", "support replies", data), ("demo-legal", "a legal clause", clauses)):
        job = step(f"teach {name}:1 {task} (30 steps, 8 rows held out)",
                   lambda n=name, f=file: reg.train(f"{n}:1", data=f, steps=30, lr=1e-2, batch_size=8, eval_rows=8))
        if job.status != "succeeded":
            raise RegistryError(f"demo training job {job.id} failed: {job.error}")
        report.steps[-1]["result"] = (f"{job.report['registered'][0]}, held-out loss "
                                      f"{job.report['eval_loss_before']:.2f} -> {job.report['eval_loss_after']:.2f}")
    reg.set_alias("demo-legal:2", "production")
    report.steps.append({"step": "alias demo-legal@production", "seconds": 0.0, "result": "demo-legal:2"})
    for method, extra in (("svd", {"svd_rank": 8}), ("ties", {"density": 0.5})):
        job = step(
            f"merge demo-tone:2 + demo-legal@production by {method}, then validate with PEFT",
            lambda mth=method, kw=extra: reg.merge(
                ["demo-tone:2", "demo-legal@production"], weights=[0.5, 0.5], method=mth,
                name=f"demo-tone-legal-{mth}", validate=True, **kw,
            ),
        )
        error = job.report["overall"]["max_rel_error"]
        report.steps[-1]["result"] = f"{job.result_ref}, error vs exact sum {error:.3g}"
        checks = [j.wait(timeout=600) for j in reg.jobs(kind="validate", parent_job_id=job.id)]
        if checks:
            v = checks[0]
            exact = v.report.get("exact_check")
            detail = (f"exact check max |diff| {exact['max_abs_diff']:.2g}" if exact
                      else f"logits moved {v.report.get('logits', {}).get('max_abs_diff_from_base', 0):.3g} from base")
            report.steps.append({"step": f"runtime validation of {job.result_ref}", "seconds": 0.0,
                                 "result": f"{v.status}: {detail}"})
            kept = v.report.get("retention")
            if kept:
                report.steps.append({"step": f"retention of each parent in {job.result_ref}", "seconds": 0.0,
                                     "result": retention_line(kept)})
    job = step("continue training demo-style:1 for 30 steps",
               lambda: reg.train("demo-style:1", data=data, steps=30, lr=1e-2, batch_size=8))
    if job.status != "succeeded":
        raise RegistryError(f"demo training job {job.id} failed: {job.error}")
    rep = job.report
    report.steps[-1]["result"] = (f"{rep['registered'][0]}, eval loss {rep['eval_loss_before']:.2f} -> "
                                  f"{rep['eval_loss_after']:.2f}, base unchanged: {rep['base_unchanged']}")
    graphs = [reg.lineage(ref).to_dict() for ref in ("demo-tone-legal-svd:1", "demo-tone-legal-ties:1",
                                                     rep["registered"][0])]
    edges = {(e["child"], e["parent"], e["relation"]): e for g in graphs for e in g["edges"]}  # shared ancestors
    nodes = {n["ref"]: n for g in graphs for n in g["nodes"]}
    report.lineage = {"root": "demo results", "edges": list(edges.values()), "nodes": list(nodes.values())}
    return report
