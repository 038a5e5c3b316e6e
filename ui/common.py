"""What every console page shares: the settings, the clients, errors, links and times.

How pages use it
----------------
A page (``ui/pages/<name>.py``) is a script that ``st.navigation`` runs after the login
gate (:mod:`ui.auth`). It reads everything through the ``mlops`` library with the
clients built here, per call, from :func:`settings` (nothing is built at import)::

    from ui.common import mlflow, prefect, settings, show_error

    try:
        models = list_models(mlflow())
    except BACKEND_ERRORS as exc:
        show_error("The MLflow registry cannot be read", exc, "check MLOPS_MLFLOW__TRACKING_URI")

    with prefect() as client:              # raises OrchestratorUnavailableError, named
        ref = start_flow_run(client, deployment="train/fraud_detector", parameters={...})

* :func:`settings` — the platform settings, read once per browser session; an invalid
  configuration stops the page with an error naming the variable. It is also the
  pages' login gate (see its docstring): call it before drawing anything.
* :func:`prefect` — a synchronous Prefect client for a ``with`` block
  (:func:`mlops.platform.orchestration.prefect_client`): the server of
  ``MLOPS_PREFECT__API_URL`` (or Prefect's own ``PREFECT_API_URL``), never an ephemeral
  API of the console's own (its runs would reach no worker).
* :func:`mlflow` — an :class:`mlflow.MlflowClient` on the settings' tracking and registry URIs.
* :func:`show_error` — ``st.error`` naming what failed, why, and what to do.
* :data:`BACKEND_ERRORS` — what a backend that is down or refuses raises (catch these,
  not ``Exception``, around reads).
* :func:`flow_run_url`, :func:`mlflow_run_url`, :func:`mlflow_ui_url` — links out.
* :func:`ago`, :func:`when` — times as people read them.

Pages import it as ``ui.common``: ``ui/console.py`` puts the checkout on ``sys.path``
(tests run from the checkout).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import altair as alt
import httpx
import pandas as pd
import sqlalchemy as sa
import streamlit as st
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from pydantic import ValidationError

from mlops.errors import MlopsError
from mlops.platform.errors import OrchestratorUnavailableError
from mlops.platform.orchestration import FlowRunRef, prefect_client, start_flow_run
from mlops.registry import mlflow_client
from mlops.settings import Settings

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

SETTINGS_KEY = "mlops_settings"

BACKEND_ERRORS: tuple[type[BaseException], ...] = (
    MlopsError,  # the library's own (platform errors, store unavailable, bad data, ...)
    MlflowException,
    httpx.HTTPError,
    sa.exc.SQLAlchemyError,
    sqlite3.Error,
    OSError,
)
"""Errors of a backend that is unreachable or refuses: a page shows them with
:func:`show_error` and goes on with the rest."""


def settings() -> Settings:
    """The platform settings (``MLOPS_*``), read once per browser session, for a session
    that has logged in.

    Every page starts with it, so a page is gated even when Streamlit runs it without
    ``ui/console.py`` (it does so for a URL of a file under ``ui/pages/`` before the
    console first ran in the server: its old ``pages/`` folder convention). Once logged
    in, the gate draws nothing.
    """
    from ui.auth import ensure_logged_in

    ensure_logged_in()
    return load_settings()


def load_settings() -> Settings:
    """:func:`settings` without the login gate (for the gate itself).

    An invalid configuration (a placeholder token outside development, a bad value)
    shows the validation message, naming the variable, and stops the page.
    """
    cached = st.session_state.get(SETTINGS_KEY)
    if isinstance(cached, Settings):
        return cached
    try:
        loaded = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'settings'}: {error['msg']}"
            for error in exc.errors()
        )
        st.error(
            f"The console cannot start: the settings are invalid ({problems}). Fix the "
            "MLOPS_* environment variables (nested groups with __, e.g. "
            "MLOPS_SERVING__API_TOKEN) or the .env file, then restart the console.",
            icon=":material/settings:",
        )
        st.stop()
    st.session_state[SETTINGS_KEY] = loaded
    return loaded


def show_error(what: str, exc: BaseException, hint: str) -> None:
    """``st.error``: what failed, the error itself (type and message), and what to do."""
    detail = str(exc).strip() or type(exc).__name__
    first = detail.splitlines()[0][:500]
    st.error(f"{what}: {first}\n\n{hint}", icon=":material/error:")


def prefect_api_url(config: Settings | None = None) -> str | None:
    """The Prefect API the console talks to: ``MLOPS_PREFECT__API_URL``, else Prefect's
    ``PREFECT_API_URL``; None when neither is set."""
    config = config or settings()
    if config.prefect.api_url:
        return config.prefect.api_url
    from prefect.settings import PREFECT_API_URL

    value = PREFECT_API_URL.value()
    return str(value) if value else None


@contextmanager
def prefect(config: Settings | None = None) -> Iterator[SyncPrefectClient]:
    """A synchronous Prefect client on the configured server, for a ``with`` block.

    No server configured, or one that does not answer, is
    :class:`OrchestratorUnavailableError` with a message that says what to set.
    """
    config = config or settings()
    url = prefect_api_url(config)
    if not url:
        raise OrchestratorUnavailableError(
            "no Prefect server is configured: set MLOPS_PREFECT__API_URL (for example "
            "http://127.0.0.1:4200/api), or start the platform with `mlops up`"
        )
    if not config.prefect.api_url:
        config = config.model_copy(
            update={"prefect": config.prefect.model_copy(update={"api_url": url})}
        )
    with prefect_client(config, require_server=True) as client:
        yield client


def mlflow(config: Settings | None = None) -> MlflowClient:
    """An MLflow client on the settings' tracking and registry URIs."""
    return mlflow_client(config or settings())


