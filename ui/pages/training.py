"""Training: start a run of a model's training deployment and follow it live.

The form picks the model spec, the parameters of ``flows/train.py:train`` (epochs,
batch size, learning rate, hidden sizes, an optional labels dataset) and where it runs:
the ``local`` pool (``train/<model>``, CPU or the worker's GPU) or the GPU pool
(``train/<model>-gpu``, ``device=cuda``; ``gpus`` > 1 trains data-parallel). The run is
created through the Prefect API (:func:`mlops.platform.orchestration.start_flow_run`).

Following a run (the one just started, or any recent one) refreshes on its own every
``MLOPS_CONSOLE__REFRESH_S`` seconds (``st.fragment(run_every=...)``) until the run
ends: its state (:func:`~mlops.platform.orchestration.flow_run_status`), the epoch
progress bar (the run's progress artifact ``train-<model>-progress``, updated at each
epoch's end), and the loss and validation curves from the MLflow run's metric history
(the run tagged ``mlops.flow_run_id`` with the flow run's id), point by point as epochs
end. When it has ended: the holdout metrics and the model version it registered.
"""

from __future__ import annotations

import math
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st
from mlflow import MlflowClient
from mlflow.entities import Run

from mlops.datasets import list_datasets, open_catalog
from mlops.platform.orchestration import FlowRunStatus, flow_run_status
from mlops.settings import Settings
from mlops.specs import SPECS
from ui.auth import can_change_state, require_write
from ui.common import (
    BACKEND_ERRORS,
    STATE_ICONS,
    ago,
    flow_run_url,
    mlflow,
    mlflow_run_url,
    prefect,
    recent_flow_runs,
    settings,
    show_error,
    start_run,
)

FOLLOW_KEY = "training_follow"
ENDED_KEY = "training_ended"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
LOSSES = ("train_loss", "val_loss")
VALIDATION = ("val_roc_auc", "val_pr_auc", "val_accuracy")
SPEC_LABELS = "(the model spec's own labels)"


def parse_hidden(text: str) -> list[int]:
    """``"64, 32"`` → ``[64, 32]``; a :class:`ValueError` naming the bad entry otherwise."""
    parts = [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]
    if not parts:
        raise ValueError("hidden sizes: give at least one layer size, e.g. 64, 32")
    sizes = []
    for part in parts:
        if not part.isdigit() or int(part) < 1:
            raise ValueError(
                f"hidden sizes: {part!r} is not a positive whole number: write layer sizes "
                "separated by commas, e.g. 64, 32"
            )
        sizes.append(int(part))
    return sizes


def training_request(
    *,
    model: str,
    pool: str,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    hidden: list[int],
    device: str,
    gpus: int,
    labels_dataset: str | None,
) -> tuple[str, dict[str, Any]]:
    """The deployment (``train/<model>`` or ``train/<model>-gpu``) and its parameters."""
    gpu = pool == "gpu"
    deployment = f"train/{model}-gpu" if gpu else f"train/{model}"
    parameters: dict[str, Any] = {
        "model_name": model,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "hidden": hidden,
    }
    if gpu:
        parameters["gpus"] = gpus  # the deployment itself sets device=cuda
    else:
        parameters["device"] = device
    if labels_dataset:
        parameters["labels_dataset"] = labels_dataset
    return deployment, parameters


def _datasets(cfg: Settings) -> list[str]:
    url = cfg.datasets.catalog_url
    assert url is not None
    try:
        catalog = open_catalog(url)
        try:
            return [f"{r.name}@{r.version}" for r in reversed(list_datasets(catalog=catalog))]
        finally:
            catalog.engine.dispose()
    except BACKEND_ERRORS:
        return []


