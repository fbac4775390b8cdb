"""Learned merge weights: fit the mixture coefficients of a merge to its parents' held-out data (LoraHub-style).

LoraHub (Huang et al., 2023, "LoraHub: Efficient Cross-Task Generalization via Dynamic LoRA Composition") searches
the coefficients ``w`` of a weighted sum of LoRA modules on a few examples, minimising their loss plus an L1 term.
Here the parents are loaded together on the base with PEFT, all active, and each LoRA layer's scale for parent
``i`` is ``w_i * lora_alpha_i / r_i`` with ``w`` one leaf tensor: the model then computes exactly
``W + sum_i w_i s_i B_i A_i``, the weighted sum that ``cat`` (and full-rank ``svd``) reproduce, and its loss is
differentiable in ``w``. The objective is

    J(w) = mean_i L_i(w) + l1 * sum_i |w_i|

with ``L_i`` the mean next-token cross-entropy over the labelled tokens (the answer tokens of prompt/completion
rows) of ``examples`` rows sampled, seeded, from parent ``i``'s held-out data. Adam takes ``budget`` steps on
``w``; the weights with the lowest objective seen (the last step's included) are the result. The same data, seed
and inputs give the same weights, bit for bit on one device.

The ``worst`` objective aims at the worst-off parent instead of the average. Before the search, on the same rows,
each parent's loss is measured twice: ``B_i`` on the bare base (adapters disabled, PEFT's ``disable_adapter``) and
``P_i`` with parent ``i`` alone (the mixture one-hot). Its normalised loss ``n_i(w) = (L_i(w) - P_i) / (B_i - P_i)``
is 0 at the parent's own loss and 1 at the base's (an estimate of ``1 - retention_i``), and the search minimises a
smooth maximum of them, the tau-log-sum-exp

    J(w) = (1/tau) * log(sum_i exp(tau * n_i(w))) + l1 * sum_i |w_i|        (tau = TAU = 20)

over the parents with ``B_i > P_i`` (a parent that learned nothing on its rows has no scale to normalise by and is
left out of the maximum; it still takes part in the mixture). ``max_i n_i <= LSE <= max_i n_i + log(k)/tau``.
Its gradient is ``sum_i softmax(tau n)_i / (B_i - P_i) * dL_i/dw``: each parent's ``dL_i/dw`` (a vector of ``len(w)``
numbers) is taken in the same single pass over its batches, so a step still costs one forward and backward pass.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from registry.errors import RegistryError
from registry.jobs import LEARN_OBJECTIVES, MergeSpec
from workers.context import JobContext
from workers.host import JobHost

OPTIMIZER = "adam on the exact weighted sum"
BATCH_SIZE = 8
# The worst objective's temperature: the smooth maximum is within log(k)/TAU of the true one (0.035 for 2 parents,
# 0.069 for 4) and its softmax still gives a parent 1/e of the worst one's share 0.05 below it in normalised loss.
# benchmarks/merge_quality.py tried 5, 20 and 50 (docs/merge.md "Which merge keeps the most").
TAU = 20.0


def load_parents(model: Any, folders: Sequence[str | Path]) -> tuple[Any, list[str]]:
    """``model`` with every parent adapter loaded (named ``p0``, ``p1``, ...) and all of them active, every
    parameter frozen: the mixture whose scales :func:`set_mixture` sets."""
    from peft import PeftModel

    names = [f"p{i}" for i in range(len(folders))]
    peft_model = PeftModel.from_pretrained(model, str(folders[0]), adapter_name=names[0])
    for name, folder in zip(names[1:], folders[1:], strict=True):
        peft_model.load_adapter(str(folder), adapter_name=name)
    peft_model.base_model.set_adapter(names)
    for param in peft_model.parameters():
        param.requires_grad_(False)
    return peft_model.eval(), names


def lora_layers(peft_model: Any) -> list[Any]:
    from peft.tuners.lora import LoraLayer

    return [module for module in peft_model.modules() if isinstance(module, LoraLayer)]


def set_mixture(layers: Sequence[Any], names: Sequence[str], w: Any) -> None:
    """Each layer's scale for adapter ``names[i]``: ``w[i]`` times its own ``lora_alpha / r`` (PEFT's
    ``LoraLayer.set_scale``; a tensor ``w`` keeps the forward pass differentiable in it). Call it before each
    forward pass that builds a graph (a backward pass frees the previous one)."""
    for layer in layers:
        for i, name in enumerate(names):
            layer.set_scale(name, w[i])


def answer_loss_sum(model: Any, batch: dict[str, Any], dev: str) -> tuple[Any, int]:
    """The summed next-token cross-entropy over ``batch``'s labelled tokens (differentiable), and how many there are."""
    from workers.evaluate import labelled_loss

    loss, _right, count = labelled_loss(model, batch, dev)
    return loss, count


