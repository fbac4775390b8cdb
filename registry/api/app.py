"""``adreg serve``: the FastAPI application over one :class:`~registry.service.Service`.

Routes come from :data:`registry.endpoints.ENDPOINTS` (one per service operation, request model generated from
the function's signature) plus the file-moving routes of :mod:`registry.api.artifacts` and the administration
routes of :mod:`registry.api.admin`. Every route but ``/healthz`` and ``/readyz`` needs a bearer token; errors
are RFC 9457 problem documents carrying the SDK error's type, so the remote client re-raises the same error.
"""

from __future__ import annotations

import inspect
import logging
import re
from typing import Annotated, Any

import anyio
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from pydantic import BaseModel, TypeAdapter
from sqlalchemy import text
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from registry import auth, endpoints
from registry.api import artifacts, worker_routes
from registry.api.common import PROBLEM_RESPONSES, idle_seconds, problem_response
from registry.api.limits import BodyTooLarge, BodyTooSlow, RequestLimits
from registry.errors import RegistryError, Unauthenticated
from registry.problems import MEDIA_TYPE
from registry.service import Service

log = logging.getLogger("adreg.api")
API_VERSION = "1"
MAX_ID = 2**31 - 1  # ids are INTEGER columns
MAX_INT = 2**63 - 1  # the widest integer a database column (or SQLite) takes
#: Declares the bearer token in the OpenAPI document; the header itself is read by ``principal``.
BEARER = HTTPBearer(auto_error=False, scheme_name="token", description="an API token: adreg_<id>_<secret>")


def create_app(svc: Service) -> FastAPI:
    """The API over ``svc`` (its catalog, store and executor); each request acts as its token's user."""
    app = FastAPI(title="adapter-registry", version=API_VERSION, redirect_slashes=False,  # no 307 before auth
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

    async def unauthenticated(request: Request) -> JSONResponse | None:
        """The 401 answer when ``request`` carries no valid token, so that a caller without one learns nothing
        about what its request got wrong (the body is parsed before the route's dependencies run)."""
        try:
            await anyio.to_thread.run_sync(principal, request)
        except RegistryError as exc:
            return problem_response(exc)
        return None

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        if (refused := await unauthenticated(request)) is not None:
            return refused
        problems = [f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors()]
        err = RegistryError("the request is not valid: " + "; ".join(problems))
        err.problems = problems  # type: ignore[attr-defined]
        return problem_response(err, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Starlette's own errors (no route, wrong method, an unreadable body) as problem documents too."""
        if isinstance(exc.__cause__, (BodyTooLarge, BodyTooSlow)):  # FastAPI makes any error reading a body a 400
            return await body_refused(request, exc.__cause__)
        if exc.status_code == 400 and (refused := await unauthenticated(request)) is not None:
            return refused
        response = problem_response(RegistryError(f"{request.method} {request.url.path[:200]}: {exc.detail}"),
                                    exc.status_code)
        if exc.status_code == 405:  # every method of the path, not only those of the first route that matched it
            allowed = {m for route in app.router.routes if route.matches(request.scope)[0] != Match.NONE
                       for m in getattr(route, "methods", None) or ()}
            response.headers["Allow"] = ", ".join(sorted(allowed))
        return response

    @app.exception_handler(DataError)
    async def refused_value(_request: Request, exc: DataError) -> JSONResponse:
        """A value the database refuses (a negative LIMIT, a number out of its column's range) is the request's
        fault: 400 with the database's one-line reason, never the statement or its parameters."""
        reason = (str(exc.orig).strip().splitlines() or ["a value is out of range"])[0]
        return problem_response(RegistryError(f"the database refused a value of this request: {reason[:200]}"), 400)

    @app.exception_handler(Exception)
    async def server_error(_request: Request, exc: Exception) -> JSONResponse:
        """Anything unexpected: 500 as a problem document naming nothing of the cause (uvicorn logs the traceback)."""
        return problem_response(RegistryError("internal server error"), 500)

    @app.exception_handler(BodyTooLarge)
    @app.exception_handler(BodyTooSlow)
    async def body_refused(_request: Request, exc: BodyTooLarge | BodyTooSlow) -> JSONResponse:
        """The same document as the middleware's own answer (when the route was reading the body itself)."""
        status, document = exc.problem()
        return JSONResponse(document, status_code=status, media_type=MEDIA_TYPE, headers={"Connection": "close"})

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

    def caller(request: Request, _declared: Annotated[Any, Depends(BEARER)]) -> auth.Principal:
        return principal(request)

    Caller = Annotated[auth.Principal, Depends(caller)]
    for endpoint in endpoints.ENDPOINTS:
        _add_route(app, svc, endpoint, Caller)
    artifacts.add_routes(app, svc, Caller)
    worker_routes.add_routes(app, svc, Caller)
    from registry.web.pages import add_pages

    add_pages(app, svc)
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
    # The answer is serialised once by its own adapter: FastAPI would validate the returned dataclasses against the
    # response model first and then serialise them (several ms for a page of 50 versions); the model still
    # documents the answer in /openapi.json.
    dump = TypeAdapter(returns).dump_json if response_model is not None else None

    def handler(**values: Any) -> Any:
        who: auth.Principal = values.pop("who")
        given = values.pop("params", None) or values.pop("body", None)
        arguments = endpoints.arguments(given) if given is not None else {}
        arguments.update(values)  # path fields
        _check_integers(arguments)
        endpoint.rule(who, arguments, svc)
        result = endpoint.function(svc.acting_as(who), **arguments)
        return None if dump is None else Response(dump(result), media_type="application/json")

    kw = inspect.Parameter.KEYWORD_ONLY
    parameters = [inspect.Parameter("who", kw, annotation=caller)]
    if model.model_fields:
        parameters.append(inspect.Parameter("params", kw, annotation=Annotated[model, Query()]) if in_query
                          else inspect.Parameter("body", kw, annotation=model))
    parameters += [inspect.Parameter(name, kw, annotation=Annotated[int, Path(ge=1, le=MAX_ID)] if name.endswith("_id")
                                     else Annotated[str, Path()]) for name in endpoint.path_fields]
    handler.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    handler.__name__ = endpoint.name
    handler.__doc__ = (endpoint.function.__doc__ or "").strip().split("\n\n")[0] or endpoint.name
    # ``{job_id:int}``: /v1/jobs/merge is the POST route's path, not job "merge" (GET there answers 405)
    path = re.sub(r"\{(\w+_id)\}", r"{\1:int}", endpoint.path)
    app.add_api_route(path, handler, methods=[endpoint.method], response_model=response_model,
                      status_code=200 if response_model is not None else 204, name=endpoint.name,
                      tags=[endpoint.path.split("/")[2]], responses=PROBLEM_RESPONSES)


def _check_integers(value: Any, where: str = "a number", depth: int = 0) -> None:
    """Refuse integers no database column holds (SQLite raises OverflowError on them; PostgreSQL a DataError).
    Arguments are looked at 32 levels deep (the service functions' own structures are shallower)."""
    if isinstance(value, bool) or depth > 32:
        return
    if isinstance(value, int) and not -MAX_INT - 1 <= value <= MAX_INT:
        raise RegistryError(f"{where[:100]} is out of range (at most {MAX_INT} in magnitude)")
    items = dict(value).items() if isinstance(value, (dict, BaseModel)) else ()
    for key, item in items:
        _check_integers(item, str(key), depth + 1)
    for item in value if isinstance(value, (list, tuple)) else ():
        _check_integers(item, where, depth + 1)
