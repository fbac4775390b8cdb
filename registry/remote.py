"""The remote ``Registry``: the same methods, results and typed errors as the embedded one, over HTTP.

``Registry("https://adreg.example.com", token=...)``, or ``ADREG_URL`` + ``ADREG_TOKEN``, or ``adreg login URL``
give a :class:`RemoteRegistry`. Its methods are built from :data:`registry.endpoints.ENDPOINTS`, the table the
server builds its routes from, and turn each answer back into the service function's own return type; an error
answer (RFC 9457 problem+json) is raised as the SDK error it names. Files move as streams: ``register`` uploads
weights only when the server lacks their sha256, ``download`` verifies the sha256 of what it receives.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry import endpoints, jobs
from registry import types as t
from registry.errors import InvalidAdapter, RegistryError, ServiceUnavailable, Unauthenticated
from registry.login import saved_login
from registry.operations.versions import download_target
from registry.problems import raise_for_problem
from registry.sdk import Registry
from registry.store import IncomingBlob

if TYPE_CHECKING:
    from registry import catalog
    from registry.runs import RunInfo

CHUNK = 1 << 20


def _signature_of(embedded: Callable[..., Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a method taking ``**options`` the embedded method's signature (``call`` binds the same parameters)."""

    def deco(method: Callable[..., Any]) -> Callable[..., Any]:
        method.__signature__ = inspect.signature(embedded)  # type: ignore[attr-defined]
        return method

    return deco


