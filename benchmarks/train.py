"""Training job overhead: tokens/s of an `adreg` training job vs a plain PEFT + Trainer script, same steps.

Both sides continue the same adapter on the same data with the same Trainer settings; the job adds the
catalog, the pre/post checks (trainable parameters, layer status, loaded-weights check, base digest),
checkpoints and registration. Prints both rates and the overhead (goal: under 5%).

    python benchmarks/train.py --steps 200 [--hidden 256 --layers 4 --repeats 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def plain(base: Path, adapter: Path, data: Path, steps: int, batch: int, lr: float) -> float:
    """The reference: PEFT + Trainer, nothing else. Returns seconds for load + train + save."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from registry.trainset import load_rows

    start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    rows = load_rows(data, "json")

    def encode(ex):  # type: ignore[no-untyped-def]
        ids = tok(ex["text"] + tok.eos_token, truncation=True, max_length=256)["input_ids"]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)}

    train = rows.map(encode, remove_columns=rows.column_names)
    out = Path(tempfile.mkdtemp())
    args = TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch, learning_rate=lr,
                             lr_scheduler_type="constant", logging_steps=1, save_strategy="steps", save_steps=50,
                             report_to=[], seed=0, use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
                             remove_unused_columns=False)
    trainer = Trainer(model=model, args=args, train_dataset=train,
                      data_collator=DataCollatorForSeq2Seq(tok, label_pad_token_id=-100, padding=True))
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    model.save_pretrained(out / "final")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, alternated; the best is kept")
    args = parser.parse_args()

    from registry import Registry
    from workers.tinymodels import build_adapter, build_base, quiet_hf

    quiet_hf()
    work = Path(tempfile.mkdtemp(prefix="adreg-train-bench-"))
    base = build_base(work / "base", hidden_size=args.hidden, intermediate_size=args.hidden * 2,
                      num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=4)
    adapter = build_adapter(base, work / "adapter", r=16, alpha=32,
                            targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    data = work / "data.jsonl"
    with data.open("w") as fh:
        for i in range(400):
            fh.write(json.dumps({"text": f"example {i}: the quick brown fox jumps over the lazy dog. " * 3}) + "\n")
    # tokens per step are the same on both sides: the same rows, tokenizer and batch size
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    lengths = [len(tok(json.loads(line)["text"] + tok.eos_token)["input_ids"]) for line in data.open()]
    tokens = sum(lengths) / len(lengths) * args.batch * args.steps

    plain(base, adapter, data, 5, args.batch, 1e-4)  # warm-up (imports, kernels)
    reg = Registry(home=work / "home")
    reg.register(adapter, name="bench", base_path=base)
    plain_times, job_times, jobs = [], [], []
    for _ in range(args.repeats):  # alternated, so that load from elsewhere falls on both sides alike
        plain_times.append(plain(base, adapter, data, args.steps, args.batch, 1e-4))
        start = time.perf_counter()
        job = reg.train("bench:1", data=data, steps=args.steps, lr=1e-4, batch_size=args.batch, checkpoint_every=50)
        job_times.append(time.perf_counter() - start)
        assert job.status == "succeeded", job.error
        jobs.append(job)
    plain_s, job_s = min(plain_times), min(job_times)
    job = jobs[job_times.index(job_s)]
    print(f"Llama-shaped base: hidden {args.hidden}, {args.layers} layers; adapter r=16 on 7 projections; "
          f"{args.steps} steps x batch {args.batch} (~{tokens / args.steps:.0f} tokens/step), device "
          f"{job.report['device']}; best of {args.repeats} alternated runs per side")
    print(f"plain PEFT + Trainer: {plain_s:.2f}s, {tokens / plain_s:,.0f} tokens/s")
    print(f"adreg train job:      {job_s:.2f}s, {tokens / job_s:,.0f} tokens/s "
          f"(eval loss {job.report['eval_loss_before']:.3f} -> {job.report['eval_loss_after']:.3f})")
    print("job time by phase: " + ", ".join(f"{k} {v:.2f}s" for k, v in job.report["timings"].items()))
    overhead = job_s / plain_s - 1
    print(f"job overhead: {overhead:+.1%} (goal < 5%: {'PASS' if overhead < 0.05 else 'FAIL'}); the job also runs "
          f"two evaluations on {job.report['eval_rows']} held-out rows, the pre/post checks and registration")


if __name__ == "__main__":
    main()