def parent_pass(model: Any, layers: Sequence[Any], names: Sequence[str], w: Any,
                parent_batches: Sequence[dict[str, Any]], dev: str, *, grad: bool) -> tuple[float, Any]:
    """One parent's ``L_i`` (mean next-token loss over its sampled batches) at the mixture ``w``, and with ``grad``
    its gradient ``dL_i/dw`` (one forward and backward pass per batch, so memory is one batch's), else None."""
    import torch

    tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in parent_batches)
    if tokens == 0:
        raise RegistryError("a parent's sampled rows have no labelled token (rows too short, or no completion "
                            "within max_length)")
    total, g = 0.0, torch.zeros_like(w.detach()) if grad else None
    for batch in parent_batches:
        with torch.set_grad_enabled(grad):
            set_mixture(layers, names, w)
            loss, _count = answer_loss_sum(model, batch, dev)
            if grad:
                g += torch.autograd.grad(loss / tokens, w)[0]
        total += float(loss.detach())
    return total / tokens, g


def _l1_term(w: Any, l1: float, g: Any = None) -> float:
    """``l1 * sum |w|``; given the rest of the objective's gradient ``g``, that plus the term's own gradient is added
    to ``w.grad``."""
    import torch

    if g is None:
        return l1 * float(w.detach().abs().sum())
    with torch.enable_grad():
        penalty = l1 * w.abs().sum()
    w.grad = g if w.grad is None else w.grad + g
    if l1:
        penalty.backward()
    return float(penalty.detach())


def objective(model: Any, layers: Sequence[Any], names: Sequence[str], w: Any,
              batches: Sequence[Sequence[dict[str, Any]]], l1: float, dev: str, *,
              grad: bool) -> tuple[float, list[float]]:
    """``J(w)`` and each parent's loss ``L_i``; with ``grad`` the gradient of ``J`` accumulates in ``w.grad``."""
    passes = [parent_pass(model, layers, names, w, parent_batches, dev, grad=grad) for parent_batches in batches]
    losses = [loss for loss, _g in passes]
    g = sum(g for _loss, g in passes) / len(passes) if grad else None
    return sum(losses) / len(losses) + _l1_term(w, l1, g), losses


def parent_losses(model: Any, layers: Sequence[Any], names: Sequence[str],
                  batches: Sequence[Sequence[dict[str, Any]]], dev: str, weights: Sequence[float]) -> list[float]:
    """Each parent's ``L_i`` on its own batches at the plain (float) mixture ``weights``, no gradient."""
    import torch

    plain = [float(x) for x in weights]
    with torch.no_grad():
        return [parent_pass(model, layers, names, plain, parent_batches, dev, grad=False)[0]
                for parent_batches in batches]


def references(model: Any, layers: Sequence[Any], names: Sequence[str], batches: Sequence[Sequence[dict[str, Any]]],
               dev: str) -> list[dict[str, Any]]:
    """Per parent ``i``, on its own batches: ``base`` (``B_i``, every adapter disabled), ``parent`` (``P_i``, adapter
    ``i`` alone at scale 1: the mixture one-hot) and whether it is ``included`` in the worst objective
    (``B_i > P_i``: it learned something there)."""
    import torch

    with model.disable_adapter(), torch.no_grad():
        bare = parent_losses(model, layers, names, batches, dev, [1.0] * len(names))
    alone = []
    for i in range(len(names)):
        one_hot = [1.0 if j == i else 0.0 for j in range(len(names))]
        alone.append(parent_losses(model, layers, names, [batches[i]], dev, one_hot)[0])
    set_mixture(layers, names, [1.0] * len(names))
    return [{"base": b, "parent": p, "included": b > p} for b, p in zip(bare, alone, strict=True)]


def normalised(losses: Sequence[float], refs: Sequence[dict[str, Any]]) -> list[float | None]:
    """``n_i = (L_i - P_i) / (B_i - P_i)`` per parent; None for a parent left out (``B_i <= P_i``)."""
    return [(loss - r["parent"]) / (r["base"] - r["parent"]) if r["included"] else None
            for loss, r in zip(losses, refs, strict=True)]


def smooth_max(values: Sequence[float], tau: float = TAU) -> float:
    """``(1/tau) * log(sum_i exp(tau * v_i))``, computed stably."""
    top = max(values)
    return top + math.log(sum(math.exp(tau * (v - top)) for v in values)) / tau


