"""Content-addressed artifact store.

Weights live once, under their sha256: ``blobs/<sha[:2]>/<sha>.safetensors``. Each registered version
gets a PEFT-loadable folder ``adapters/<sha>-<config sha[:12]>/`` holding its ``adapter_config.json``
and a hard link to the blob (a copy where links are not possible). Every write goes to a temporary
name first and is renamed into place, so a reader never sees a partial file; on any error the temporary
files are removed, and a full disk is reported as :class:`StorageFull` ("no space left on <path>"). A copy
is hashed while it is written and refused if it is not the content it was registered as. Every path the
store hands out is checked to lie inside its root.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from registry.errors import InvalidAdapter, RegistryError, UnsafePath

_HEX = re.compile(r"^[0-9a-f]{64}$")
WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
COPY_CHUNK = 4 << 20
_FULL = (errno.ENOSPC, errno.EDQUOT)


class StorageError(RegistryError):
    """The artifact store could not be written (permissions, a read-only file system, ...)."""


class StorageFull(StorageError):
    """No space (or quota) left where the artifact store writes; nothing partial was left behind."""


def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def config_sha256(config: dict[str, Any]) -> str:
    """The sha256 of a config's canonical JSON: with the weights' sha256, what identifies a version."""
    return hashlib.sha256(canonical_json(config)).hexdigest()


def _human(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


@contextmanager
def _storage_errors(where: Path) -> Iterator[None]:
    """OSErrors of a store write as :class:`StorageFull` / :class:`StorageError` naming ``where``."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _FULL:
            raise StorageFull(
                f"no space left on {where} (the artifact store); nothing was registered",
                hint="free space there, or point ADREG_ARTIFACT_DIR at a larger volume",
            ) from None
        raise StorageError(f"cannot write to the artifact store at {where}: {exc.strerror or exc}") from None


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

    def has_blob(self, sha256: str) -> bool:
        """Whether the weights with this sha256 are stored (an upload of them can be skipped)."""
        return self._blob(sha256).is_file()

    def blob_path(self, sha256: str) -> Path:
        return self._blob(sha256)

    def incoming_blob(self, sha256: str, max_bytes: int) -> IncomingBlob:
        """A writer for weights arriving in pieces (an HTTP upload): see :class:`IncomingBlob`."""
        return IncomingBlob(self._blob(sha256), sha256, max_bytes)

    @contextmanager
    def staged_adapter(self, sha256: str, config: dict[str, Any], label: str = "staged") -> Iterator[Path]:
        """A temporary PEFT folder (this config + the stored blob, hard-linked) under ``scratch/``, removed on exit:
        how uploaded weights go through the same checks as a folder on disk."""
        scratch = self.root / "scratch"
        scratch.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=scratch))
        try:
            (folder / CONFIG_FILE).write_text(json.dumps(config))
            (folder / WEIGHTS_FILE).hardlink_to(self._blob(sha256))
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def data_file(self, sha256: str, suffix: str) -> Path:
        """Where an uploaded training-data file with this content and suffix (``.jsonl``, ...) is kept."""
        if not _HEX.match(sha256) or suffix not in DATA_SUFFIXES:
            raise UnsafePath(f"{sha256[:80]!r}{suffix[:20]!r} is not a sha256 digest and a data-file suffix "
                             f"({', '.join(DATA_SUFFIXES)})")
        return self._inside(Path("data") / f"{sha256}{suffix}")

    def put_data(self, file: Path, sha256: str, suffix: str) -> Path:
        """Store a data file (already hashed to ``sha256``) content-addressed, as an upload is; idempotent."""
        target = self.data_file(sha256, suffix)
        if not target.is_file():
            self._copy_blob(file, sha256, target)
        return target

    @staticmethod
    def adapter_folder(sha256: str, config: dict[str, Any]) -> str:
        """The relative folder a version with these weights and this config is stored in."""
        return f"adapters/{sha256}-{config_sha256(config)[:12]}"

    def _free_space_for(self, path: Path, size: int) -> None:
        """Refuse, before writing anything, a copy that cannot fit (the write itself still handles ENOSPC)."""
        existing = next((p for p in (path, *path.parents) if p.exists()), None)
        if existing is None:
            return
        free = shutil.disk_usage(existing).free
        if free < size:
            raise StorageFull(
                f"no space left on {existing} (the artifact store): the weights need {_human(size)}, "
                f"{_human(free)} is free; nothing was registered",
                hint="free space there, or point ADREG_ARTIFACT_DIR at a larger volume",
            )

    def _copy_blob(self, weights: Path, sha256: str, blob: Path) -> None:
        """Copy ``weights`` to ``blob`` through a temporary file, checking its sha256 on the way."""
        try:
            src = weights.open("rb")
        except OSError as exc:
            raise InvalidAdapter(str(weights), [f"{WEIGHTS_FILE} cannot be read: {exc.strerror or exc}"]) from None
        tmp: Path | None = None
        try:
            self._free_space_for(blob.parent, os.fstat(src.fileno()).st_size)
            with _storage_errors(blob.parent):
                blob.parent.mkdir(parents=True, exist_ok=True)
                fd, name = tempfile.mkstemp(dir=blob.parent, prefix=".tmp-")
                tmp = Path(name)
                digest = hashlib.sha256()
                with os.fdopen(fd, "wb") as out:
                    while block := src.read(COPY_CHUNK):
                        digest.update(block)
                        out.write(block)
                    out.flush()
                    os.fsync(out.fileno())
            if digest.hexdigest() != sha256:
                raise InvalidAdapter(str(weights), [
                    f"{WEIGHTS_FILE} changed while it was registered (sha256 {digest.hexdigest()[:12]}, inspected "
                    f"as {sha256[:12]}); register it again once nothing writes to it"])
            with _storage_errors(blob.parent):
                os.replace(tmp, blob)
            tmp = None
        finally:
            src.close()
            if tmp is not None:
                tmp.unlink(missing_ok=True)

    def put_adapter(self, weights: Path, sha256: str, config: dict[str, Any]) -> str:
        """Store ``weights`` (already hashed to ``sha256``) with ``config``; return the folder's relative path.

        Idempotent: storing the same weights and config again returns the same folder. On any error nothing
        partial is left: temporary files are removed; a full disk raises :class:`StorageFull`, another write
        error :class:`StorageError`, weights whose content is not ``sha256`` :class:`InvalidAdapter`.
        """
        blob = self._blob(sha256)
        if not blob.exists():
            self._copy_blob(weights, sha256, blob)
        relative = self.adapter_folder(sha256, config)
        folder = self._inside(relative)
        if folder.exists():
            return relative
        staging: Path | None = None
        try:
            with _storage_errors(folder.parent):
                folder.parent.mkdir(parents=True, exist_ok=True)
                staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
                (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
                try:
                    os.link(blob, staging / WEIGHTS_FILE)
                except OSError as exc:
                    if exc.errno in _FULL:
                        raise
                    shutil.copy2(blob, staging / WEIGHTS_FILE)
                try:
                    os.rename(staging, folder)
                except OSError:
                    if not folder.exists():  # another process may have won the race with the same content
                        raise
        finally:
            if staging is not None and staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return relative


DATA_SUFFIXES = (".jsonl", ".json", ".txt", ".text", ".parquet", ".csv")


class IncomingBlob:
    """Weights received in pieces, written to a temporary file beside their blob and hashed on the way.

    A thread of its own hashes and writes each piece while the caller receives the next (hashlib and file
    writes release the GIL), through a bounded queue. :meth:`commit` moves the file into place only if it hashes
    to the announced sha256; :meth:`discard` (or leaving a ``with`` block without committing) removes the
    temporary file, so an interrupted or refused upload leaves nothing behind. More than ``max_bytes`` is
    refused while it arrives.
    """

    QUEUE_PIECES = 64

    def __init__(self, blob: Path, sha256: str, max_bytes: int) -> None:
        import queue
        import threading

        self.blob, self.sha256, self.max_bytes = blob, sha256, max_bytes
        self.size = 0
        self._digest = hashlib.sha256()
        with _storage_errors(blob.parent):
            blob.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=blob.parent, prefix=".tmp-")
        self._tmp: Path | None = Path(name)
        self._out = os.fdopen(fd, "wb")
        self._pieces: queue.Queue[bytes | None] = queue.Queue(self.QUEUE_PIECES)
        self._error: BaseException | None = None
        self._writer = threading.Thread(target=self._drain, daemon=True, name="adreg-upload-writer")
        self._writer.start()

    def _drain(self) -> None:
        while (piece := self._pieces.get()) is not None:
            if self._error is not None:
                continue  # keep consuming so a producer never blocks on a full queue
            try:
                self._digest.update(piece)
                self._out.write(piece)
            except OSError as exc:
                self._error = exc

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise InvalidAdapter("the upload", [f"the file is larger than the limit ({self.max_bytes:,} bytes, "
                                                "ADREG_MAX_ADAPTER_BYTES); nothing was stored"])
        self._raise_write_error()
        self._pieces.put(data)

    def _finish_writing(self) -> None:
        if self._writer.is_alive():
            self._pieces.put(None)
            self._writer.join()

    def _raise_write_error(self) -> None:
        if self._error is not None:
            with _storage_errors(self.blob.parent):
                raise self._error

    def commit(self) -> None:
        """Check the hash, then move the file into the store (a no-op if the same blob arrived meanwhile)."""
        self._finish_writing()
        self._raise_write_error()
        actual = self._digest.hexdigest()
        if actual != self.sha256:
            raise InvalidAdapter("the upload", [f"the bytes received hash to {actual[:12]}, not the announced "
                                                f"{self.sha256[:12]} (a truncated or altered upload); nothing was "
                                                "stored"])
        with _storage_errors(self.blob.parent):
            self._out.flush()
            os.fsync(self._out.fileno())
            self._out.close()
            os.replace(self._tmp, self.blob)  # type: ignore[arg-type]
        self._tmp = None

    def keep(self) -> None:
        """Move the file into place without checking its hash (a file whose sha256 is not known in advance)."""
        self._finish_writing()
        self._raise_write_error()
        with _storage_errors(self.blob.parent):
            self._out.close()
            os.replace(self._tmp, self.blob)  # type: ignore[arg-type]
        self._tmp = None

    def discard(self) -> None:
        self._finish_writing()
        if not self._out.closed:
            self._out.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None

    def __enter__(self) -> IncomingBlob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()
