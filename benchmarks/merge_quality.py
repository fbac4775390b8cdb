"""Which merge keeps the most: retention of four task adapters after merging them with every method.

From one tiny Llama (built from a config, a character vocabulary, briefly trained to copy strings so that it is
not random), four LoRA adapters are trained with PEFT on four synthetic tasks (reverse a string, upper-case it,
sort its letters, add one to each digit; prompt ``tag + input + "="``, loss on the answer tokens only). The four
adapters are merged with every method of ``registry.merge_rules.METHODS`` through the project's own engine
(``workers.merge.merge_adapters`` on the adapters' safetensors), at equal weights 1/4 (``mean``) and 1 (``sum``,
task arithmetic), each merged adapter is loaded with ``PeftModel.from_pretrained`` and evaluated on every task's
held-out set (answer-token loss), and per task

    retention_i = (L_base,i - L_merged,i) / (L_base,i - L_parent_i,i)      (registry.retention.retention)

is reported with its mean and minimum over the tasks, the merge time and the merge's peak RSS increase, as the
mean and spread (max - min) over seeds (each seed trains its own four adapters on the same base).

Learned weights (weighting ``learned``, issue 17 item 4): ``workers.learn_weights.fit_weights`` (Adam on the
mixture coefficients of the exact weighted sum, from 1/n each, LoraHub-style objective: the mean answer-token loss
over the tasks plus ``0.05 * sum |w|``) on ``--learn-examples`` fresh examples per task, drawn apart from the
held-out sets the retention is measured on; then ``cat`` (exact) and ``svd`` merge at the learned weights. Their
``merge s`` and peak RSS include the search. Weighting ``learned-worst``: the same search with the ``worst``
objective (a tau-log-sum-exp of the tasks' normalised losses ``(L_i - P_i) / (B_i - P_i)`` on the search's own
examples, ``--learn-tau``, default ``workers.learn_weights.TAU``), aimed at the worst-off task; ``learned-worst@T``
runs it at tau ``T`` (a sweep: ``--weights learned-worst@5,learned-worst@20,learned-worst@50``).

    python benchmarks/merge_quality.py                      # 4 tasks, 3 seeds (a few minutes on 2 cores)
    python benchmarks/merge_quality.py --seeds 1 --steps 100
    python benchmarks/merge_quality.py --quick              # 2 tasks, 1 seed, few steps: a smoke run
    python benchmarks/merge_quality.py --json out.json      # also write every number
    python benchmarks/merge_quality.py --weights mean,sum   # without the learned weights
    python benchmarks/merge_quality.py --methods cat --weights learned,learned-worst@5,learned-worst@50  # tau sweep
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from registry.retention import retention, summarize  # noqa: E402

# Character vocabulary: pad, bos, eos, then printable ASCII (fits the tiny vocab of 128).
PAD, BOS, EOS = 0, 1, 2
VOCAB = {chr(c): 3 + i for i, c in enumerate(range(32, 127))}
LETTERS = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PEFT_METHODS = ("svd", "linear", "cat", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd",
                "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd")
# Parameters given to the methods that accept them (PEFT's docs use density 0.5 in their examples).
METHOD_PARAMS: dict[str, Any] = {"density": 0.5, "seed": 0}
TRAIN_LR = 1e-2  # the adapters'
LEARNED_METHODS = ("cat", "svd")  # the methods merging at the learned weights (cat: exactly the searched mixture)
LEARN = {"budget": 40, "l1": 0.05, "lr": 0.05}  # workers.learn_weights' defaults (registry.jobs.LearnWeights)
BASE_LR = 3e-3  # the base's copy task


@dataclass(frozen=True)
class Task:
    name: str
    tag: str
    alphabet: str
    fn: Callable[[str], str]


TASKS = [
    Task("reverse", "rev ", LETTERS, lambda s: s[::-1]),
    Task("upper", "up ", LETTERS, str.upper),
    Task("sort", "sort ", LETTERS, lambda s: "".join(sorted(s))),
    Task("inc", "inc ", DIGITS, lambda s: "".join(str((int(c) + 1) % 10) for c in s)),
]
COPY = Task("copy", "copy ", LETTERS + LETTERS.upper() + DIGITS, lambda s: s)  # what the base is pretrained on


def encode(text: str) -> list[int]:
    return [VOCAB[c] for c in text]


def sample(task: Task, rng: random.Random, lo: int = 3, hi: int = 7) -> tuple[list[int], list[int]]:
    """One example: (prompt ids, answer ids) for ``<s> tag input = answer </s>``."""
    text = "".join(rng.choice(task.alphabet) for _ in range(rng.randint(lo, hi)))
    return [BOS, *encode(task.tag + text + "=")], [*encode(task.fn(text)), EOS]


def batch(examples: list[tuple[list[int], list[int]]]) -> dict[str, Any]:
    """Right-padded input ids, attention mask and labels (-100 on the prompt and on padding)."""
    import torch

    width = max(len(p) + len(a) for p, a in examples)
    ids = torch.full((len(examples), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, (prompt, answer) in enumerate(examples):
        seq = prompt + answer
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        labels[row, len(prompt): len(seq)] = torch.tensor(answer)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def train(model: Any, task_batches: Callable[[random.Random], dict[str, Any]], steps: int, lr: float,
          seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    rng = random.Random(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * (1 - s / max(steps, 1)))
    model.train()
    for _ in range(steps):
        loss = model(**task_batches(rng)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    model.eval()


def answer_loss(model: Any, data: dict[str, Any]) -> float:
    """Mean cross-entropy over the answer tokens of a held-out batch."""
    import torch

    with torch.no_grad():
        return float(model(**data).loss)


def build_base(folder: Path, steps: int, batch_size: int) -> Any:
    """The tiny Llama, trained ``steps`` steps to copy strings of lower- and upper-case letters and digits (loss on
    the copy), saved at ``folder``: it can copy, but knows none of the four tasks."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
    model = LlamaForCausalLM(config)
    if steps:
        train(model, lambda rng: batch([sample(COPY, rng) for _ in range(batch_size)]),
              steps, BASE_LR, seed=0)
    model.save_pretrained(folder)
    return model