def render_form(cfg: Settings) -> None:
    st.subheader("Start a training run")
    models = sorted(SPECS)
    with st.form("train"):
        top = st.columns([2, 3, 2])
        model = top[0].selectbox("Model spec", models)
        pool = top[1].radio(
            "Run on",
            ["local", "gpu"],
            format_func=lambda p: {
                "local": f"local pool ({cfg.orchestration.local_pool})",
                "gpu": f"GPU pool ({cfg.orchestration.gpu_pool})",
            }[p],
            horizontal=True,
            help="local: train/<model> on the process pool (CPU, or the worker's GPU with "
            "device auto/cuda); GPU pool: train/<model>-gpu, one training per GPU",
        )
        labels = top[2].selectbox(
            "Labels", [SPEC_LABELS, *_datasets(cfg)], help="a registered dataset (name@version)"
        )
        row = st.columns(4)
        epochs = row[0].number_input("Epochs", min_value=1, max_value=10_000, value=8, step=1)
        batch_size = row[1].number_input(
            "Batch size", min_value=1, max_value=1_000_000, value=1024, step=64
        )
        learning_rate = row[2].number_input(
            "Learning rate", min_value=1e-7, max_value=10.0, value=2e-3, step=1e-4, format="%.5f"
        )
        hidden_text = row[3].text_input(
            "Hidden sizes", value="64, 32", help="layer sizes of the MLP, comma separated"
        )
        row = st.columns(4)
        device = row[0].selectbox(
            "Device (local pool)", ["auto", "cpu", "cuda"], help="auto: CUDA when present"
        )
        gpus = row[1].number_input(
            "GPUs (GPU pool)",
            min_value=1,
            max_value=64,
            value=1,
            step=1,
            help="more than 1: data-parallel training with torchrun",
        )
        submitted = st.form_submit_button(
            "Start training", type="primary", disabled=not can_change_state()
        )
    if not can_change_state():
        st.caption("Starting a run needs the management token (unlock in the sidebar).")
    if not submitted or not model:
        return
    try:
        hidden = parse_hidden(hidden_text)
    except ValueError as exc:
        st.error(f"{exc}.")
        return
    deployment, parameters = training_request(
        model=str(model),
        pool=str(pool),
        epochs=int(epochs),
        batch_size=int(batch_size),
        learning_rate=float(learning_rate),
        hidden=hidden,
        device=str(device),
        gpus=int(gpus),
        labels_dataset=None if labels == SPEC_LABELS else str(labels),
    )
    if not require_write(f"start a run of {deployment}"):
        return
    ref = start_run(cfg, deployment, parameters)
    if ref is None:
        return
    st.session_state[FOLLOW_KEY] = ref.id
    st.success(f"Started flow run {ref.id} ({ref.name}) of {deployment}: follow it below.")


# --- following a run --------------------------------------------------------------------
def mlflow_run_of(client: MlflowClient, cfg: Settings, flow_run_id: str) -> Run | None:
    """The MLflow run a training flow run created (tag ``mlops.flow_run_id``)."""
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    if experiment is None:
        return None
    found = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`mlops.flow_run_id` = '{flow_run_id}'",
        max_results=1,
    )
    return found[0] if found else None


def curves(client: MlflowClient, run_id: str) -> pd.DataFrame:
    """``epoch, metric, value`` of every per-epoch metric logged so far."""
    rows = []
    for key in (*LOSSES, *VALIDATION):
        for point in client.get_metric_history(run_id, key):
            rows.append({"epoch": int(point.step), "metric": key, "value": float(point.value)})
    return pd.DataFrame(rows, columns=["epoch", "metric", "value"])


def _chart(frame: pd.DataFrame, title: str) -> alt.Chart:
    return (
        alt.Chart(frame, title=title)
        .mark_line(point=True)
        .encode(
            x=alt.X("epoch:Q", axis=alt.Axis(tickMinStep=1)),
            y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)),
            color="metric:N",
            tooltip=["epoch:Q", "metric:N", alt.Tooltip("value:Q", format=".4f")],
        )
        .properties(height=260)
    )


def _waiting_hint(status: FlowRunStatus, cfg: Settings) -> str | None:
    if status.state_type not in ("SCHEDULED", "PENDING"):
        return None
    gpu = bool(status.deployment and status.deployment.endswith("-gpu"))
    pool = cfg.orchestration.gpu_pool if gpu else cfg.orchestration.local_pool
    return (
        f"Waiting for a worker of the {pool!r} pool to pick the run up ({status.state_name}). "
        + (
            "Start a GPU worker (`prefect worker start --pool "
            f"{pool} --type docker` on a GPU host)."
            if gpu
            else f"`mlops up` runs one; or `prefect worker start --pool {pool}` in the checkout."
        )
    )


