"""The app class: FastAPI, with ``POST /predict`` answered ahead of the middleware stack.

A one-row prediction costs tens of microseconds; Starlette's layers around it (the error
and exception middlewares, FastAPI's telemetry and exit-stack layers, our two
middlewares, the router, the request/response objects) cost several times that.
:class:`ServingApp` therefore answers ``POST /predict`` itself, at the ASGI level, doing
what those layers would: the body limit (413), the request's metrics, and errors
rendered by the app's own exception handlers, so that answers and metrics are the same
as on any other route. Every other request, and ``/predict`` before the lifespan has
run, goes through FastAPI as usual. The ``/predict`` route stays in the router, for the
OpenAPI document and for requests that reach it by another way.
"""

from __future__ import annotations

import inspect
import logging
import time
from typing import Any

from fastapi import FastAPI, HTTPException, status
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Message, Receive, Scope, Send

from app.deps import ServingState
from app.routes.inference import MODEL_VERSION_HEADER, REQUEST_ID_HEADER, answer_predict
from app.security import too_large_detail

logger = logging.getLogger(__name__)

PREDICT_PATH = "/predict"
CLIENT_CLOSED = 499
"""The status recorded for a request whose client went away before its body arrived
(nginx's code; nothing is sent)."""

_JSON = (b"content-type", b"application/json")
_VERSION = MODEL_VERSION_HEADER.lower().encode("latin-1")
_REQUEST_ID = REQUEST_ID_HEADER.lower().encode("latin-1")


class _ClientGone(Exception):
    """The client disconnected before its request body was read."""


class ServingApp(FastAPI):
    """FastAPI whose ``POST /predict`` skips the middleware stack (see the module)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == PREDICT_PATH
            and scope["method"] == "POST"
            and (serving := getattr(self.state, "serving", None)) is not None
        ):
            scope["app"] = self
            await self._predict(serving, scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def _predict(
        self, serving: ServingState, scope: Scope, receive: Receive, send: Send
    ) -> None:
        started = time.perf_counter()
        status_code = status.HTTP_500_INTERNAL_SERVER_ERROR
        version = ""
        try:
            authorization: str | None = None
            limit = serving.settings.serving.max_body_bytes
            for name, value in scope["headers"]:
                if name == b"authorization":
                    authorization = value.decode("latin-1")
                elif name == b"content-length" and _over(value, limit):
                    raise _too_large(limit)
            raw = await _read_body(receive, limit)
            answer = await answer_predict(serving, authorization, raw)
            version = answer.model_version
            content = answer.content
            await send(
                {
                    "type": "http.response.start",
                    "status": status.HTTP_200_OK,
                    "headers": [
                        _JSON,
                        (b"content-length", str(len(content)).encode("latin-1")),
                        (_VERSION, version.encode("latin-1")),
                        (_REQUEST_ID, answer.request_id.encode("latin-1")),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": content})
            status_code = status.HTTP_200_OK
        except _ClientGone:
            status_code = CLIENT_CLOSED
        except Exception as exc:  # rendered as any route's error would be
            response = await self._error_response(scope, receive, exc)
            status_code = response.status_code
            version = response.headers.get(MODEL_VERSION_HEADER, "")
            await response(scope, receive, send)
        finally:
            serving.metrics.observe_request(
                PREDICT_PATH, "POST", status_code, version, time.perf_counter() - started
            )

    async def _error_response(self, scope: Scope, receive: Receive, exc: Exception) -> Response:
        """``exc`` rendered by the app's handler for its class (as Starlette's exception
        middleware would); a 500 for anything without one, logged with its traceback."""
        handler = next(
            (
                found
                for cls in type(exc).__mro__
                if (found := self.exception_handlers.get(cls)) is not None
            ),
            None,
        )
        if handler is None:
            logger.exception("POST %s failed", PREDICT_PATH, exc_info=exc)
            return PlainTextResponse("Internal Server Error", status_code=500)
        response: Any = handler(Request(scope, receive), exc)
        if inspect.isawaitable(response):
            response = await response
        if not isinstance(response, Response):
            raise TypeError(f"the exception handler of {type(exc).__name__} returned {response!r}")
        return response


def _over(content_length: bytes, limit: int) -> bool:
    try:
        return int(content_length) > limit
    except ValueError:
        return False  # counted while it streams in


def _too_large(limit: int) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_413_CONTENT_TOO_LARGE, detail=too_large_detail(limit)
    )


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body; 413 as soon as it passes ``limit`` bytes."""
    chunks: list[bytes] = []
    seen = 0
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk: bytes = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            raise _too_large(limit)
        if not message.get("more_body", False):
            if not chunks:
                return chunk
            chunks.append(chunk)
            return b"".join(chunks)
        chunks.append(chunk)
