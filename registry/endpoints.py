"""The operations the HTTP API serves, in one table: name, service function, HTTP route, permission rule.

The server (:mod:`registry.api`) builds one route per entry, its request model generated from the function's
own signature (so the API cannot drift from the SDK), and checks the entry's permission rule before calling the
function. The remote ``Registry`` builds one method per entry from the same table and turns the JSON answer
back into the function's own return type. Registration, downloads and training data move files and have
routes of their own (:mod:`registry.api.artifacts`).
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model

from registry import auth, jobs
from registry.errors import Forbidden, RegistryError
from registry.operations import (
    access,
    automation,
    bases,
    datasets,
    describing,
    diffs,
    lifecycle,
    metrics,
    submit,
    versions,
)
from registry.refs import parse_ref
from registry.service import Service
from registry.store import DATA_SUFFIXES

UPLOAD_SCHEME = "upload:"

#: Parameters of service functions that a remote caller may not set (internal bookkeeping).
INTERNAL = frozenset({"svc", "run_id", "now"})

Rule = Callable[["auth.Principal", dict[str, Any], Service], None]


def anyone(_principal: auth.Principal, _args: dict[str, Any], _svc: Service) -> None:
    """Every authenticated principal may read; access operations check their own rules (``svc.principal``)."""


def admin(principal: auth.Principal, _args: dict[str, Any], _svc: Service) -> None:
    principal.require("admin")


def name_of(ref: str) -> str:
    """The adapter name a reference points into (``tone:2`` -> ``tone``)."""
    return parse_ref(ref).name or ref


def names_meant(svc: Service, ref: str) -> list[str]:
    """The adapter name a reference points into, and (when that is a former name, see ``adreg rename``) the name
    of the adapter it now means: a permission is checked on both."""
    name = name_of(ref)
    current = lifecycle.current_name(svc, name)
    return [name] if current in (None, name) else [name, current]


def write_on(*fields: str, permission: str = "write") -> Rule:
    """Write (or ``permission``) on the adapter named by each given argument (a ref, a name, or a list of either)."""

    def rule(principal: auth.Principal, args: dict[str, Any], svc: Service) -> None:
        for field in fields:
            values = args.get(field)
            for value in values if isinstance(values, list) else [values]:
                if value:
                    for name in names_meant(svc, str(value)):
                        principal.require(permission, name)

    return rule


def manage_on(*fields: str) -> Rule:
    """Manage permission (an admin, or a ``manage`` grant) on the adapter named by each given argument."""
    return write_on(*fields, permission="manage")


def write_on_job(principal: auth.Principal, args: dict[str, Any], svc: Service) -> None:
    """Write on every adapter name the job writes."""
    for name in jobs.written_names(jobs.parse_spec(submit.job(svc, int(args["job_id"])).spec)):
        principal.require("write", name)


def train_rule(principal: auth.Principal, args: dict[str, Any], svc: Service) -> None:
    """A new adapter needs write on its name; continuing needs write on what it writes (``name``, else each source).
    Over HTTP the data must be an uploaded file (``upload:<sha256><suffix>``), never a path on the server."""
    args["data"] = uploaded_data(svc, str(args["data"]))
    if args.get("new") is not None or args.get("name"):
        principal.require("write", str(args.get("name") or ""))
        if args.get("new") is not None:
            return
    for ref in [args.get("source"), *(args.get("joint_with") or [])]:
        if ref and not args.get("name"):
            for name in names_meant(svc, ref):
                principal.require("write", name)


def dataset_rule(principal: auth.Principal, args: dict[str, Any], svc: Service) -> None:
    """Registering a dataset writes no adapter: any user whose token may write; the file must be an upload."""
    if principal.scope == "read":
        raise Forbidden(f"{principal.name} may not register datasets: its token has scope read")
    args["path"] = uploaded_data(svc, str(args["path"]))


def uploaded_data(svc: Service, data: str) -> str:
    """The server path of ``upload:<sha256><suffix>``; anything else is refused, so a remote caller never names a
    file of the server."""
    if not data.startswith(UPLOAD_SCHEME):
        raise RegistryError("over HTTP, training data is uploaded first (PUT /v1/data/{sha256}) and named "
                            "upload:<sha256><suffix>; the remote Registry does this for a local file")
    name = data.removeprefix(UPLOAD_SCHEME)
    suffix = next((s for s in DATA_SUFFIXES if name.endswith(s)), "")
    target = svc.store.data_file(name.removesuffix(suffix), suffix)
    if not target.is_file():
        raise RegistryError(f"no uploaded data file {name[:80]!r}", hint="upload it first: PUT /v1/data/{sha256}")
    return str(target)


@dataclass(frozen=True)
class Endpoint:
    """One operation served over HTTP."""

    name: str
    function: Callable[..., Any]
    method: str
    path: str
    rule: Rule

    @property
    def parameters(self) -> list[inspect.Parameter]:
        return [p for p in inspect.signature(self.function).parameters.values() if p.name not in INTERNAL]

    @property
    def path_fields(self) -> list[str]:
        return [part[1:-1].split(":")[0] for part in self.path.split("/") if part.startswith("{")]

    def returns(self) -> Any:
        return typing.get_type_hints(self.function)["return"]


@cache
def request_model(endpoint: Endpoint) -> type[BaseModel]:
    """A pydantic model of the function's arguments (path fields excluded), with its defaults."""
    hints = typing.get_type_hints(endpoint.function)
    fields: dict[str, Any] = {}
    for p in endpoint.parameters:
        if p.name in endpoint.path_fields:
            continue
        default = ... if p.default is inspect.Parameter.empty else p.default
        # a parameter named like a BaseModel attribute (``validate``) gets a field name of its own, same JSON key
        field = f"{p.name}_" if hasattr(BaseModel, p.name) else p.name
        hint = hints[p.name]
        if endpoint.method in ("GET", "DELETE") and hint in (int, int | None):
            hint = Annotated[hint, BeforeValidator(_digits_only)]  # a query string's "5 " is not the number 5
        fields[field] = (hint, Field(default, alias=p.name))
    config = ConfigDict(extra="forbid", populate_by_name=True)
    return create_model(f"{_camel(endpoint.name)}Request", __config__=config, **fields)


