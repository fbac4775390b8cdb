"""``adreg demo``: a real end-to-end run on the embedded default, with nothing to download.

Builds a tiny Llama base and three LoRA adapters with PEFT, registers them, merges two of them by two
methods as catalog jobs, validates each result at run time with PEFT on the real (tiny) base, continues
training one adapter for a few steps, and returns what happened so the CLI can show it.
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
    registered = {
        name: step(f"register {name}", lambda n=name, f=folder: reg.register(f, name=n, tags={"demo": "yes"}))
        for name, folder in folders.items()
    }
    reg.set_alias(registered["demo-legal"].ref, "production")
    report.steps.append({"step": "alias demo-legal@production", "seconds": 0.0, "result": registered["demo-legal"].ref})
    for method, extra in (("svd", {"svd_rank": 8}), ("ties", {"density": 0.5})):
        job = step(
            f"merge demo-tone:1 + demo-legal@production by {method}, then validate with PEFT",
            lambda mth=method, kw=extra: reg.merge(
                ["demo-tone:1", "demo-legal@production"], weights=[0.7, 0.3], method=mth,
                name=f"demo-tone-legal-{mth}", validate=True, **kw,
            ),
        )
        error = job.report["overall"]["max_rel_error"]
        report.steps[-1]["result"] = f"{job.result_ref}, error vs exact sum {error:.3g}"
        checks = [j for j in reg.jobs(kind="validate") if j.parent_job_id == job.id]
        if checks:
            v = checks[0]
            exact = v.report.get("exact_check")
            detail = (f"exact check max |diff| {exact['max_abs_diff']:.2g}" if exact
                      else f"logits moved {v.report.get('logits', {}).get('max_abs_diff_from_base', 0):.3g} from base")
            report.steps.append({"step": f"runtime validation of {job.result_ref}", "seconds": 0.0,
                                 "result": f"{v.status}: {detail}"})
    data = work / "demo-chats.jsonl"
    data.write_text("".join(
        json.dumps({"prompt": f"Customer {i}: where is my order?", "completion": " It ships tomorrow, thank you."})
        + "\n" for i in range(40)))
    job = step("continue training demo-style:1 for 30 steps",
               lambda: reg.train("demo-style:1", data=data, steps=30, lr=1e-2, batch_size=8))
    if job.status != "succeeded":
        raise RegistryError(f"demo training job {job.id} failed: {job.error}")
    rep = job.report
    report.steps[-1]["result"] = (f"{rep['registered'][0]}, eval loss {rep['eval_loss_before']:.2f} -> "
                                  f"{rep['eval_loss_after']:.2f}, base unchanged: {rep['base_unchanged']}")
    graphs = [reg.lineage(ref).to_dict() for ref in ("demo-tone-legal-svd:1", "demo-tone-legal-ties:1",
                                                     rep["registered"][0])]
    report.lineage = {"root": "demo results", "edges": [e for g in graphs for e in g["edges"]],
                      "nodes": [n for g in graphs for n in g["nodes"]]}
    return report
