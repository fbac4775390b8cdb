"""Settings, read from the environment. Every setting has a default that works on one machine.

| variable              | default                              |
|-----------------------|--------------------------------------|
| ``ADREG_HOME``        | ``~/.adreg``                         |
| ``ADREG_DATABASE_URL``| ``sqlite:///$ADREG_HOME/catalog.db`` |
| ``ADREG_ARTIFACT_DIR``| ``$ADREG_HOME/artifacts``            |
| ``ADREG_BROKER_URL``  | unset: jobs run in-process           |
| ``ADREG_GPU_FALLBACK_TO_CPU`` | unset: GPU jobs go to queue gpu |
| ``ADREG_MAX_ADAPTER_BYTES`` | ``8GiB``: larger weights files are refused before any copy |

The fixed limits on what an adapter folder may hold (header and config sizes) live here too, so that every
reader of an adapter folder refuses the same things.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from registry.errors import RegistryError

DEFAULT_MAX_ADAPTER_BYTES = 8 << 30  # 8 GiB: a rank-256 adapter on every linear layer of a 70B model is ~3.3 GB
MAX_SAFETENSORS_HEADER_BYTES = 8 << 20  # 8 MiB of JSON: ~50k tensor entries; real LoRA headers are < 1 MiB
MAX_CONFIG_BYTES = 1 << 20  # 1 MiB: PEFT writes adapter_config.json of a few KB
MAX_CONFIG_DEPTH = 32  # nesting of JSON arrays/objects in adapter_config.json (PEFT's are 3 deep)

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30,
          "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40}
_SIZE = re.compile(r"^\s*(\d{1,20})\s*([A-Za-z]*)\s*$")


def parse_size(text: str, variable: str = "ADREG_MAX_ADAPTER_BYTES") -> int:
    """A byte count: ``8589934592``, ``8GiB``, ``512M`` (binary units, case-insensitive); at least 1."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS or int(match.group(1)) < 1:
        raise RegistryError(f"{variable}={text!r} is not a size (write bytes, or e.g. 8GiB, 512MiB)")
    return int(match.group(1)) * _UNITS[unit]


def max_adapter_bytes() -> int:
    """``ADREG_MAX_ADAPTER_BYTES`` from the environment, or the default (8 GiB)."""
    raw = os.environ.get("ADREG_MAX_ADAPTER_BYTES", "").strip()
    return parse_size(raw) if raw else DEFAULT_MAX_ADAPTER_BYTES


@dataclass(frozen=True)
class Settings:
    """Where the catalog, the artifacts and the broker live."""

    home: Path
    database_url: str
    artifact_dir: Path
    broker_url: str | None = None
    gpu_queue_fallback: bool = False  # route GPU jobs to the cpu queue (no GPU worker in this deployment)
    max_adapter_bytes: int = DEFAULT_MAX_ADAPTER_BYTES  # weights files above this are refused at registration
    job_lease_seconds: float = 120.0  # a running job's lease, renewed by its heartbeat (ADREG_JOB_LEASE_SECONDS)
    queued_grace_seconds: float = 300.0  # a queued job untaken this long is re-sent (ADREG_QUEUED_GRACE_SECONDS)

    @classmethod
    def from_env(cls, database_url: str | None = None, home: str | Path | None = None) -> Settings:
        home_path = Path(home or os.environ.get("ADREG_HOME") or Path.home() / ".adreg").expanduser()
        url = database_url or os.environ.get("ADREG_DATABASE_URL") or f"sqlite:///{home_path / 'catalog.db'}"
        artifacts = Path(os.environ.get("ADREG_ARTIFACT_DIR") or home_path / "artifacts").expanduser()
        return cls(
            home=home_path,
            database_url=url,
            artifact_dir=artifacts,
            broker_url=os.environ.get("ADREG_BROKER_URL") or None,
            gpu_queue_fallback=os.environ.get("ADREG_GPU_FALLBACK_TO_CPU", "").lower() in ("1", "true", "yes"),
            max_adapter_bytes=max_adapter_bytes(),
            job_lease_seconds=float(os.environ.get("ADREG_JOB_LEASE_SECONDS", "120")),
            queued_grace_seconds=float(os.environ.get("ADREG_QUEUED_GRACE_SECONDS", "300")),
        )

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
