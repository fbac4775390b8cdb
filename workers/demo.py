"""``adreg demo``: a real end-to-end run on the embedded default, with nothing to download.

Builds a tiny Llama base and three LoRA adapters with PEFT, registers them, merges them where the merge
engine is available, and returns what happened so the CLI can show it.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from registry import Registry


@dataclass
class DemoReport:
    workdir: str
    catalog: str
    artifacts: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    lineage: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"workdir": self.workdir, "catalog": self.catalog, "artifacts": self.artifacts,
                "steps": self.steps, "lineage": self.lineage}


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
        report.steps.append({"step": what, "seconds": round(time.perf_counter() - start, 3)})
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
    report.steps.append({"step": "alias demo-legal@production", "seconds": 0.0})
    last = registered["demo-tone"].ref
    merge = getattr(reg, "merge", None)
    if merge is not None:
        for method, extra in (("svd", {}), ("ties", {"density": 0.5})):
            name = f"demo-tone-legal-{method}"
            result = step(
                f"merge demo-tone + demo-legal@production by {method}",
                lambda n=name, mth=method, kw=extra: merge(
                    ["demo-tone:1", "demo-legal@production"], weights=[0.7, 0.3], method=mth, name=n, **kw
                ),
            )
            last = getattr(result, "ref", None) or getattr(getattr(result, "result", None), "ref", last)
    report.lineage = reg.lineage(last).to_dict()
    return report