def worst_objective(model: Any, layers: Sequence[Any], names: Sequence[str], w: Any,
                    batches: Sequence[Sequence[dict[str, Any]]], refs: Sequence[dict[str, Any]], l1: float, dev: str,
                    *, grad: bool, tau: float = TAU) -> tuple[float, list[float]]:
    """``J(w) = LSE_tau(n_i) + l1 * sum |w|`` over the included parents, and each parent's loss ``L_i``; with
    ``grad`` its gradient is written to ``w.grad`` (one forward and backward pass per batch, each parent's
    ``dL_i/dw`` kept, then combined by the softmax weights)."""
    import torch

    included = [i for i, r in enumerate(refs) if r["included"]]
    if not included:
        raise RegistryError("no parent does better than the base on its own sampled rows (B_i <= P_i for every "
                            "one), so the worst objective has nothing to normalise: use the mean objective, or check "
                            "the parents and their held-out data")
    passes = [parent_pass(model, layers, names, w, parent_batches, dev, grad=grad) for parent_batches in batches]
    losses = [loss for loss, _g in passes]
    norm = normalised(losses, refs)
    kept = [float(norm[i]) for i in included]  # type: ignore[arg-type]
    total_grad = None
    if grad:
        share = torch.softmax(torch.tensor(kept, dtype=torch.float64) * tau, dim=0).tolist()
        total_grad = torch.zeros_like(w.detach())
        for s, i in zip(share, included, strict=True):
            total_grad += passes[i][1] * (s / (refs[i]["base"] - refs[i]["parent"]))
    return smooth_max(kept, tau) + _l1_term(w, l1, total_grad), losses


def fit_weights(model: Any, names: Sequence[str], batches: Sequence[Sequence[dict[str, Any]]], *,
                initial: Sequence[float], budget: int, l1: float, lr: float, seed: int = 0, dev: str = "cpu",
                on_step: Callable[[int, int], None] | None = None, kind: str = "mean",
                tau: float = TAU) -> dict[str, Any]:
    """Adam on the mixture coefficients of ``model`` (adapters ``names`` all active, see :func:`load_parents`),
    minimising ``kind``'s objective on ``batches[i]`` (parent ``i``'s), from ``initial``, ``budget`` steps:
    ``mean`` is ``mean_i L_i + l1 * sum |w|`` (LoraHub's), ``worst`` the tau-log-sum-exp of the normalised losses
    plus the same L1 term (:func:`worst_objective`). Returns ``objective`` (``kind``), ``initial``, ``weights``
    (the lowest objective seen), ``objective_initial``, ``objective_final`` (at ``weights``), ``best_step``,
    ``losses_initial`` / ``losses_final`` (each parent's ``L_i``), ``reference`` (per parent ``base`` ``B_i``,
    ``parent`` ``P_i``, ``included``: measured for either objective), ``normalised_initial`` /
    ``normalised_final`` (each parent's ``n_i``, None when left out), ``tau`` (worst only) and the ``trace`` (per
    step: the weights and the objective there, before the step). ``on_step(k, budget)`` runs before each step
    (progress, cancellation)."""
    import torch

    if kind not in LEARN_OBJECTIVES:
        raise RegistryError(f"unknown objective {kind!r}: choose from {', '.join(LEARN_OBJECTIVES)}")
    if len(batches) != len(names) or len(initial) != len(names):
        raise RegistryError(f"{len(names)} adapter(s), {len(batches)} data set(s), {len(initial)} initial weight(s)")
    layers = lora_layers(model)
    refs = references(model, layers, names, batches, dev)

    def evaluate(at: Any, *, grad: bool) -> tuple[float, list[float]]:
        if kind == "worst":
            return worst_objective(model, layers, names, at, batches, refs, l1, dev, grad=grad, tau=tau)
        return objective(model, layers, names, at, batches, l1, dev, grad=grad)

    torch.manual_seed(seed)
    w = torch.tensor([float(x) for x in initial], dtype=torch.float32, device=dev, requires_grad=True)
    optimizer = torch.optim.Adam([w], lr=lr)
    trace: list[dict[str, Any]] = []
    start_losses: list[float] = []
    for step in range(budget):
        if on_step is not None:
            on_step(step, budget)
        optimizer.zero_grad(set_to_none=True)
        value, losses = evaluate(w, grad=True)
        if not math.isfinite(value):
            raise RegistryError(f"the weight search's objective is {value} at step {step} (weights "
                                f"{w.detach().cpu().tolist()}): lower the learning rate or check the data")
        if step == 0:
            start_losses = losses
        trace.append({"step": step, "weights": w.detach().cpu().tolist(), "objective": value})
        optimizer.step()
    final = w.detach().cpu().tolist()
    value, losses = evaluate(w.detach(), grad=False)
    if not trace:
        start_losses = losses
    trace.append({"step": budget, "weights": final, "objective": value})
    best = min(trace, key=lambda t: t["objective"])  # the first of equals: the earliest step
    set_mixture(layers, names, [1.0] * len(names))  # leave the model with plain (float) scales
    best_losses = losses if best["step"] == budget else None
    if best_losses is None:
        _v, best_losses = evaluate(torch.tensor(best["weights"], device=dev), grad=False)
        set_mixture(layers, names, [1.0] * len(names))
    return {"objective": kind, "initial": [float(x) for x in initial], "weights": list(best["weights"]),
            "objective_initial": trace[0]["objective"], "objective_final": best["objective"],
            "best_step": best["step"], "losses_initial": start_losses, "losses_final": best_losses,
            "reference": refs, "normalised_initial": normalised(start_losses, refs),
            "normalised_final": normalised(best_losses, refs), **({"tau": tau} if kind == "worst" else {}),
            "budget": budget, "l1": l1, "lr": lr, "seed": seed, "optimizer": OPTIMIZER, "trace": trace}