def mlflow_ui_url(config: Settings | None = None) -> str | None:
    """The MLflow UI: ``MLOPS_CONSOLE__MLFLOW_UI_URL``, else the tracking server when the
    tracking URI is http(s); None for an embedded (SQLite) store."""
    config = config or settings()
    if config.console.mlflow_ui_url:
        return config.console.mlflow_ui_url.rstrip("/")
    uri = config.tracking_uri
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else None


def mlflow_run_url(experiment_id: str, run_id: str, config: Settings | None = None) -> str | None:
    """A run's page in the MLflow UI, when there is one."""
    base = mlflow_ui_url(config)
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}" if base else None


def prefect_ui_url(config: Settings | None = None) -> str | None:
    """The Prefect UI: ``MLOPS_CONSOLE__PREFECT_UI_URL``, else the API URL without ``/api``."""
    config = config or settings()
    if config.console.prefect_ui_url:
        return config.console.prefect_ui_url.rstrip("/")
    api = config.prefect.api_url
    if not api:
        return None
    api = api.rstrip("/")
    return api[: -len("/api")] if api.endswith("/api") else api


def flow_run_url(flow_run_id: str, config: Settings | None = None) -> str | None:
    """A flow run's page in the Prefect UI, when a server is configured."""
    base = prefect_ui_url(config)
    return f"{base}/runs/flow-run/{flow_run_id}" if base else None


def when(moment: datetime | None) -> str:
    """``2026-05-01 12:00 UTC`` (empty for None)."""
    if moment is None:
        return ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """``5 min ago``, ``3 h ago``, ``2 d ago`` (``never`` for None)."""
    if moment is None:
        return "never"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    if seconds < 0:
        return "in the future"
    if seconds < 90:
        return f"{int(seconds)} s ago"
    if seconds < 90 * 60:
        return f"{int(seconds // 60)} min ago"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} d ago"


