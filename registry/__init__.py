"""adapter-registry: a catalog and job pipeline for LoRA adapters.

``from registry import Registry`` is the SDK; ``adreg`` is the CLI over the same calls.
"""

from registry.errors import (
    AdapterNotFound,
    IncompatibleAdapters,
    IncompatibleBaseModel,
    InvalidAdapter,
    RegistryError,
)
from registry.sdk import Registry
from registry.types import AdapterVersion, BaseModelInfo, LineageGraph

__all__ = [
    "AdapterNotFound",
    "AdapterVersion",
    "BaseModelInfo",
    "IncompatibleAdapters",
    "IncompatibleBaseModel",
    "InvalidAdapter",
    "LineageGraph",
    "Registry",
    "RegistryError",
]
__version__ = "0.1.0"
