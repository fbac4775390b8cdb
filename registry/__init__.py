"""adapter-registry: a catalog and job pipeline for LoRA adapters.

``from registry import Registry`` is the SDK (the embedded catalog, or ``Registry("https://...")`` for a server);
``adreg`` is the CLI over the same calls.
"""

from registry.errors import (
    AdapterNotFound,
    ConflictError,
    Forbidden,
    IncompatibleAdapters,
    IncompatibleBaseModel,
    InvalidAdapter,
    RegistryError,
    ServiceUnavailable,
    Unauthenticated,
)
from registry.jobs import Job, JobFailed
from registry.remote import RemoteRegistry
from registry.sdk import Registry
from registry.types import AdapterVersion, BaseModelInfo, LineageGraph

__all__ = [
    "AdapterNotFound",
    "AdapterVersion",
    "BaseModelInfo",
    "ConflictError",
    "Forbidden",
    "IncompatibleAdapters",
    "IncompatibleBaseModel",
    "InvalidAdapter",
    "Job",
    "JobFailed",
    "LineageGraph",
    "Registry",
    "RegistryError",
    "RemoteRegistry",
    "ServiceUnavailable",
    "Unauthenticated",
]
__version__ = "0.1.0"