def recent_flow_runs(
    client: SyncPrefectClient,
    *,
    flow_names: list[str] | None = None,
    deployment_ids: list[str] | None = None,
    limit: int = 20,
) -> list[dict[str, Any]]:
    """The newest flow runs that were due by now (future scheduled runs left out), newest
    first: one dict per run with ``id``, ``name``, ``flow``, ``deployment``
    (``<flow>/<name>``), ``state``, ``state_type``, ``started``, ``ended``,
    ``duration_s``, ``parameters``, ``tags`` and ``message``."""
    from uuid import UUID

    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowFilter,
        FlowFilterId,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    runs = client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=flow_names)) if flow_names else None,
        deployment_filter=(
            DeploymentFilter(id=DeploymentFilterId(any_=[UUID(d) for d in deployment_ids]))
            if deployment_ids
            else None
        ),
        flow_run_filter=FlowRunFilter(
            expected_start_time=FlowRunFilterExpectedStartTime(
                before_=datetime.now(UTC)  # type: ignore[arg-type]
            )
        ),
        sort=FlowRunSort.EXPECTED_START_TIME_DESC,
        limit=limit,
    )
    flow_ids = sorted({run.flow_id for run in runs}, key=str)
    flows = (
        {
            f.id: f.name
            for f in client.read_flows(flow_filter=FlowFilter(id=FlowFilterId(any_=flow_ids)))
        }
        if flow_ids
        else {}
    )
    deployment_of: dict[Any, str] = {}
    wanted = sorted({run.deployment_id for run in runs if run.deployment_id}, key=str)
    if wanted:
        for deployment in client.read_deployments(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=wanted))
        ):
            deployment_of[deployment.id] = f"{flows.get(deployment.flow_id, '?')}/{deployment.name}"
    rows = []
    for run in runs:
        state = run.state
        rows.append(
            {
                "id": str(run.id),
                "name": run.name,
                "flow": flows.get(run.flow_id, ""),
                "deployment": deployment_of.get(run.deployment_id, "") if run.deployment_id else "",
                "state": state.name if state else "",
                "state_type": state.type.value if state else "",
                "started": run.start_time or run.expected_start_time,
                "ended": run.end_time,
                "duration_s": run.total_run_time.total_seconds(),
                "parameters": dict(run.parameters),
                "tags": list(run.tags),
                "message": (state.message or "") if state else "",
            }
        )
    return rows


STATE_ICONS = {
    "COMPLETED": "🟢",
    "RUNNING": "🔵",
    "SCHEDULED": "🕒",
    "PENDING": "🕒",
    "PAUSED": "⏸️",
    "CANCELLING": "🟠",
    "CANCELLED": "⚪",
    "FAILED": "🔴",
    "CRASHED": "🔴",
}
"""A mark per Prefect state type, for tables."""


def start_run(cfg: Settings, deployment: str, parameters: dict[str, Any]) -> FlowRunRef | None:
    """A flow run of ``deployment`` created now (with a spinner); None, and the error
    shown with what to do, when the Prefect server or the deployment is not there."""
    try:
        with st.spinner(f"Starting a run of {deployment}..."), prefect(cfg) as client:
            return start_flow_run(client, deployment=deployment, parameters=parameters)
    except BACKEND_ERRORS as exc:
        show_error(
            f"Could not start {deployment}",
            exc,
            "Register the deployments (`mlops deploy`, or `mlops up`) and check that the "
            "Prefect server answers.",
        )
        return None


def curve_chart(frame: pd.DataFrame, metric: str, *, series: str) -> alt.Chart:
    """One line per ``run`` (a run, a version: ``series`` names it) of ``metric``
    against the step (the epoch, for training runs); ``frame`` has the columns
    ``run``, ``metric``, ``step``, ``value``."""
    return (
        alt.Chart(frame[frame["metric"] == metric])
        .mark_line(point=True)
        .encode(
            x=alt.X("step:Q", title="epoch"),
            y=alt.Y("value:Q", title=metric, scale=alt.Scale(zero=False)),
            color=alt.Color("run:N", title=series),
            tooltip=["run", "step", alt.Tooltip("value:Q", format=".4f")],
        )
        .interactive()
    )