class RemoteRegistry(Registry):
    """A ``Registry`` whose catalog is an ``adreg serve`` server (see the module docstring)."""

    def __init__(self, url: str | None = None, *, token: str | None = None, timeout: float = 60.0,
                 home: str | Path | None = None,
                 on_progress: Callable[[int, float, str | None], None] | None = None) -> None:
        """``on_progress(done_bytes, total_bytes)`` is not used here: uploads report through ``on_upload``."""
        import httpx

        login = saved_login()
        self.url = (url or os.environ.get("ADREG_URL") or (login or {}).get("url") or "").rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise RegistryError(f"{self.url!r} is not a server URL (http:// or https://)")
        token = token or os.environ.get("ADREG_TOKEN") or (
            login["token"] if login and login["url"].rstrip("/") == self.url else None)
        if not token:
            raise Unauthenticated(f"no API token for {self.url}",
                                  hint="pass token=, set ADREG_TOKEN, or run `adreg login URL`")
        self.on_upload: Callable[[int, int], None] | None = None
        self.client = httpx.Client(base_url=self.url, timeout=httpx.Timeout(timeout, connect=10.0),
                                   headers={"Authorization": f"Bearer {token}", "User-Agent": "adreg"})

    def close(self) -> None:
        self.client.close()

    @property
    def service(self):  # type: ignore[no-untyped-def]
        raise RegistryError(f"this Registry talks to the server at {self.url}; the operation needs a catalog opened "
                            "in this process (unset ADREG_URL, or run it on the server)")

    settings = store = engine = service

    # -- transport ---------------------------------------------------------------------------------

    def request(self, method: str, path: str, **options: Any) -> Any:
        """Send a request; return its JSON (None for an empty answer); raise the SDK error a problem names."""
        import httpx

        try:
            response = self.client.request(method, path, **options)
        except httpx.TimeoutException:
            raise ServiceUnavailable(f"the server at {self.url} did not answer in time ({method} {path})") from None
        except httpx.TransportError as exc:
            raise ServiceUnavailable(f"cannot reach the server at {self.url}: {exc}") from None
        self.raise_for_problem(response)
        return response.json() if response.content else None

    def raise_for_problem(self, response: Any) -> None:
        raise_for_problem(response, self.url)

    def call(self, operation: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call the server's ``operation`` with the service function's own arguments."""
        from pydantic_core import to_jsonable_python

        endpoint = endpoints.BY_NAME[operation]
        for key in endpoints.INTERNAL & set(kwargs):  # the embedded signature has them; the server sets them
            if kwargs.pop(key) is not None:
                raise RegistryError(f"{key}= is not available over HTTP: the server sets it")
        signature = inspect.Signature(endpoint.parameters)
        bound = signature.bind(*args, **kwargs)
        values = _non_finite_as_text(to_jsonable_python(bound.arguments))
        path = endpoint.path
        for field in endpoint.path_fields:
            value = values.pop(field)
            whole = "{" + field + ":path}" in path  # a field that may hold '/' (sent as %2F, one segment)
            _check_routable(field, value, slashes=whole)
            path = path.replace("{" + field + (":path}" if whole else "}"), _segment(value))
        if endpoint.method in ("GET", "DELETE"):
            data = self.request(endpoint.method, path, params={k: v for k, v in values.items() if v is not None})
        else:
            data = self.request(endpoint.method, path, json=values)
        returns = endpoint.returns()
        if returns is type(None):
            return None
        result = _result_adapter(operation).validate_python(data)
        if isinstance(result, jobs.Job):
            return result.bind(self)
        if isinstance(result, list) and result and isinstance(result[0], jobs.Job):
            return [job.bind(self) for job in result]
        return result

    # -- files -------------------------------------------------------------------------------------

    def upload(self, path: Path, sha256: str, *, kind: str = "blobs", suffix: str | None = None) -> None:
        """Stream ``path`` to the server unless it already holds ``sha256``; ``on_upload`` hears the progress."""
        if kind == "blobs" and self.client.head(f"/v1/blobs/{sha256}").status_code == 200:
            return
        total = path.stat().st_size

        def chunks() -> Iterator[bytes]:
            done = 0
            with path.open("rb") as source:
                while block := source.read(CHUNK):
                    done += len(block)
                    if self.on_upload is not None:
                        self.on_upload(done, total)
                    yield block

        self.request("PUT", f"/v1/{kind}/{sha256}", content=chunks(), params={"suffix": suffix} if suffix else None,
                     headers={"Content-Type": "application/octet-stream", "Content-Length": str(total)})

    def register(self, source: str | Path, *, name: str, tags: dict[str, str] | None = None,
                 base: str | None = None, base_path: str | Path | None = None, revision: str | None = None,
                 description: str | None = None,
                 parents: list[catalog.ParentSpec] | None = None) -> t.AdapterVersion:
        """Register a local adapter folder (or ``hf://`` repo) on the server: every local check first, then the
        weights are uploaded (unless the server has their sha256), then the server checks and registers them."""
        from registry.base_identity import resolve_base
        from registry.inspect import CONFIG_FILE, inspect_adapter, weights_path
        from registry.refs import Ref, parse_ref

        if parents:
            raise RegistryError("parents= is not available over HTTP: lineage comes from the server's own jobs")
        _check_register_arguments(name, tags, description, revision)
        ref = parse_ref(str(source)) if isinstance(source, str) else Ref(path=Path(source))
        source_uri, root = None, None
        if ref.hub_repo:
            from registry.hub_client import fetch_adapter

            folder, commit = fetch_adapter(ref.hub_repo, ref.hub_revision)
            source_uri, root = f"hf://{ref.hub_repo}@{commit}", folder.parents[1]
        elif ref.path is None:
            raise RegistryError(f"{source!r} is not a folder path (write ./{source} for a local folder)")
        else:
            folder = ref.path
        manifest = inspect_adapter(folder, root=root)
        config = json.loads((folder / CONFIG_FILE).read_text())
        if not ref.hub_repo:  # resolved here, where relative paths mean something: the server sees absolute ones
            identity = resolve_base(base or manifest.base_model_name_or_path, adapter_folder=folder,
                                    base_path=base_path, explicit=base is not None)
            base = identity.name
            base_path = str(identity.local_path) if identity.local_path else None
        self.upload(weights_path(folder, root=root), manifest.weights_sha256)
        data = self.request("POST", "/v1/versions", json={
            "name": name, "weights_sha256": manifest.weights_sha256, "config": config, "tags": tags, "base": base,
            "base_path": str(base_path) if base_path else None, "revision": revision, "description": description,
            "source_uri": source_uri or f"upload:{folder.resolve()}"})

        return _result_adapter("get").validate_python(data)

    def download(self, ref: str, folder: str | Path) -> Path:
        """Write version ``ref`` (adapter_config.json + adapter_model.safetensors) into the new folder ``folder``,
        verifying the weights' sha256; nothing is left at ``folder`` if anything fails."""
        import httpx

        version = self.get(ref)
        target = download_target(folder)
        staging = Path(tempfile.mkdtemp(prefix=".tmp-adreg-", dir=target.parent))
        try:
            for filename in ("adapter_config.json", "adapter_model.safetensors"):
                # hashed and written on a thread of its own while the next piece arrives (IncomingBlob)
                incoming = IncomingBlob(staging / filename, version.weights_sha256, 1 << 62)
                try:
                    with self.client.stream("GET", f"/v1/versions/{_segment(version.ref)}/files/{filename}") as answer:
                        if answer.status_code >= 400:
                            answer.read()
                            self.raise_for_problem(answer)
                        for block in answer.iter_bytes(CHUNK):
                            incoming.write(block)
                    if filename.endswith(".safetensors"):
                        try:
                            incoming.commit()  # refuses bytes that do not hash to the recorded sha256
                        except InvalidAdapter:
                            raise RegistryError(f"the weights of {version.ref} arrived with another sha256 than "
                                                f"the recorded {version.weights_sha256[:12]}; nothing was written") \
                                from None
                    else:
                        incoming.keep()
                except httpx.TransportError as exc:
                    raise ServiceUnavailable(f"the download of {version.ref} from {self.url} broke off: {exc}") \
                        from None
                finally:
                    incoming.discard()
            if target.exists():  # an empty folder (checked above) stays until the download is complete
                target.rmdir()
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def version_folder(self, version: t.AdapterVersion) -> Path:
        """The version's files downloaded (sha256-verified) into a cache under the user's cache folder, once."""
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "adreg" / "versions"
        folder = root / f"{version.name}-{version.version}-{version.weights_sha256[:16]}"
        if (folder / "adapter_model.safetensors").is_file():
            return folder
        root.mkdir(parents=True, exist_ok=True)
        try:
            return self.download(version.ref, folder)
        except RegistryError:
            if (folder / "adapter_model.safetensors").is_file():  # another process downloaded it meanwhile
                return folder
            raise

    @_signature_of(Registry.train)
    def train(self, source: str | None = None, *, data: str | Path, **options: Any) -> jobs.Job:
        """As embedded; a local data file is uploaded first (unless the server has it) and named by its sha256.
        The server's errors about the file name the caller's file, not the server's copy."""
        return self._with_data(data, lambda ref: self.call("train", source, data=ref, **options))

    def register_dataset(self, path: str | Path, *, name: str, task_type: str | None = None) -> t.DatasetInfo:
        """As embedded; the file is uploaded (unless the server has it) and the server reads and checks it."""
        from registry.refs import check_slug

        check_slug(name, "dataset name")
        return self._with_data(path, lambda ref: self.call("register_dataset", ref, name=name, task_type=task_type))

    def _with_data(self, data: str | Path, call: Callable[[str], Any]) -> Any:
        """Upload the local data file ``data`` (unless the server has it; checked first as the embedded reader
        checks it: it exists, a supported extension) and ``call`` with its upload reference; the server's errors
        about the file name the caller's file, not the server's copy."""
        from registry.inspect import sha256_file
        from registry.trainset import FORMATS, InvalidDataset

        path = Path(data).expanduser()
        if not path.is_file():  # what the embedded check says, before anything is uploaded
            raise InvalidDataset(f"data file {path} does not exist")
        suffix = path.suffix.lower()
        if suffix not in FORMATS:
            raise InvalidDataset(f"{path.name}: unsupported extension; use one of {', '.join(sorted(FORMATS))}")
        sha = sha256_file(path)
        self.upload(path, sha, kind="data", suffix=suffix)
        try:
            return call(f"{endpoints.UPLOAD_SCHEME}{sha}{suffix}")
        except RegistryError as exc:
            _name_local_file(exc, f"{sha}{suffix}", path)
            raise

    def run_recipe(self, recipe: str | Path | dict, *, idempotency_key: str | None = None) -> RunInfo:
        return self.call("run_recipe", _recipe_dict(recipe), idempotency_key=idempotency_key)

    @_signature_of(Registry.add_schedule)
    def add_schedule(self, recipe: str | Path | dict, **options: Any) -> dict:
        return self.call("add_schedule", _recipe_dict(recipe), **options)

    def tick(self, now: datetime | None = None) -> list[int]:
        return self.call("tick", now=now)


@functools.cache
def _result_adapter(operation: str) -> Any:
    """The pydantic adapter that turns ``operation``'s JSON answer into its return type (built once: ~3 ms)."""
    from pydantic import TypeAdapter

    return TypeAdapter(endpoints.BY_NAME[operation].returns())


def _recipe_dict(recipe: str | Path | dict) -> dict:
    from registry.recipes import load_recipe

    return load_recipe(recipe if isinstance(recipe, dict) else Path(recipe)).model_dump(by_alias=True,
                                                                                         exclude_none=True)


def _check_register_arguments(name: str, tags: dict[str, str] | None, description: str | None,
                              revision: str | None) -> None:
    """The embedded registration's first checks, in its order, so a bad name or tag is refused as embedded (and
    before anything is read or uploaded)."""
    from registry.manifest import check_text
    from registry.refs import check_slug, check_tag

    check_slug(name)
    for key, value in (tags or {}).items():
        check_tag(key, value)
    check_text(description, "description", multiline=True)
    check_text(revision, "revision")


def _name_local_file(exc: RegistryError, stored: str, path: Path) -> None:
    """Write the caller's ``path`` (or its name) where the server's error names its stored copy ``stored``."""
    import re

    pattern = re.compile(r"(\S*/)?" + re.escape(stored))

    def swap(text: Any) -> Any:
        return pattern.sub(lambda m: str(path) if m.group(1) else path.name, text) if isinstance(text, str) else text

    exc.args = tuple(swap(a) for a in exc.args)
    if exc.hint:
        exc.hint = swap(exc.hint)
    if isinstance(getattr(exc, "problems", None), list):
        exc.problems = [swap(p) for p in exc.problems]  # type: ignore[attr-defined]


def _non_finite_as_text(value: Any) -> Any:
    """JSON has no NaN or infinity: send such floats as text ("inf", "nan"), which the server's float fields read
    back, so that its own checks refuse them with the embedded message (not a client-side ValueError)."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {k: _non_finite_as_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_non_finite_as_text(v) for v in value]
    return value


def _check_routable(field: str, value: Any, slashes: bool = False) -> None:
    """A value that cannot travel as one URL path segment (empty, ``.``, ``..``, or holding ``/`` unless the route
    takes ``slashes``) is refused here with the error the server's operation would raise for it (a ref: as parsed;
    an adapter name: InvalidName)."""
    text = str(value)
    if text.strip() and ("/" not in text or slashes) and text not in (".", ".."):
        return
    if field == "ref":
        from registry.errors import AdapterNotFound
        from registry.refs import parse_ref

        ref = parse_ref(text)  # InvalidReference / InvalidName, as on the server
        raise AdapterNotFound(f"{ref} is not a catalog reference (name, name:N or name@alias)")
    from registry.refs import check_slug

    check_slug(text, field)
    raise RegistryError(f"{text[:80]!r} is not a valid {field}")


def _segment(value: Any) -> str:
    from urllib.parse import quote

    return quote(str(value), safe=":@")


def _remote_method(name: str) -> Callable[..., Any]:
    embedded = getattr(Registry, name)

    @functools.wraps(embedded)
    def method(self: RemoteRegistry, *args: Any, **kwargs: Any) -> Any:
        return self.call(name, *args, **kwargs)

    return method


#: Every table operation the facade offers becomes a remote method (register, train, recipes: written above).
for _endpoint in endpoints.ENDPOINTS:
    if hasattr(Registry, _endpoint.name) and _endpoint.name not in RemoteRegistry.__dict__:
        setattr(RemoteRegistry, _endpoint.name, _remote_method(_endpoint.name))

Registry.transports.update(http=RemoteRegistry, https=RemoteRegistry)