def train_adapter(base: Any, base_folder: Path, task: Task, held_out: set[tuple[int, ...]], steps: int,
                  batch_size: int, rank: int, lr: float, seed: int, out: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    model = copy.deepcopy(base)
    model.config.name_or_path = str(base_folder)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                  target_modules=TARGETS, task_type="CAUSAL_LM"))

    def batches(rng: random.Random) -> dict[str, Any]:
        examples: list[tuple[list[int], list[int]]] = []
        while len(examples) < batch_size:
            prompt, answer = sample(task, rng)
            if tuple(prompt) not in held_out:
                examples.append((prompt, answer))
        return batch(examples)

    train(peft_model, batches, steps, lr, seed=seed)
    peft_model.save_pretrained(out)


@dataclass
class MethodResult:
    retentions: list[list[float | None]] = field(default_factory=list)  # per seed, per task
    seconds: list[float] = field(default_factory=list)
    peak_mb: list[float] = field(default_factory=list)
    refused: str | None = None


def learned_kind(weighting: str, tau: float) -> tuple[str, float] | None:
    """``(objective, tau)`` of a learned weighting (``learned``: mean; ``learned-worst``: worst at ``tau``;
    ``learned-worst@T``: worst at ``T``), None for a fixed one."""
    if weighting == "learned":
        return "mean", tau
    if weighting == "learned-worst":
        return "worst", tau
    if weighting.startswith("learned-worst@"):
        return "worst", float(weighting.split("@", 1)[1])
    return None


