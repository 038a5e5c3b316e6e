"""App start-up and shutdown: clients from settings, the champion, the request log.

At start the lifespan builds the MLflow client (tracking and registry URIs from
settings), the online store and the request log (whose writer thread starts at once),
then the reloader makes its first check of the ``champion`` alias in a worker thread
and starts following it (polling, and Prefect events when a server is configured). A
missing champion or one that fails its checks does not stop the app: ``/health``
answers, ``/ready`` and the model routes answer 503 with the reason until a version
loads. At shutdown the reloader stops and the request log flushes (what cannot be
written stays in its spool for the next start).
"""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from mlflow import MlflowClient

from app.deps import ServingState
from app.metrics import ServingMetrics
from mlops.features.online import build_online_store
from mlops.monitoring.history import latest_per_model
from mlops.serving.coalesce import CoalescingReader, CoalescingScorer
from mlops.serving.reloader import ModelSlot, Reloader
from mlops.serving.request_log import RequestLog
from mlops.settings import Settings

logger = logging.getLogger(__name__)

GIL_SWITCH_INTERVAL_S = 0.0005
SCORED_TOGETHER_ROWS = 256
"""The most rows of concurrent requests scored in one run (mlops.serving.coalesce)."""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Fill ``app.state`` (``serving``: what ``/predict`` uses; ``reloader``)."""
    settings: Settings = app.state.settings
    metrics: ServingMetrics = app.state.metrics
    slot: ModelSlot = app.state.model_slot
    settings.ensure_home()
    client = MlflowClient(
        tracking_uri=settings.tracking_uri, registry_uri=settings.mlflow.registry_uri
    )
    store = build_online_store(settings.online_store)
    request_log = RequestLog(settings.request_log)
    request_log.start()
    metrics.watch_request_log(request_log)
    metrics.watch_monitoring(lambda: latest_per_model(request_log.engine))
    reloader = Reloader(
        settings=settings,
        client=client,
        store=store,
        slot=slot,
        on_loaded=metrics.model_loaded,
        on_refused=metrics.model_refused,
    )
    app.state.reloader = reloader
    app.state.serving = ServingState(
        settings=settings,
        slot=slot,
        metrics=metrics,
        request_log=request_log,
        entity_reader=CoalescingReader(store),
        scorer=CoalescingScorer(max_rows=SCORED_TOGETHER_ROWS, observe=metrics.observe_inference),
    )
    slot.error = "the champion is still loading"
    try:
        await anyio.to_thread.run_sync(reloader.check)
        # What start-up built (clients, modules, the model) lives as long as the app:
        # out of the collector's way, a full collection stays short under load.
        gc.collect()
        gc.freeze()
        # Threads that come back from I/O (the request log's writer, entity reads in the
        # pool) wait for the GIL up to this long while the event loop runs Python: the
        # default 5 ms starves them under load.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        reloader.start()
        yield
    finally:
        await anyio.to_thread.run_sync(reloader.stop)
        await anyio.to_thread.run_sync(request_log.close)
        metrics.watch_request_log(None)
        metrics.watch_monitoring(None)
        aclose = getattr(store, "aclose", None)
        if aclose is not None:  # the asyncio client of entity reads, on this loop
            await aclose()
        await anyio.to_thread.run_sync(store.close)
        logger.info("serving stopped: request log flushed, online store closed")
