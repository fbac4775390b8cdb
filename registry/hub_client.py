"""Hugging Face Hub reads with the real ``huggingface_hub`` client: retries, error mapping and pinned downloads.

The token comes from the environment (``HF_TOKEN``) or ``huggingface_hub``'s own login; it is never
written to the catalog, a job spec, a log line or an error message. ``HF_ENDPOINT`` selects the Hub.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from registry.config import max_adapter_bytes
from registry.errors import InvalidAdapter, RegistryError
from registry.inspect import CONVERT_HINT, WEIGHTS_FILE

log = logging.getLogger("adreg.hub")
T = TypeVar("T")


class HubError(RegistryError):
    """A Hub request failed; the message says what to do about it (and never contains the token)."""


class HubNotFound(HubError):
    """The Hub has no such repository or revision (or the token cannot see it)."""


def endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def _scrub(text: str) -> str:
    from huggingface_hub import get_token

    token = get_token()
    return text.replace(token, "***") if token else text


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def hub_call(what: str, fn: Callable[[], T], *, attempts: int = 4, backoff: float = 0.5) -> T:
    """Run a Hub call, retrying transient failures (5xx, 429, connection errors) with exponential backoff,
    and turning the others into :class:`HubError` with an actionable message."""
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except RevisionNotFoundError:
            raise HubNotFound(f"{what}: revision not found on the Hub") from None
        except RepositoryNotFoundError:
            raise HubNotFound(f"{what}: repository not found (or the token cannot see it)") from None
        except HfHubHTTPError as exc:
            status = _status(exc)
            if status in (401, 403):
                raise HubError(f"{what}: the token lacks write access to this repository (HTTP {status})",
                               hint="set HF_TOKEN to a token with write permission on this repository, "
                                    "or run `hf auth login`") from None
            if status == 404:
                raise HubNotFound(f"{what}: repository or revision not found (HTTP 404)") from None
            if status in (409, 412):
                raise HubError(f"{what}: conflict on the Hub (HTTP {status}): the branch moved or the repo "
                               "is in another state; retry or publish to another branch") from None
            if (status is None or status >= 500 or status == 429) and attempt < attempts:
                log.warning("%s: HTTP %s, retrying (%d/%d)", what, status, attempt, attempts)
                time.sleep(backoff * 2 ** (attempt - 1))
                continue
            raise HubError(f"{what}: Hub error (HTTP {status}): {_scrub(str(exc))[:300]}") from None
        except (httpx2.TransportError, ConnectionError) as exc:
            if attempt < attempts:
                time.sleep(backoff * 2 ** (attempt - 1))
                continue
            raise HubError(f"{what}: cannot reach the Hub at {endpoint() or 'huggingface.co'}: {exc}") from None
    raise AssertionError("unreachable")


def api():  # type: ignore[no-untyped-def]
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint())


# -- fetching ---------------------------------------------------------------------------------------


def fetch_adapter(repo_id: str, revision: str | None) -> tuple[Path, str]:
    """Resolve ``revision`` to a commit sha, then download only the config and safetensors at that sha.

    A repository whose weights are pickles only, or larger than ``ADREG_MAX_ADAPTER_BYTES``, is refused before
    anything is downloaded.
    """
    from huggingface_hub import snapshot_download

    label = f"hf://{repo_id}" + (f"@{revision}" if revision else "")
    info = hub_call(label, lambda: api().model_info(repo_id, revision=revision, files_metadata=True))
    files = {s.rfilename for s in info.siblings or []}
    weights_size = next((s.size for s in info.siblings or [] if s.rfilename == WEIGHTS_FILE), None)
    if weights_size is not None and weights_size > max_adapter_bytes():
        raise InvalidAdapter(label, [f"{WEIGHTS_FILE} is {weights_size:,} bytes, more than ADREG_MAX_ADAPTER_BYTES "
                                     f"({max_adapter_bytes():,}); nothing was downloaded"])
    if WEIGHTS_FILE not in files:
        pickles = sorted(f for f in files if f.endswith((".bin", ".pt", ".pth")))
        problems = ([f"the repository has only pickle weights ({', '.join(pickles)}); the registry accepts "
                     "safetensors only, because loading a pickle can run arbitrary code"]
                    if pickles else [f"the repository has no {WEIGHTS_FILE}"])
        raise InvalidAdapter(label, problems, hint=CONVERT_HINT if pickles else None)
    if "adapter_config.json" not in files:
        raise InvalidAdapter(label, ["the repository has no adapter_config.json"])
    folder = hub_call(label, lambda: snapshot_download(
        repo_id, revision=info.sha, allow_patterns=["adapter_config.json", "*.safetensors"], endpoint=endpoint(),
    ))
    return Path(folder), str(info.sha)


MAX_BASE_CONFIG_BYTES = 4 << 20  # a model's config.json is a few KB; a label map of many classes stays well below


def fetch_base_config(repo_id: str, revision: str | None) -> tuple[Path, str]:
    """Resolve ``revision`` (default: the main branch) to a commit sha, then download that commit's ``config.json``
    alone (never weights). Returns the folder holding it (a snapshot folder of the Hub cache) and the sha."""
    from huggingface_hub import hf_hub_download

    label = f"hf://{repo_id}" + (f"@{revision}" if revision else "")
    info = hub_call(label, lambda: api().model_info(repo_id, revision=revision, files_metadata=True))
    config = next((s for s in info.siblings or [] if s.rfilename == "config.json"), None)
    if config is None:
        raise RegistryError(f"{label} has no config.json: it is not a transformers model whose shapes can be read")
    too_big = f"{label}: config.json is larger than {MAX_BASE_CONFIG_BYTES:,} bytes; nothing was read"
    if config.size is not None and config.size > MAX_BASE_CONFIG_BYTES:
        raise RegistryError(too_big)
    path = Path(hub_call(label, lambda: hf_hub_download(repo_id, "config.json", revision=info.sha,
                                                        endpoint=endpoint())))
    if path.stat().st_size > MAX_BASE_CONFIG_BYTES:
        raise RegistryError(too_big)
    return path.parent, str(info.sha)


def resolve_base_revision(name: str, revision: str | None) -> str | None:
    """The commit sha of a base model given as a Hub id, or None when the Hub does not know it."""
    if "/" not in name or Path(name).expanduser().exists():
        return revision
    try:
        return str(hub_call(name, lambda: api().model_info(name, revision=revision), attempts=1).sha)
    except HubError:
        return revision