def learn_weights(base: Any, folders: list[Path], tasks: list[Task], held_prompts: dict[str, set[tuple[int, ...]]],
                  examples: int, budget: int, seed: int, kind: str = "mean", tau: float | None = None
                  ) -> dict[str, Any]:
    """``workers.learn_weights.fit_weights`` (objective ``kind``) on the four adapters loaded together on ``base``,
    fitted on ``examples`` fresh examples per task (none of them in the held-out sets), from 1/n each; with
    ``seconds``. The examples depend on ``seed`` only: every objective searches on the same ones."""
    from workers.learn_weights import TAU, fit_weights, load_parents

    start = time.perf_counter()
    rng = random.Random(10_000 + seed)
    batches = []
    for task in tasks:
        drawn: list[tuple[list[int], list[int]]] = []
        while len(drawn) < examples:
            prompt, answer = sample(task, rng)
            if tuple(prompt) not in held_prompts[task.name]:
                drawn.append((prompt, answer))
        batches.append([batch(drawn[j:j + 8]) for j in range(0, len(drawn), 8)])
    model, names = load_parents(copy.deepcopy(base), folders)
    result = fit_weights(model, names, batches, initial=[1.0 / len(folders)] * len(folders), budget=budget,
                         l1=LEARN["l1"], lr=LEARN["lr"], seed=seed, kind=kind, tau=TAU if tau is None else tau)
    result["seconds"] = time.perf_counter() - start
    return result


def _peak_reset() -> float | None:
    """Reset the process's peak RSS (Linux: /proc/self/clear_refs) and return the RSS now, in MB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_mb("VmRSS")
    except OSError:
        return None


def _status_mb(field_name: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    raise OSError(field_name)


def merge_one(sources: list[Path], weights: list[float], method: str, out: Path) -> tuple[float, float | None]:
    """Merge with the project's engine; (seconds, peak RSS increase in MB or None)."""
    from registry.merge_rules import METHODS
    from workers.merge import merge_adapters

    rule = METHODS[method]
    params = {k: v for k, v in METHOD_PARAMS.items() if k in rule.accepts}
    before = _peak_reset()
    start = time.perf_counter()
    merge_adapters(sources, weights, method, out=out, **params)
    seconds = time.perf_counter() - start
    peak = _status_mb("VmHWM") - before if before is not None else None
    return seconds, peak


def run(tasks: list[Task], seeds: list[int], steps: int, base_steps: int, rank: int, batch_size: int,
        held_out_size: int, weightings: list[str], methods: list[str] | None = None, lr: float = TRAIN_LR,
        log: Callable[[str], None] = print, learn_examples: int = 32,
        learn_budget: int = LEARN["budget"], learn_tau: float | None = None) -> dict[str, Any]:
    """The whole benchmark; returns every number (``rows``: one per method and weighting)."""
    import torch

    from registry.merge_rules import METHODS
    from workers.learn_weights import TAU
    from workers.quiet import quiet_loading

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is as fast, and kinder to a shared machine
    try:
        with quiet_loading():
            return _run(tasks, seeds, steps, base_steps, rank, batch_size, held_out_size, weightings,
                        methods or list(METHODS), lr, log, learn_examples, learn_budget,
                        TAU if learn_tau is None else learn_tau)
    finally:
        torch.set_num_threads(threads)


