"""Tiny base models and PEFT adapters built locally (no downloads): for `adreg demo`, tests and benchmarks.

Every model is built from a config with a fixed seed and saved with safetensors; every adapter is
made by PEFT itself (``get_peft_model`` + ``save_pretrained``) with its LoRA B matrices randomised so
that the adapter is not a no-op. Bases: causal LMs (Llama, GPT-2, Qwen2), BERT (bare, sequence and token
classification) and T5 (seq2seq), each with the same character-level tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from workers.quiet import quiet_hf, quiet_loading

__all__ = ["LLAMA_TARGETS", "build_adapter", "build_base", "load_base", "quiet_hf", "tiny_llama_config"]

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BERT_TARGETS = ["query", "value"]
T5_TARGETS = ["q", "v"]


# The tiny decoder shared by the Llama and Qwen2 builds (same field names in both configs).
_TINY_DECODER: dict[str, Any] = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    tie_word_embeddings=False,
)


def tiny_llama_config(**overrides: Any) -> LlamaConfig:
    return LlamaConfig(**{**_TINY_DECODER, **overrides})


def save_char_tokenizer(path: Path) -> None:
    """A character-level tokenizer over printable ASCII (100 ids, fits the tiny vocab), with a chat template."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "\n": 4}
    for code in range(32, 127):
        vocab[chr(code)] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    tok.save_pretrained(path)


# A tiny BERT (3 labels for the classification heads) and a tiny T5; the ids fit the character tokenizer's
# (<pad> 0, </s> 2).
_TINY_BERT: dict[str, Any] = dict(
    vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    max_position_embeddings=128, num_labels=3, pad_token_id=0,
)
_TINY_T5: dict[str, Any] = dict(
    vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
    pad_token_id=0, eos_token_id=2, decoder_start_token_id=0,
)
_BERT_CLASSES = {"bert": BertModel, "bert-seq-cls": BertForSequenceClassification,
                 "bert-token-cls": BertForTokenClassification}


def build_base(path: Path, arch: str = "llama", seed: int = 0, **overrides: Any) -> Path:
    """Save a tiny randomly initialised model of ``arch``, with a tokenizer, to ``path``: causal LMs (llama,
    gpt2, qwen2), bert (BertModel), bert-seq-cls, bert-token-cls, t5 (T5ForConditionalGeneration)."""
    torch.manual_seed(seed)
    if arch in _BERT_CLASSES:
        model = _BERT_CLASSES[arch](BertConfig(**{**_TINY_BERT, **overrides}))
    elif arch == "t5":
        model = T5ForConditionalGeneration(T5Config(**{**_TINY_T5, **overrides}))
    elif arch == "llama":
        model = LlamaForCausalLM(tiny_llama_config(**overrides))
    elif arch == "gpt2":
        cfg = dict(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=128, bos_token_id=0, eos_token_id=0)
        cfg.update(overrides)
        model = GPT2LMHeadModel(GPT2Config(**cfg))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**{**_TINY_DECODER, **overrides}))
    else:
        raise ValueError(arch)
    path.mkdir(parents=True, exist_ok=True)
    with quiet_loading():
        model.save_pretrained(path, safe_serialization=True)
    save_char_tokenizer(path)
    return path


def load_base(path: Path) -> torch.nn.Module:
    """The base saved at ``path``, as its own architecture (config.json's ``architectures``)."""
    config = transformers.AutoConfig.from_pretrained(path)
    cls = getattr(transformers, (config.architectures or ["AutoModelForCausalLM"])[0])
    with quiet_loading():
        return cls.from_pretrained(path, dtype=torch.float32)


def build_adapter(
    base_path: Path,
    out: Path,
    *,
    r: int = 4,
    alpha: int = 8,
    targets: list[str] | str | None = None,
    seed: int = 1,
    dtype: torch.dtype | None = None,
    task_type: str = "CAUSAL_LM",
    **lora_kwargs: Any,
) -> Path:
    """Make a LoRA adapter on the base at ``base_path`` with PEFT and save it to ``out``.

    The adapter's ``base_model_name_or_path`` is the base folder. Both A and B are random (PEFT
    initialises B to zero), so the adapter changes the model's output; so are the copies of any
    ``modules_to_save`` (perturbed from the base's) and trainable-token deltas.
    """
    if targets is None:
        targets = ["q_proj", "v_proj"]
    base = load_base(base_path)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, task_type=task_type, **lora_kwargs)
    with quiet_loading():
        model = get_peft_model(base, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name or "trainable_tokens_delta" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
            elif ".modules_to_save." in name:
                param.add_(torch.randn(param.shape, generator=gen) * 0.1)
    if dtype is not None:
        model = model.to(dtype)
    with quiet_loading():
        model.save_pretrained(out)
    return out
