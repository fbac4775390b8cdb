"""Settings, read from the environment. Every setting has a default that works on one machine.

| variable              | default                              |
|-----------------------|--------------------------------------|
| ``ADREG_HOME``        | ``~/.adreg``                         |
| ``ADREG_DATABASE_URL``| ``sqlite:///$ADREG_HOME/catalog.db`` |
| ``ADREG_ARTIFACT_DIR``| ``$ADREG_HOME/artifacts``            |
| ``ADREG_BROKER_URL``  | unset: jobs run in-process           |
| ``ADREG_GPU_FALLBACK_TO_CPU`` | unset: GPU jobs go to queue gpu |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    """Where the catalog, the artifacts and the broker live."""

    home: Path
    database_url: str
    artifact_dir: Path
    broker_url: str | None = None
    gpu_queue_fallback: bool = False  # route GPU jobs to the cpu queue (no GPU worker in this deployment)

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
        )

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