def _run(tasks: list[Task], seeds: list[int], steps: int, base_steps: int, rank: int, batch_size: int,
         held_out_size: int, weightings: list[str], methods: list[str], lr: float,
         log: Callable[[str], None], learn_examples: int, learn_budget: int, learn_tau: float) -> dict[str, Any]:
    from peft import PeftModel

    from registry.errors import RegistryError
    from registry.merge_rules import METHODS, check_params

    results: dict[tuple[str, str], MethodResult] = {
        (m, w): MethodResult() for m in methods for w in weightings
        if learned_kind(w, learn_tau) is None or m in LEARNED_METHODS}
    parents: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="merge-quality-") as tmp:
        root = Path(tmp)
        base = build_base(root / "base", base_steps, batch_size)
        base.eval()
        rng = random.Random(12345)
        held = {t.name: [sample(t, rng) for _ in range(held_out_size)] for t in tasks}
        held_prompts = {t.name: {tuple(p) for p, _ in held[t.name]} for t in tasks}
        data = {name: batch(examples) for name, examples in held.items()}
        base_loss = {t.name: answer_loss(base, data[t.name]) for t in tasks}
        log(f"base built ({time.perf_counter() - t0:.1f} s): answer loss "
            + ", ".join(f"{k} {v:.3f}" for k, v in base_loss.items()))
        for seed in seeds:
            folders = []
            parent_loss: dict[str, float] = {}
            cross: dict[str, dict[str, float | None]] = {}  # parent -> task -> retention of that task alone
            for i, task in enumerate(tasks):
                folder = root / f"seed{seed}" / task.name
                train_adapter(base, root / "base", task, held_prompts[task.name], steps, batch_size, rank, lr,
                              seed * 100 + i, folder)
                folders.append(folder)
                loaded = PeftModel.from_pretrained(copy.deepcopy(base), folder)
                parent_loss[task.name] = answer_loss(loaded, data[task.name])
                cross[task.name] = {t.name: answer_loss(loaded, data[t.name]) for t in tasks}
            # One parent alone on every task, as a retention (its own task: 1): how much it harms the others.
            alone = {p: {t: retention(base_loss[t], parent_loss[t], loss) for t, loss in row.items()}
                     for p, row in cross.items()}
            log(f"seed {seed}: adapters trained ({time.perf_counter() - t0:.1f} s): parent loss "
                + ", ".join(f"{k} {v:.3f}" for k, v in parent_loss.items()))
            log(f"seed {seed}: each parent alone, retention on every task: "
                + "; ".join(f"{p}: " + " ".join(f"{r:.2f}" if r is not None else "-" for r in row.values())
                            for p, row in alone.items()))
            searches: dict[str, dict[str, Any]] = {}  # learned weighting -> the search's result
            refusals: dict[str, str] = {}
            for weighting in dict.fromkeys(w for _m, w in results):
                how = learned_kind(weighting, learn_tau)
                if how is None:
                    continue
                before = _peak_reset()
                try:
                    found = learn_weights(base, folders, tasks, held_prompts, learn_examples, learn_budget, seed,
                                          kind=how[0], tau=how[1])
                except RegistryError as exc:  # e.g. the worst objective with no task the parents learned
                    refusals[weighting] = str(exc)
                    continue
                found["peak_mb"] = _status_mb("VmHWM") - before if before is not None else None
                searches[weighting] = found
                norm = found["normalised_final"]
                log(f"seed {seed}: {weighting} weights "
                    + " ".join(f"{t.name} {w:.3f}" for t, w in zip(tasks, found["weights"], strict=True))
                    + f" (objective {found['objective_initial']:.3f} -> {found['objective_final']:.3f}, "
                      f"{found['seconds']:.1f} s; normalised loss on the search's examples "
                    + " ".join("-" if v is None else f"{v:.2f}" for v in norm) + ")")
            summaries = {w: {k: found.get(k) for k in ("objective", "tau", "weights", "objective_initial",
                                                       "objective_final", "best_step", "seconds", "reference",
                                                       "normalised_initial", "normalised_final")}
                         for w, found in searches.items()}
            parents.append({"seed": seed, "loss": parent_loss, "alone": alone,
                            "learned": summaries.get("learned"), "searches": summaries})
            for (method, weighting), res in results.items():
                if res.refused:
                    continue
                if weighting in refusals:
                    res.refused = refusals[weighting]
                    continue
                learned = searches.get(weighting)
                weights = ([1.0 / len(tasks)] * len(tasks) if weighting == "mean" else [1.0] * len(tasks)
                           if weighting == "sum" else list(learned["weights"]) if learned else [])
                out = root / f"seed{seed}" / "merged" / f"{method}-{weighting}"
                problems = check_params(method, {k: v for k, v in METHOD_PARAMS.items()
                                                 if k in METHODS[method].accepts})
                if problems:
                    res.refused = "; ".join(problems)
                    continue
                try:
                    seconds, peak = merge_one(folders, weights, method, out)
                except RegistryError as exc:
                    res.refused = str(exc)
                    continue
                merged = PeftModel.from_pretrained(copy.deepcopy(base), out)
                res.retentions.append([
                    retention(base_loss[t.name], parent_loss[t.name], answer_loss(merged, data[t.name]))
                    for t in tasks])
                if learned is not None:  # the search is part of this merge's cost
                    seconds += learned["seconds"]
                    peak = max(peak, learned["peak_mb"]) if peak is not None and learned["peak_mb"] is not None \
                        else peak
                res.seconds.append(seconds)
                if peak is not None:
                    res.peak_mb.append(peak)
            log(f"seed {seed}: merged and evaluated ({time.perf_counter() - t0:.1f} s)")
    rows = [_row(method, weighting, res, tasks) for (method, weighting), res in results.items()]
    rows.sort(key=lambda r: (r["refused"] is not None, -(r["mean"] if r["mean"] is not None else -1e9)))
    return {"tasks": [t.name for t in tasks], "seeds": seeds, "steps": steps, "base_steps": base_steps,
            "rank": rank, "lr": lr, "base_loss": base_loss, "parents": parents, "rows": rows,
            "seconds": time.perf_counter() - t0}


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"mean": statistics.fmean(values), "spread": max(values) - min(values)}