def _digits_only(value: Any) -> Any:
    """A query-string integer as written: optional sign and digits (pydantic alone also takes " 5" and "5 ")."""
    if isinstance(value, str) and not re.fullmatch(r"[+-]?[0-9]+", value):
        raise ValueError(f"{value[:40]!r} is not a whole number")
    return value


def arguments(request: BaseModel) -> dict[str, Any]:
    """A request model's values as the service function's keyword arguments."""
    return {info.alias or name: getattr(request, name) for name, info in type(request).model_fields.items()}


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("get", versions.get, "GET", "/v1/versions/{ref}", anyone),
    Endpoint("search_page", versions.search_page, "POST", "/v1/search", anyone),
    Endpoint("lineage", versions.lineage, "GET", "/v1/versions/{ref}/lineage", anyone),
    Endpoint("base_models", versions.base_models, "GET", "/v1/bases", anyone),
    Endpoint("versions_of", versions.versions_of, "GET", "/v1/adapters/{name}/versions", anyone),
    Endpoint("publications", versions.publications, "GET", "/v1/versions/{ref}/publications", anyone),
    Endpoint("aliases", versions.aliases, "GET", "/v1/aliases", anyone),
    Endpoint("alias_history", versions.alias_history, "GET", "/v1/aliases/{ref}/history", anyone),
    Endpoint("set_alias", versions.set_alias, "POST", "/v1/aliases/set", write_on("ref")),
    Endpoint("remove_alias", versions.remove_alias, "POST", "/v1/aliases/remove", write_on("name")),
    Endpoint("tag", versions.tag, "POST", "/v1/tags/set", write_on("ref")),
    Endpoint("untag", versions.untag, "POST", "/v1/tags/remove", write_on("ref")),
    Endpoint("merge", submit.merge, "POST", "/v1/jobs/merge", write_on("name")),
    Endpoint("train", submit.train, "POST", "/v1/jobs/train", train_rule),
    Endpoint("validate", submit.validate, "POST", "/v1/jobs/validate", write_on("ref")),
    Endpoint("publish", submit.publish, "POST", "/v1/jobs/publish", write_on("ref")),
    Endpoint("job", submit.job, "GET", "/v1/jobs/{job_id}", anyone),
    Endpoint("wait_job", submit.wait_job, "GET", "/v1/jobs/{job_id}/wait", anyone),
    Endpoint("jobs", submit.list_jobs, "GET", "/v1/jobs", anyone),
    Endpoint("cancel", submit.cancel, "POST", "/v1/jobs/{job_id}/cancel", write_on_job),
    Endpoint("run_recipe", automation.run_recipe, "POST", "/v1/runs", admin),
    Endpoint("run", automation.run, "GET", "/v1/runs/{run_id}", anyone),
    Endpoint("runs", automation.runs, "GET", "/v1/runs", anyone),
    Endpoint("add_schedule", automation.add_schedule, "POST", "/v1/schedules", admin),
    Endpoint("schedules", automation.schedules, "GET", "/v1/schedules", anyone),
    Endpoint("set_schedule_enabled", automation.set_schedule_enabled, "POST", "/v1/schedules/{name}/enabled", admin),
    Endpoint("remove_schedule", automation.remove_schedule, "DELETE", "/v1/schedules/{name}", admin),
    Endpoint("run_schedule_now", automation.run_schedule_now, "POST", "/v1/schedules/{name}/run", admin),
    Endpoint("tick", automation.tick, "POST", "/v1/tick", admin),
    # -- lifecycle (issue 15) --
    Endpoint("deprecate", lifecycle.deprecate, "POST", "/v1/versions/{ref}/deprecate", write_on("ref")),
    Endpoint("undeprecate", lifecycle.undeprecate, "POST", "/v1/versions/{ref}/undeprecate", write_on("ref")),
    Endpoint("delete", lifecycle.delete, "POST", "/v1/versions/{ref}/delete", manage_on("ref")),
    Endpoint("gc", lifecycle.gc, "POST", "/v1/gc", admin),
    Endpoint("rename", lifecycle.rename, "POST", "/v1/adapters/rename", write_on("old", "new")),
    # -- end lifecycle --

    # -- text search (issue 15) --
    Endpoint("describe", describing.describe, "POST", "/v1/describe", write_on("ref")),
    # -- end text search --

    # -- metrics (issue 15) --
    Endpoint("log_metric", metrics.log_metric, "POST", "/v1/metrics/log", write_on("ref")),
    Endpoint("log_metrics", metrics.log_metrics, "POST", "/v1/metrics/log-many", write_on("ref")),
    # -- end metrics --

    # -- diff (issue 15) --
    # Every authenticated principal reads every version (registry.auth), so reading both is the `anyone` rule.
    Endpoint("diff", diffs.diff, "GET", "/v1/diff", anyone),
    # -- end diff --

    # -- named bases (issue 15) --
    # A short name is global (registrations link to it, every search resolves it): naming a base is an admin's act.
    Endpoint("add_base", bases.add_base, "POST", "/v1/bases", admin),
    # ``{name:path}``: a base's name may be a Hub id (org/model) or a folder path, slashes included.
    Endpoint("base", bases.base, "GET", "/v1/bases/{name:path}", anyone),
    # -- end named bases --

    # -- datasets (issue 17) --
    Endpoint("register_dataset", datasets.register_dataset, "POST", "/v1/datasets", dataset_rule),
    Endpoint("datasets", datasets.datasets, "GET", "/v1/datasets", anyone),
    Endpoint("dataset", datasets.dataset, "GET", "/v1/datasets/{ref}", anyone),
    Endpoint("link_dataset", datasets.link_dataset, "POST", "/v1/versions/{ref}/datasets", write_on("ref")),
    Endpoint("evaluate", submit.evaluate, "POST", "/v1/jobs/eval", write_on("ref")),
    # -- end datasets --

    Endpoint("whoami", access.whoami, "GET", "/v1/whoami", anyone),
    Endpoint("add_user", access.add_user, "POST", "/v1/users", anyone),
    Endpoint("users", access.users, "GET", "/v1/users", anyone),
    Endpoint("create_token", access.create_token, "POST", "/v1/tokens", anyone),
    Endpoint("tokens", access.tokens, "GET", "/v1/tokens", anyone),
    Endpoint("revoke_token", access.revoke_token, "DELETE", "/v1/tokens/{token_id}", anyone),
    Endpoint("add_grant", access.add_grant, "POST", "/v1/grants", anyone),
    Endpoint("remove_grant", access.remove_grant, "POST", "/v1/grants/remove", anyone),
    Endpoint("grants", access.grants, "GET", "/v1/grants", anyone),
    Endpoint("audit_events", access.audit_events, "GET", "/v1/audit", anyone),
)
BY_NAME = {e.name: e for e in ENDPOINTS}
