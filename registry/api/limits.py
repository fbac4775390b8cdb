"""Bounds on every request, applied before any route runs: body size and how slowly a body may arrive.

A pure ASGI middleware (it sees the raw ``receive`` channel, so it also bounds chunked bodies that carry no
``Content-Length``): uploads may be as large as the configured adapter limit, every other body 1 MiB; a client
that sends nothing for ``idle_seconds`` while its body is incomplete gets 408, and the route's cleanup runs
(an upload's temporary file is removed).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from registry.problems import MEDIA_TYPE

Scope = dict[str, Any]
Message = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]

JSON_BODY_LIMIT = 1 << 20
UPLOAD_PREFIXES = ("/v1/blobs/", "/v1/data/")


class BodyTooLarge(Exception):
    """The body went past ``limit`` bytes (raised by the ``receive`` this middleware hands the app)."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit

    def problem(self) -> tuple[int, dict[str, Any]]:
        return 413, problem_document(413, "RequestTooLarge", f"the request body is larger than {self.limit:,} bytes")


class BodyTooSlow(Exception):
    """Nothing of an incomplete body arrived for ``seconds``."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds

    def problem(self) -> tuple[int, dict[str, Any]]:
        detail = f"the request body stalled for more than {self.seconds:g} s"
        return 408, problem_document(408, "RequestTimeout", detail)


def problem_document(status: int, name: str, detail: str) -> dict[str, Any]:
    return {"type": f"urn:adreg:error:{name}", "title": name, "status": status, "detail": detail, "error": name}


class RequestLimits:
    """Refuse bodies over their size limit (413) and bodies that stall (408), as problem+json."""

    def __init__(self, app: ASGIApp, *, upload_limit: int, idle_seconds: float) -> None:
        self.app = app
        self.upload_limit = upload_limit
        self.idle_seconds = idle_seconds

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_upload = scope["path"].startswith(UPLOAD_PREFIXES)
        limit = self.upload_limit + 1024 if is_upload else JSON_BODY_LIMIT
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _problem(send, *BodyTooLarge(limit).problem())
            return
        received = 0
        started = False
        complete = False  # the whole body arrived: later receives wait for the disconnect, as long as they like

        async def bounded_receive() -> Message:
            nonlocal received, complete
            if complete:  # e.g. a download's listener for the client leaving: no body is stalling
                return await receive()
            try:
                with anyio.fail_after(self.idle_seconds):
                    message = await receive()
            except TimeoutError:
                raise BodyTooSlow(self.idle_seconds) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
                complete = not message.get("more_body", False)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracking_send)
        except (BodyTooLarge, BodyTooSlow) as exc:
            if started:
                raise
            await _problem(send, *exc.problem())


async def _problem(send: Callable[[Message], Awaitable[None]], status: int, document: dict[str, Any]) -> None:
    body = json.dumps(document).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
