"""One identity per base model: a Hub id, or a local folder resolved to its absolute path.

PEFT writes ``base_model_name_or_path`` exactly as it was passed to ``from_pretrained``: often a path
relative to wherever training ran (``llama-base``). Taken literally, the same base would become several
catalog records (one per working directory) and a phantom record with no shapes. So a name from an
adapter config is resolved here, once, before it reaches the catalog:

1. a name that is a folder (``config.json`` inside) relative to the adapter folder, its parent, or the
   working directory (or an absolute one) is that folder, by its absolute path;
2. otherwise, with ``--base-path DIR``: a Hub-shaped name (``org/name``), or any name the user gave with
   ``--base``, is that Hub id with ``DIR`` as its local copy; any other name is the folder ``DIR``;
3. otherwise a Hub-shaped name, or one given with ``--base``, is a Hub id whose shapes are not checked;
4. anything else (a relative name found nowhere, a path that does not exist) is refused with a hint.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from registry.errors import BaseModelNotFound, InvalidAdapter, RegistryError

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_HINT = ("pass --base-path DIR (the base model's folder, to record and check its shapes), or --base ORG/NAME "
         "to record a Hub model id")


@dataclass(frozen=True)
class BaseIdentity:
    """The catalog name of a base model and the local folder to read its config from (if any)."""

    name: str
    local_path: Path | None


def _is_model_folder(path: Path) -> bool:
    try:
        return (path / "config.json").is_file()
    except OSError:  # e.g. a name too long to be a path: not a folder
        return False


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name in (".", "..")


def candidates(name: str, adapter_folder: Path | None) -> list[Path]:
    """Where a base name may be a folder: as given (absolute or ``~``), else relative to the adapter
    folder, its parent and the working directory, in that order."""
    path = Path(name).expanduser()
    if path.is_absolute():
        return [path]
    places = []
    if adapter_folder is not None:
        folder = adapter_folder.expanduser().resolve()
        places += [folder, folder.parent]
    places.append(Path.cwd())
    return [place / path for place in places]


def resolve_base(
    name: str | None, *, adapter_folder: Path | None, base_path: str | Path | None = None, explicit: bool = False,
) -> BaseIdentity:
    """The identity of the base model ``name`` (from ``--base`` when ``explicit``, else from the adapter config).

    Raises :class:`BaseModelNotFound` with a hint when ``name`` can only be a local folder and none is found.
    """
    local = Path(base_path).expanduser().resolve() if base_path is not None else None
    if local is not None and not _is_model_folder(local):
        raise BaseModelNotFound(f"--base-path {base_path} is not a model folder (no config.json in it)")
    if not name:
        if local is not None:
            return BaseIdentity(str(local), local)
        raise InvalidAdapter(str(adapter_folder), ["adapter_config.json has no base_model_name_or_path"],
                             hint="pass --base NAME or --base-path DIR")
    looked = candidates(name, adapter_folder)
    found = next((p.resolve() for p in looked if _is_model_folder(p)), None)
    if found is not None:
        return BaseIdentity(str(found), local or found)
    hub_shaped = bool(_HUB_ID.match(name)) and not _looks_like_path(name)
    if local is not None:
        return BaseIdentity(name if (hub_shaped or explicit) and not _looks_like_path(name) else str(local), local)
    if hub_shaped or (explicit and not _looks_like_path(name)):
        return BaseIdentity(name, None)
    where = ", ".join(str(p) for p in looked)
    source = "--base" if explicit else "adapter_config.json (base_model_name_or_path)"
    raise BaseModelNotFound(
        f"the base model {name!r} named by {source} is not a model folder here (looked at {where}) "
        "and is not a Hub id of the form org/name",
        hint=_HINT,
    )


def is_hub_id(name: str) -> bool:
    """True for ``org/name`` that is not also a folder here."""
    if not _HUB_ID.match(name) or _looks_like_path(name):
        return False
    try:
        return not Path(name).exists()
    except OSError:
        return True


def card_base_model(base_name: str | None, given: str | None, ref: str) -> str:
    """The Hub id a published model card names as ``base_model``: ``given`` (``--base-model-id``), else the
    version's base when that is a Hub id. Refused, before any job exists, when neither is."""
    if given is not None:
        if not _HUB_ID.match(given):
            raise RegistryError(f"--base-model-id {given!r} is not a Hub id of the form org/name")
        return given
    if base_name and is_hub_id(base_name):
        return base_name
    raise RegistryError(
        f"{ref}: its base model is not a Hub id ({base_name or 'none'}), so the model card's base_model would be "
        "wrong", hint="name the base model's Hub id with --base-model-id ORG/NAME (base_model_id= in the SDK)")


# -- is a folder the same model as another? (linking registrations to named bases) -----------------------------

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_WHOLE_FILE_BYTES = 1 << 20  # a weights file this small is hashed whole
_HEAD_BYTES = 64 << 10  # the safetensors header (tensor names, shapes, offsets) and the first data
_SAMPLES, _SAMPLE_BYTES = 256, 256
_SNAPSHOT = re.compile(r"[0-9a-f]{40}")


def weights_fingerprint(folder: Path) -> str | None:
    """A cheap fingerprint of a model folder's weights, or None when it has no weights file (``*.safetensors``,
    ``*.bin``, ``*.pt``, ``*.pth`` at its top level).

    The config hash does not tell a model from its fine-tune or a twin of the same shape (same ``config.json``,
    other weights), and the recorded base's weights are what validation and ``Registry.load`` use, so a folder is
    taken for a named base only when its weights agree too. Hashing every byte would read gigabytes at each
    registration; this reads each file's name and size, its first 64 KiB and 256 samples of 256 bytes spread over
    it (a file up to 1 MiB whole): about 128 KiB per file, and a change to any sizeable part of the weights (a
    fine-tune, a merged LoRA on even one layer) shows.
    """
    try:
        files = sorted(entry for entry in os.scandir(folder)
                       if entry.name.endswith(WEIGHT_SUFFIXES) and entry.is_file())
    except OSError:
        return None
    if not files:
        return None
    digest = hashlib.sha256()
    try:
        for entry in files:
            size = entry.stat().st_size
            digest.update(f"{entry.name}\0{size}\0".encode())
            with open(entry.path, "rb") as fh:
                if size <= _WHOLE_FILE_BYTES:
                    digest.update(fh.read())
                    continue
                digest.update(fh.read(_HEAD_BYTES))
                for i in range(_SAMPLES):
                    fh.seek(i * (size - _SAMPLE_BYTES) // (_SAMPLES - 1))
                    digest.update(fh.read(_SAMPLE_BYTES))
    except OSError:
        return None
    return digest.hexdigest()


def hub_snapshot(folder: Path) -> tuple[str, str] | None:
    """``(repo id, commit)`` when ``folder`` is a Hugging Face cache snapshot (``.../models--org--name/snapshots/
    <commit sha>``), else None. Hub ids never hold ``--``, so the folder name tells the id exactly."""
    parts = folder.parts
    if len(parts) < 3 or parts[-2] != "snapshots" or not _SNAPSHOT.fullmatch(parts[-1]):
        return None
    if not parts[-3].startswith("models--"):
        return None
    repo = parts[-3].removeprefix("models--").replace("--", "/")
    return (repo, parts[-1]) if _HUB_ID.match(repo) else None