def render_status(cfg: Settings, flow_run_id: str) -> bool:
    """Draw where the run stands; True when it has ended."""
    try:
        with prefect(cfg) as client:
            status = flow_run_status(client, flow_run_id=flow_run_id)
    except BACKEND_ERRORS as exc:
        show_error(f"Flow run {flow_run_id} cannot be read", exc, "Check the Prefect server.")
        return False
    state = status.state_type or "UNKNOWN"
    ended = state in TERMINAL
    epochs = int(status.parameters.get("epochs") or 0)
    url = flow_run_url(status.id, cfg)
    cols = st.columns([2, 2, 2, 3])
    cols[0].metric("state", f"{STATE_ICONS.get(state, '')} {status.state_name or state}")
    cols[1].metric("deployment", status.deployment or "")
    cols[2].metric("running for", f"{status.run_seconds:.0f} s")
    cols[3].markdown(
        f"**{status.name}**  \nstarted {ago(status.start_time) if status.start_time else 'not yet'}"
        + (f"  \n[open in the Prefect UI]({url})" if url else "")
    )
    progress = status.progress
    if progress is None:
        st.progress(0, text="waiting for the first epoch")
    else:
        done = round(progress / 100 * epochs) if epochs else None
        label = f"epoch {done}/{epochs}" if done is not None else f"{progress:.0f} %"
        st.progress(min(max(progress / 100, 0.0), 1.0), text=label)
    hint = _waiting_hint(status, cfg)
    if hint:
        st.info(hint)
    if state in ("FAILED", "CRASHED"):
        st.error(
            f"The run {status.state_name}: {status.state_message or 'no message'}. Open its "
            "logs in the Prefect UI to see why, fix it, and start a new run."
        )
    elif state == "CANCELLED":
        st.warning(f"The run was cancelled: {status.state_message or 'no message'}.")
    render_curves(cfg, flow_run_id, ended)
    return ended


def render_curves(cfg: Settings, flow_run_id: str, ended: bool) -> None:
    try:
        client = mlflow(cfg)
        run = mlflow_run_of(client, cfg, flow_run_id)
        frame = curves(client, run.info.run_id) if run is not None else None
    except BACKEND_ERRORS as exc:
        show_error("The training curves cannot be read", exc, "Check MLflow.")
        return
    if run is None:
        st.caption("No MLflow run yet: it starts once the training set is built.")
        return
    link = mlflow_run_url(run.info.experiment_id, run.info.run_id, cfg)
    st.caption(
        f"MLflow run {run.info.run_id} ({run.info.status})" + (f" · [open]({link})" if link else "")
    )
    if frame is None or frame.empty:
        st.caption("No epoch has ended yet.")
    else:
        left, right = st.columns(2)
        left.altair_chart(
            _chart(frame[frame["metric"].isin(LOSSES)], "loss"), use_container_width=True
        )
        right.altair_chart(
            _chart(frame[frame["metric"].isin(VALIDATION)], "validation"),
            use_container_width=True,
        )
    if ended:
        holdout = {
            k.removeprefix("holdout_"): v
            for k, v in run.data.metrics.items()
            if k.startswith("holdout_") and not math.isnan(v)
        }
        if holdout:
            st.markdown("**Holdout**")
            st.dataframe(pd.DataFrame([holdout]).round(4), hide_index=True)
        try:
            versions = list(client.search_model_versions(f"run_id = '{run.info.run_id}'"))
        except BACKEND_ERRORS:
            versions = []
        for mv in versions:
            st.success(
                f"Registered {mv.name} version {mv.version} (challenger): compare and promote "
                "it on the Models page."
            )


def render_follow(cfg: Settings) -> None:
    st.subheader("Follow a run")
    try:
        with prefect(cfg) as client:
            runs = recent_flow_runs(client, flow_names=["train"], limit=20)
    except BACKEND_ERRORS as exc:
        show_error(
            "The training runs cannot be read",
            exc,
            "Check the Prefect server (MLOPS_PREFECT__API_URL).",
        )
        return
    chosen = st.session_state.get(FOLLOW_KEY)
    ids = [r["id"] for r in runs]
    if chosen and chosen not in ids:
        ids.insert(0, chosen)
    if not ids:
        st.info("No training run yet: start one above.")
        return
    labels = {
        r["id"]: f"{STATE_ICONS.get(r['state_type'], '')} {r['name']} · {r['deployment']} · "
        f"{ago(r['started'])}"
        for r in runs
    }
    picked = st.selectbox(
        "Training run",
        ids,
        index=ids.index(chosen) if chosen in ids else 0,
        format_func=lambda i: labels.get(i, i),
    )
    if picked != chosen:
        st.session_state[FOLLOW_KEY] = picked
    ended: dict[str, bool] = st.session_state.setdefault(ENDED_KEY, {})
    run_every = None if ended.get(str(picked)) else cfg.console.refresh_s

    @st.fragment(run_every=run_every)
    def live() -> None:
        done = render_status(cfg, str(picked))
        if done and not ended.get(str(picked)):
            ended[str(picked)] = True
            st.rerun(scope="app")  # stop the timer: the run will not change any more

    live()


def render() -> None:
    cfg = settings()
    st.title("Training")
    render_form(cfg)
    render_follow(cfg)


render()
