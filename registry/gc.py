"""`adreg gc`: files in the artifact store that nothing references (dry run unless applied)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from registry import models as m

if TYPE_CHECKING:
    from registry.service import Service


TMP_AGE_SECONDS = 600  # a temporary file this old belongs to no write in progress


def stale_temporary_files(root: Path) -> list[Path]:
    """``.tmp-*`` files and folders of interrupted writes in the store (blobs, adapter folders), older than
    :data:`TMP_AGE_SECONDS` so that writes in progress are never counted. Job scratch is judged by its job."""
    if not root.exists():
        return []
    cutoff = time.time() - TMP_AGE_SECONDS
    found = []
    for pattern in (".tmp-*", "*/.tmp-*", "*/*/.tmp-*"):
        found += [p for p in root.glob(pattern) if p.parts[len(root.parts)] not in ("scratch", "checkpoints")
                  and p.lstat().st_mtime < cutoff]
    return sorted(found)


def collect(svc: Service, *, apply: bool = False) -> dict[str, Any]:
    """Unreferenced blobs, adapter folders (those of hard-deleted versions included), scratch of finished jobs and
    stale temporary files; removed if ``apply``."""
    root = svc.store.root
    v = m.AdapterVersion
    with svc.sessions() as s:
        # A hard-deleted (purged) version refers to nothing: its files go once no other version (live or
        # soft-deleted) and no unfinished job's input uses them.
        kept = s.execute(select(v.storage_path, v.weights_sha256).where(v.purged_at.is_(None))).all()
        used = {p for p, _ in kept}
        shas = {sha for _, sha in kept}
        unfinished = s.execute(select(m.Job.id, m.Job.spec).where(m.Job.status.in_(("queued", "running")))).all()
        live = {jid for jid, _ in unfinished}
        inputs = {(spec or {}).get("version_id") for _, spec in unfinished} - {None}  # validate, publish
        for _, spec in unfinished:
            for source in (spec or {}).get("sources") or []:  # merge, train
                used.add(source.get("storage_path"))
                shas.add(source.get("weights_sha256"))
        if inputs:
            for path, sha in s.execute(select(v.storage_path, v.weights_sha256).where(v.id.in_(inputs))):
                used.add(path)
                shas.add(sha)
    candidates = []
    adapters = root / "adapters"
    if adapters.exists():
        candidates += [p for p in adapters.iterdir() if f"adapters/{p.name}" not in used]
    blobs = root / "blobs"
    if blobs.exists():
        candidates += [p for p in blobs.glob("*/*.safetensors") if p.stem not in shas]
    candidates += stale_temporary_files(root)
    for folder in ("scratch", "checkpoints"):
        base = root / folder
        if base.exists():
            candidates += [p for p in base.iterdir() if not (p.name.startswith("job-") and
                                                             p.name[4:].isdigit() and int(p.name[4:]) in live)]
    size = sum(f.stat().st_size for p in candidates for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
    if apply:
        for path in candidates:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return {"applied": apply, "paths": [str(p.relative_to(root)) for p in sorted(candidates)], "bytes": size}
