"""``adreg diff``'s weights side (thin-factor Gram matrices) vs the dense reference (form every ``s B A``).

Writes two Llama-3-8B-shaped adapters straight to safetensors (hidden 4096, intermediate 14336, r=16 on all seven
projections of 32 layers; no model), then times :func:`registry.deltas.compare_weights` against the dense way,
``||s_a B_a A_a - s_b B_b A_b||_F`` with the ``out x in`` deltas formed in float32 (as PEFT's ``get_delta_weight``
does on the CPU), module by module from the same files. Prints both times, the ratio and the largest relative
disagreement of the distances.

    python benchmarks/diff.py                 # 32 layers (the dense side takes minutes on 2 cores)
    python benchmarks/diff.py --layers 4      # quick look
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

HIDDEN, INTERMEDIATE = 4096, 14336
SHAPES = {"self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (HIDDEN, 1024), "self_attn.v_proj": (HIDDEN, 1024),
          "self_attn.o_proj": (HIDDEN, HIDDEN), "mlp.gate_proj": (HIDDEN, INTERMEDIATE),
          "mlp.up_proj": (HIDDEN, INTERMEDIATE), "mlp.down_proj": (INTERMEDIATE, HIDDEN)}
PREFIX = "base_model.model."


def write_adapter(folder: Path, layers: int, r: int, seed: int) -> None:
    """Random A and B (float32) for every module, and a PEFT config; no base model needed."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(layers):
        for name, (fan_in, fan_out) in SHAPES.items():
            key = f"{PREFIX}model.layers.{layer}.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(r, fan_in, generator=gen) / math.sqrt(fan_in)
            tensors[f"{key}.lora_B.weight"] = torch.randn(fan_out, r, generator=gen) * 0.01
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 2 * r,
              "target_modules": sorted({n.rsplit(".", 1)[-1] for n in SHAPES}),
              "base_model_name_or_path": "meta-llama/Meta-Llama-3-8B"}
    (folder / "adapter_config.json").write_text(json.dumps(config))


def dense(a: Path, b: Path, scaling: float) -> tuple[dict[str, float], float]:
    """module -> ||dA - dB|| / ||dB|| with the deltas formed in float32, and the seconds it took."""
    import torch
    from safetensors import safe_open

    start = time.perf_counter()
    out = {}
    with safe_open(str(a / "adapter_model.safetensors"), "pt") as ha, \
            safe_open(str(b / "adapter_model.safetensors"), "pt") as hb:
        modules = sorted({k[len(PREFIX):].rsplit(".lora_", 1)[0] for k in ha.keys()})  # noqa: SIM118
        for module in modules:
            key = f"{PREFIX}{module}"
            da = scaling * (ha.get_tensor(f"{key}.lora_B.weight") @ ha.get_tensor(f"{key}.lora_A.weight"))
            db = scaling * (hb.get_tensor(f"{key}.lora_B.weight") @ hb.get_tensor(f"{key}.lora_A.weight"))
            out[module] = float(torch.linalg.vector_norm(da - db) / torch.linalg.vector_norm(db))
    return out, time.perf_counter() - start


def dense64(a: Path, b: Path, module: str, scaling: float) -> float:
    """One module's ``||dA - dB|| / ||dB||`` with the deltas formed in float64: the accuracy reference."""
    import torch
    from safetensors import safe_open

    key = f"{PREFIX}{module}"
    deltas = []
    for folder in (a, b):
        with safe_open(str(folder / "adapter_model.safetensors"), "pt") as h:
            deltas.append(scaling * (h.get_tensor(f"{key}.lora_B.weight").double()
                                     @ h.get_tensor(f"{key}.lora_A.weight").double()))
    return float(torch.linalg.vector_norm(deltas[0] - deltas[1]) / torch.linalg.vector_norm(deltas[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args()

    from registry.deltas import Side, compare_weights
    from registry.inspect import inspect_adapter

    with tempfile.TemporaryDirectory(prefix="adreg-diff-bench-") as tmp:
        a, b = Path(tmp) / "a", Path(tmp) / "b"
        write_adapter(a, args.layers, args.rank, seed=1)
        write_adapter(b, args.layers, args.rank, seed=2)
        manifests = [inspect_adapter(f, scan=False) for f in (a, b)]
        compare_weights(Side(a / "adapter_model.safetensors", manifests[0], "a"),  # warm-up: imports, page cache
                        Side(b / "adapter_model.safetensors", manifests[1], "b"))
        start = time.perf_counter()
        ours = compare_weights(Side(a / "adapter_model.safetensors", manifests[0], "a"),
                               Side(b / "adapter_model.safetensors", manifests[1], "b"))
        ours_s = time.perf_counter() - start
        reference, dense_s = dense(a, b, scaling=2.0)
        first = ours.modules[0]
        exact = dense64(a, b, first.module, scaling=2.0)
    worst = max(abs(m.distance - reference[m.module]) / reference[m.module] for m in ours.modules if m.distance)
    largest = max(fan_in * fan_out for fan_in, fan_out in SHAPES.values()) * 4
    print(f"{len(ours.modules)} modules (hidden {HIDDEN}, intermediate {INTERMEDIATE}, r={args.rank}, "
          f"{args.layers} layers)")
    print(f"thin factors (float64 Gram): {ours_s:.2f} s")
    print(f"dense deltas (float32):      {dense_s:.2f} s  (each formed delta up to {largest / 2**20:.0f} MiB)")
    print(f"ratio: {dense_s / ours_s:.1f}x faster; largest relative disagreement with the float32 dense "
          f"distances {worst:.1e}")
    print(f"accuracy on {first.module} against float64 dense deltas: ours {abs(first.distance - exact) / exact:.1e}, "
          f"float32 dense {abs(reference[first.module] - exact) / exact:.1e} (relative)")


if __name__ == "__main__":
    main()
