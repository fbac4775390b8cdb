"""Job reports as rows for people: the runtime validation table that ``adreg job`` prints and the web page's job
page shows (one copy for both front ends)."""

from __future__ import annotations

from typing import Any


def _g(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def validation_rows(report: dict[str, Any]) -> list[list[str]]:
    """A runtime validation report as (check, outcome, detail) rows, numbers to 3 significant digits."""
    rows: list[list[str]] = []
    layers = report.get("layer_status") or {}
    if layers:
        problems = [f"{len(layers[k])} {k}" for k in ("missing", "unexpected", "nested", "disabled") if layers.get(k)]
        if layers.get("trainable_params"):
            problems.append(f"{layers['trainable_params']:,} trainable parameters")
        rows.append(["adapter layers", "FAIL" if problems else "ok",
                     f"{layers.get('layers')} of {layers.get('expected_layers')} expected LoRA layers"
                     + (": " + ", ".join(problems) if problems else ", all active, none nested, nothing trainable")])
    logits = report.get("logits") or {}
    if logits:
        moved = logits.get("max_abs_diff_from_base")
        ok = logits.get("finite") and (moved or 0) > 1e-6
        rows.append(["changes the base", "ok" if ok else "FAIL",
                     ("finite" if logits.get("finite") else "NaN/Inf in the output") + f", max |diff| {_g(moved)}"])
    for parent, distance in (report.get("distance_from_parents") or {}).items():
        rows.append([f"distance from {parent}", "-", f"max |diff| {_g(distance)}"])
    exact = report.get("exact_check")
    if exact:
        ok = exact["max_abs_diff"] <= exact["atol"]
        rows.append([f"equals the weighted sum ({exact['method']})", "ok" if ok else "FAIL",
                     f"max |diff| {_g(exact['max_abs_diff'])} (tolerance {_g(exact['atol'])})"])
    return rows
