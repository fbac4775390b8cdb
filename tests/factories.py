"""Test-side name for the tiny model builders (they live in the package so `adreg demo` can use them)."""

from workers.tinymodels import LLAMA_TARGETS, build_adapter, build_base, load_base, tiny_llama_config

__all__ = ["LLAMA_TARGETS", "build_adapter", "build_base", "load_base", "tiny_llama_config"]
