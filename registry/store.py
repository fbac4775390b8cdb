"""Content-addressed artifact store.

Weights live once, under their sha256: ``blobs/<sha[:2]>/<sha>.safetensors``. Each registered version
gets a PEFT-loadable folder ``adapters/<sha>-<config sha[:12]>/`` holding its ``adapter_config.json``
and a hard link to the blob (a copy where links are not possible). Every write goes to a temporary
name first and is renamed into place, so a reader never sees a partial file. Every path the store
hands out is checked to lie inside its root.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from registry.errors import UnsafePath

_HEX = re.compile(r"^[0-9a-f]{64}$")
WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"


def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def config_sha256(config: dict[str, Any]) -> str:
    """The sha256 of a config's canonical JSON: with the weights' sha256, what identifies a version."""
    return hashlib.sha256(canonical_json(config)).hexdigest()


class ArtifactStore:
    """Files of the catalog under one root directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def _inside(self, relative: str | Path) -> Path:
        path = (self.root / relative).resolve()
        if path != self.root and self.root not in path.parents:
            raise UnsafePath(f"{relative!s} resolves outside the artifact store {self.root}")
        return path

    def path(self, relative: str) -> Path:
        """Absolute path of a stored folder or file, refusing anything outside the store."""
        return self._inside(relative)

    def _blob(self, sha256: str) -> Path:
        if not _HEX.match(sha256):
            raise UnsafePath(f"{sha256!r} is not a sha256 digest")
        return self._inside(Path("blobs") / sha256[:2] / f"{sha256}.safetensors")

    def put_adapter(self, weights: Path, sha256: str, config: dict[str, Any]) -> str:
        """Store ``weights`` (already hashed to ``sha256``) with ``config``; return the folder's relative path.

        Idempotent: storing the same weights and config again returns the same folder.
        """
        blob = self._blob(sha256)
        if not blob.exists():
            blob.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=blob.parent, prefix=".tmp-", delete=False) as tmp:
                with weights.open("rb") as src:
                    shutil.copyfileobj(src, tmp, 1 << 22)
                tmp.flush()
                os.fsync(tmp.fileno())
            os.replace(tmp.name, blob)
        relative = f"adapters/{sha256}-{config_sha256(config)[:12]}"
        folder = self._inside(relative)
        if folder.exists():
            return relative
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
        try:
            (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            try:
                os.link(blob, staging / WEIGHTS_FILE)
            except OSError:
                shutil.copy2(blob, staging / WEIGHTS_FILE)
            try:
                os.rename(staging, folder)
            except OSError:
                if not folder.exists():  # another process may have won the race with the same content
                    raise
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return relative
