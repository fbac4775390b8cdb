"""``adreg serve``: the FastAPI application over one :class:`~registry.service.Service`.

Routes come from :data:`registry.endpoints.ENDPOINTS` (one per service operation, request model generated from
the function's signature) plus the file-moving routes of :mod:`registry.api.artifacts` and the administration
routes of :mod:`registry.api.admin`. Every route but ``/healthz`` and ``/readyz`` needs a bearer token; errors
are RFC 9457 problem documents carrying the SDK error's type, so the remote client re-raises the same error.
"""

from __future__ import annotations

import inspect
import logging
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import text

from registry import auth, endpoints
from registry.api import artifacts
from registry.api.common import PROBLEM_RESPONSES, idle_seconds, problem_response
from registry.api.limits import BodyTooLarge, BodyTooSlow, RequestLimits
from registry.errors import RegistryError, Unauthenticated
from registry.service import Service

log = logging.getLogger("adreg.api")
API_VERSION = "1"


def create_app(svc: Service) -> FastAPI:
    """The API over ``svc`` (its catalog, store and executor); each request acts as its token's user."""
    app = FastAPI(title="adapter-registry", version=API_VERSION,
                  description="The catalog and job pipeline of LoRA adapters (`adreg serve`).")
    app.state.service = svc

    def principal(request: Request) -> auth.Principal:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("this request carries no API token",
                                  hint="send `Authorization: Bearer <token>` (adreg login URL, or ADREG_TOKEN)")
        with svc.transaction() as session:
            return auth.authenticate(session, token.strip())

    app.state.principal = principal

    @app.exception_handler(RegistryError)
    async def registry_error(_request: Request, exc: RegistryError) -> JSONResponse:
        return problem_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors()]
        err = RegistryError("the request is not valid: " + "; ".join(problems))
        err.problems = problems  # type: ignore[attr-defined]
        return problem_response(err, 422)

    @app.exception_handler(BodyTooLarge)
    async def too_large(_request: Request, _exc: BodyTooLarge) -> JSONResponse:
        return problem_response(RegistryError("the request body is larger than its limit"), 413)

    @app.exception_handler(BodyTooSlow)
    async def too_slow(_request: Request, _exc: BodyTooSlow) -> JSONResponse:
        return problem_response(RegistryError(f"the request body stalled for more than {idle_seconds():g} s"), 408)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "the database or the broker is down"}})
    def readyz() -> JSONResponse:
        """The catalog database (and the broker, when one is configured) can be reached."""
        checks: dict[str, str] = {}
        try:
            with svc.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # any failure means not ready; the reason is shown, never raised
            checks["database"] = f"unreachable: {type(exc).__name__}"
        if svc.settings.broker_url:
            checks["broker"] = _broker_check(svc.settings.broker_url)
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks},
                            status_code=200 if ready else 503)

    Caller = Annotated[auth.Principal, Depends(principal)]
    for endpoint in endpoints.ENDPOINTS:
        _add_route(app, svc, endpoint, Caller)
    artifacts.add_routes(app, svc, Caller)
    return RequestLimits(app, upload_limit=svc.settings.max_adapter_bytes, idle_seconds=idle_seconds())  # type: ignore[return-value]


def _broker_check(url: str) -> str:
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
        return "ok"
    except Exception as exc:  # kombu raises many types; any means not ready
        return f"unreachable: {type(exc).__name__}"


def _add_route(app: FastAPI, svc: Service, endpoint: endpoints.Endpoint, caller: Any) -> None:
    """One route for one service operation: path fields from the URL, the rest from the query (GET/DELETE) or a
    JSON body (POST), validated by the model generated from the function's signature."""
    model = endpoints.request_model(endpoint)
    returns = endpoint.returns()
    response_model = None if returns is type(None) else returns
    in_query = endpoint.method in ("GET", "DELETE")

    def handler(**values: Any) -> Any:
        who: auth.Principal = values.pop("who")
        given = values.pop("params", None) or values.pop("body", None)
        arguments = endpoints.arguments(given) if given is not None else {}
        arguments.update(values)  # path fields
        endpoint.rule(who, arguments, svc)
        result = endpoint.function(svc.acting_as(who), **arguments)
        return None if response_model is None else result

    kw = inspect.Parameter.KEYWORD_ONLY
    parameters = [inspect.Parameter("who", kw, annotation=caller)]
    if model.model_fields:
        parameters.append(inspect.Parameter("params", kw, annotation=Annotated[model, Query()]) if in_query
                          else inspect.Parameter("body", kw, annotation=model))
    parameters += [inspect.Parameter(name, kw, annotation=Annotated[int if name.endswith("_id") else str, Path()])
                   for name in endpoint.path_fields]
    handler.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    handler.__name__ = endpoint.name
    handler.__doc__ = (endpoint.function.__doc__ or "").strip().split("\n\n")[0] or endpoint.name
    app.add_api_route(endpoint.path, handler, methods=[endpoint.method], response_model=response_model,
                      status_code=200 if response_model is not None else 204, name=endpoint.name,
                      tags=[endpoint.path.split("/")[2]], responses=PROBLEM_RESPONSES)