def sample_batches(files: Sequence[tuple[Path, Any]], tokenizer: Any, examples: int, max_length: int,
                   rng: random.Random, batch_size: int = BATCH_SIZE) -> tuple[list[dict[str, Any]], int]:
    """``examples`` rows drawn without replacement (all of them when there are fewer) from one parent's
    held-out data files ``(path, EvalData)``, tokenised as training tokenises them, in collated batches; and how
    many rows were drawn."""
    from registry.trainset import load_rows
    from workers.train import collator, tokenize_rows

    tables = [(load_rows(str(path), data.format), data) for path, data in files]
    pool = [(t, j) for t, (rows, _d) in enumerate(tables) for j in range(len(rows))]
    chosen = sorted(rng.sample(pool, min(examples, len(pool))))
    encoded: list[dict[str, Any]] = []
    for t, (rows, data) in enumerate(tables):
        picked = [j for tt, j in chosen if tt == t]
        if picked:
            part = tokenize_rows(rows.select(picked), tokenizer, data.fields, max_length)
            encoded += [part[k] for k in range(len(part))]
    collate = collator("CAUSAL_LM", tokenizer)
    return [collate(encoded[j:j + batch_size]) for j in range(0, len(encoded), batch_size)], len(chosen)


def learn_for_merge(host: JobHost, ctx: JobContext, spec: MergeSpec, base: Any, folders: Sequence[Path],
                    span: tuple[float, float] = (0.02, 0.6)) -> dict[str, Any]:
    """The ``learned_weights`` section of a merge job's report: the search of ``spec.learn`` on the parents'
    pinned held-out data (``spec.parent_evals``), from ``spec.weights``."""
    from workers.base_model import device
    from workers.evaluate import causal_lm
    from workers.quiet import quiet_loading

    learn = spec.learn
    if learn is None:
        raise RegistryError("this merge does not learn its weights")
    started = time.monotonic()
    by_version = {p.version_id: p for p in spec.parent_evals}
    missing = [src.ref for src in spec.sources if src.version_id not in by_version]
    if missing:
        raise RegistryError(f"no held-out data pinned for {', '.join(missing)}")
    if base is None:
        raise RegistryError("the merge's sources have no base model recorded")
    lo, hi = span
    ctx.progress(lo, "learning weights: loading the base and the parents", force=True)
    dev = device()
    with quiet_loading():
        model, tokenizer = causal_lm(base)
        peft_model, names = load_parents(model, folders)
    peft_model.to(dev)
    rng = random.Random(learn.seed)
    batches, drawn = [], []
    for src in spec.sources:
        evals = by_version[src.version_id]
        files = [(host.data_file(data), data) for data in evals.datasets]
        parent_batches, count = sample_batches(files, tokenizer, learn.examples, learn.max_length, rng)
        batches.append(parent_batches)
        drawn.append({"ref": src.ref, "datasets": [d.ref for d in evals.datasets], "rows": count})

    def on_step(k: int, n: int) -> None:
        ctx.check_cancel()
        ctx.progress(lo + (hi - lo) * k / max(n, 1), f"learning weights: step {k + 1}/{n}")

    result = fit_weights(peft_model, names, batches, initial=spec.weights, budget=learn.budget, l1=learn.l1,
                         lr=learn.lr, seed=learn.seed, dev=dev, on_step=on_step, kind=learn.objective)
    ctx.check_cancel()
    result.update(examples=learn.examples, data=drawn, device=dev, seconds=round(time.monotonic() - started, 3))
    return result