def _row(method: str, weighting: str, res: MethodResult, tasks: list[Task]) -> dict[str, Any]:
    per_seed = [summarize(r) for r in res.retentions]
    means = [s["mean"] for s in per_seed if s["mean"] is not None]
    mins = [s["min"] for s in per_seed if s["min"] is not None]
    per_task = {t.name: _spread([r[i] for r in res.retentions if r[i] is not None]) for i, t in enumerate(tasks)}
    mean, low = _spread(means), _spread(mins)  # type: ignore[arg-type]
    return {"method": method, "weighting": weighting,
            "peft": method in PEFT_METHODS and not weighting.startswith("learned"),
            "refused": res.refused,
            "mean": mean["mean"] if mean else None, "mean_spread": mean["spread"] if mean else None,
            "min": low["mean"] if low else None, "min_spread": low["spread"] if low else None,
            "per_task": per_task, "seconds": _spread(res.seconds), "peak_mb": _spread(res.peak_mb)}


def _pm(value: dict[str, float] | None, fmt: str = "{:.2f}") -> str:
    if value is None:
        return "-"
    return f"{fmt.format(value['mean'])} ± {fmt.format(value['spread'] / 2)}"


def table(result: dict[str, Any]) -> str:
    """A markdown table sorted by mean retention (± is half the spread, max - min, over seeds)."""
    tasks = result["tasks"]
    head = ["method", "weights", *tasks, "mean", "min", "merge s", "peak RSS +MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    refused = []
    for row in result["rows"]:
        if row["refused"]:
            refused.append(f"- `{row['method']}` ({row['weighting']}): refused: {row['refused']}")
            continue
        name = f"`{row['method']}`" + ("" if row["peft"] else " *")
        mean = {"mean": row["mean"], "spread": row["mean_spread"]}
        low = {"mean": row["min"], "spread": row["min_spread"]}
        cells = [name, {"mean": "1/n", "sum": "1"}.get(row["weighting"], row["weighting"]),
                 *(_pm(row["per_task"][t]) for t in tasks), _pm(mean), _pm(low),
                 _pm(row["seconds"], "{:.3f}"), _pm(row["peak_mb"], "{:.1f}")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ([""] + refused if refused else []))


def verdict(result: dict[str, Any]) -> str:
    """Whether a method beyond PEFT's eleven beats the best of them on mean and on minimum retention."""
    rows = [r for r in result["rows"] if not r["refused"] and r["mean"] is not None]
    peft = [r for r in rows if r["peft"]]
    others = [r for r in rows if not r["peft"]]
    if not peft or not others:
        return "nothing to compare"
    best_mean = max(peft, key=lambda r: r["mean"])
    best_min = max(peft, key=lambda r: r["min"])
    top_mean = max(others, key=lambda r: r["mean"])
    top_min = max(others, key=lambda r: r["min"])
    lines = [
        f"best of PEFT's eleven on mean retention: {best_mean['method']} ({best_mean['weighting']}) "
        f"{best_mean['mean']:.3f}; on minimum: {best_min['method']} ({best_min['weighting']}) {best_min['min']:.3f}",
        f"best beyond PEFT on mean: {top_mean['method']} ({top_mean['weighting']}) {top_mean['mean']:.3f} "
        f"({'beats' if top_mean['mean'] > best_mean['mean'] else 'does not beat'} PEFT's best); on minimum: "
        f"{top_min['method']} ({top_min['weighting']}) {top_min['min']:.3f} "
        f"({'beats' if top_min['min'] > best_min['min'] else 'does not beat'} PEFT's best)",
    ]
    for weighting in dict.fromkeys(r["weighting"] for r in others if r["weighting"].startswith("learned")):
        learned = [r for r in others if r["weighting"] == weighting]
        top, low = max(learned, key=lambda r: r["mean"]), max(learned, key=lambda r: r["min"])
        label = "learned weights" if weighting == "learned" else f"{weighting} weights"
        lines.append(
            f"{label}: best mean {top['method']} {top['mean']:.3f} "
            f"({'beats' if top['mean'] > best_mean['mean'] else 'does not beat'} PEFT's best); best minimum "
            f"{low['method']} {low['min']:.3f} ({'beats' if low['min'] > best_min['min'] else 'does not beat'} "
            "PEFT's best)")
    both = [r for r in others if r["mean"] > best_mean["mean"] and r["min"] > best_min["min"]]
    lines.append("beats PEFT's best on both mean and minimum: " + (", ".join(
        f"{r['method']} ({r['weighting']}) {r['mean']:.3f} / {r['min']:.3f}" for r in both) if both else "no row"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds (adapter sets), default 3")
    parser.add_argument("--steps", type=int, default=400, help="training steps per adapter, default 400")
    parser.add_argument("--base-steps", type=int, default=600, help="copy-task steps of the base (0: random)")
    parser.add_argument("--lr", type=float, default=TRAIN_LR, help=f"adapters' learning rate, default {TRAIN_LR}")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--held-out", type=int, default=128, help="held-out examples per task")
    parser.add_argument("--tasks", default=",".join(t.name for t in TASKS))
    parser.add_argument("--methods", default="", help="comma-separated (default: every method of METHODS)")
    parser.add_argument("--weights", default="mean,sum,learned,learned-worst",
                        help="mean (1/n each), sum (1 each), learned (workers.learn_weights, mean objective, cat "
                             "and svd), learned-worst (the worst objective), learned-worst@T (at tau T); "
                             "comma-separated, default mean,sum,learned,learned-worst")
    parser.add_argument("--learn-examples", type=int, default=32,
                        help="examples per task the learned weights are fitted on (apart from the held-out sets)")
    parser.add_argument("--learn-budget", type=int, default=LEARN["budget"], help="the weight search's Adam steps")
    parser.add_argument("--learn-tau", type=float, default=None,
                        help="tau of learned-worst (default workers.learn_weights.TAU)")
    parser.add_argument("--quick", action="store_true", help="2 tasks, 1 seed, 30 steps: a smoke run")
    parser.add_argument("--json", type=Path, help="write every number to this file")
    args = parser.parse_args(argv)
    names = args.tasks.split(",")
    if args.quick:
        names, args.seeds, args.steps, args.base_steps, args.held_out = names[:2], 1, 30, 30, 32
        args.learn_examples, args.learn_budget = 8, 5
    by_name = {t.name: t for t in TASKS}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        parser.error(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(by_name)}")
    from registry.merge_rules import METHODS

    methods = [m for m in args.methods.split(",") if m]
    if set(methods) - set(METHODS):
        parser.error(f"unknown method(s) {', '.join(sorted(set(methods) - set(METHODS)))}")
    weightings = args.weights.split(",")
    def known(w: str) -> bool:
        if w in ("mean", "sum", "learned", "learned-worst"):
            return True
        try:
            return w.startswith("learned-worst@") and float(w.split("@", 1)[1]) > 0
        except ValueError:
            return False

    if not all(known(w) for w in weightings):
        parser.error("--weights takes mean, sum, learned, learned-worst, learned-worst@T (T > 0) or a "
                     "comma-separated list of them")
    result = run([by_name[n] for n in names], list(range(args.seeds)), args.steps, args.base_steps, args.rank,
                 args.batch, args.held_out, weightings, methods or None, args.lr,
                 learn_examples=args.learn_examples, learn_budget=args.learn_budget, learn_tau=args.learn_tau)
    print()
    print(table(result))
    print()
    print(verdict(result))
    print(f"\ntotal {result['seconds']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
