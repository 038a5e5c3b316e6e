"""Bearer-token auth and the request-body size limit.

Management routes (every route that changes state: ``/model/reload``, ``/feedback``)
always require ``Authorization: Bearer <MLOPS_SERVING__API_TOKEN>``; prediction routes
do when ``MLOPS_SERVING__REQUIRE_TOKEN_FOR_PREDICT`` is true. No token → 401 (with
``WWW-Authenticate: Bearer``), a wrong one → 403. Tokens are compared in constant time.
A placeholder token outside development is refused when settings load (see
:mod:`mlops.settings`), so the app cannot start with it.
"""

from __future__ import annotations

import hmac
import json
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlops.settings import Settings

_bearer = HTTPBearer(
    auto_error=False,
    description="The serving API token (MLOPS_SERVING__API_TOKEN).",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def check_token(authorization: str | None, settings: Settings) -> None:
    """401/403 unless ``authorization`` (the header's value) is the bearer token."""
    scheme, _, token = (authorization or "").partition(" ")
    _check(token.strip() if scheme.lower() == "bearer" else None, settings)


def _check(token: str | None, settings: Settings) -> None:
    if not token:
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="this route needs a bearer token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    expected = settings.serving.api_token.get_secret_value().encode()
    if not hmac.compare_digest(token.encode(), expected):
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN, detail="the bearer token is not valid"
        )


def too_large_detail(max_bytes: int) -> str:
    """The message of a 413."""
    return f"request body over {max_bytes:,} bytes (MLOPS_SERVING__MAX_BODY_BYTES)"


async def require_token(request: Request, credentials: Credentials) -> None:
    """Dependency of management routes: a valid bearer token, always."""
    _check(credentials.credentials if credentials else None, request.app.state.settings)


class BodyLimitMiddleware:
    """413 for a request body over ``max_bytes``: by its ``Content-Length`` before it is
    read, or while it streams in when it has none (chunked)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await self._too_large(send)
                    return
                break
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # Inside the app: its exception handlers turn it into the 413.
                    raise HTTPException(
                        status_code=status.HTTP_413_CONTENT_TOO_LARGE, detail=self._detail
                    )
            return message

        await self.app(scope, counting_receive, send)

    @property
    def _detail(self) -> str:
        return too_large_detail(self.max_bytes)

    async def _too_large(self, send: Send) -> None:
        body = json.dumps({"detail": self._detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status.HTTP_413_CONTENT_TOO_LARGE,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
