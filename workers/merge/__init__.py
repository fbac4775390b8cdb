"""The merge engine: every PEFT combination type, computed on the adapters' safetensors without a base model."""

from workers.merge.engine import MergeCancelled, merge_adapters
from workers.merge.report import MergeReport, ModuleReport

__all__ = ["MergeCancelled", "MergeReport", "ModuleReport", "merge_adapters"]
