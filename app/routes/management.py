"""Management routes: ``POST /model/reload``, ``POST /feedback``, ``GET /metrics``.

Routes that change state need the bearer token (:mod:`app.security`). ``/metrics`` is
open, as Prometheus scrapes it; keep the port off the public network or put the scrape
behind the proxy's auth.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import anyio.to_thread
from fastapi import APIRouter, Depends, Response, status
from prometheus_client import CONTENT_TYPE_LATEST

from app.deps import MetricsDep, ReloaderDep, RequestLogDep, SettingsDep
from app.routes._limits import over_batch_limit
from app.schemas import FeedbackRequest, FeedbackResponse, ReloadResponse
from app.security import require_token
from mlops.serving.request_log import FeedbackRecord

logger = logging.getLogger(__name__)

router = APIRouter(tags=["management"])

_AUTH_RESPONSES: dict[int | str, dict[str, str]] = {
    401: {"description": "No bearer token."},
    403: {"description": "The bearer token is not valid."},
}


@router.post(
    "/model/reload",
    response_model=ReloadResponse,
    summary="Check the champion alias now and swap in a new version",
    dependencies=[Depends(require_token)],
    responses={
        **_AUTH_RESPONSES,
        409: {"description": "The version was refused (the reason is in the body)."},
        503: {"description": "No version carries the champion alias."},
    },
)
async def reload_model(reloader: ReloaderDep, response: Response) -> ReloadResponse:
    """Resolve the registry's ``champion`` alias and load, check, warm and swap in its
    version (even the one already served: it is verified again). A version that fails a
    check is refused and the current one keeps serving. Rollback: move the alias back to
    the previous version and call this."""
    outcome = await anyio.to_thread.run_sync(lambda: reloader.check(force=True))
    if outcome.status == "refused":
        response.status_code = status.HTTP_409_CONFLICT
    elif outcome.status == "no_champion":
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return ReloadResponse(
        status=outcome.status,
        version=outcome.version,
        serving=outcome.serving,
        reason=outcome.reason,
    )


@router.post(
    "/feedback",
    response_model=FeedbackResponse,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Record true labels of earlier predictions",
    dependencies=[Depends(require_token)],
    responses={**_AUTH_RESPONSES, 422: {"description": "Invalid body (the field is named)."}},
)
async def feedback(
    body: FeedbackRequest, settings: SettingsDep, request_log: RequestLogDep
) -> FeedbackResponse:
    """Queue ground-truth labels against ``request_id`` (and row ``index``) of earlier
    predictions; live accuracy joins them with the request log. A label sent again for
    the same row replaces the earlier one."""
    limit = settings.serving.max_batch_rows
    if len(body.feedback) > limit:
        raise over_batch_limit(("body", "feedback"), len(body.feedback), "labels", limit)
    now = datetime.now(UTC)
    request_log.log_feedback(
        [
            FeedbackRecord(
                request_id=item.request_id, index=item.index, label=item.label, received_at=now
            )
            for item in body.feedback
        ]
    )
    return FeedbackResponse(accepted=len(body.feedback))


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Metrics text."}},
)
async def metrics(metrics: MetricsDep) -> Response:
    """Requests, latency, predictions by class, model loads and refusals, online-store
    latency and errors, request-log queue and spool, the monitor's latest drift share and
    live accuracy per model. Rendered in the thread pool: the monitor's figures are read
    from a database, which must never hold up the event loop."""
    content = await anyio.to_thread.run_sync(metrics.render)
    return Response(content=content, media_type=CONTENT_TYPE_LATEST)
