"""Experiments: an MLflow experiment's runs as a sortable table, several runs' curves on
one chart, the best run by a chosen metric, and links out to the MLflow UI.

Runs are read with :mod:`mlops.platform.runs` (``list_runs``, ``compare_runs``,
``best_run``: the management API's operations) and curves with the runs' metric
histories (:func:`ui.data.metric_histories`). The monitor flow's runs share the
platform's experiment; they are hidden unless asked for, since they have no curves.
"""

from __future__ import annotations

from typing import Literal

import pandas as pd
import streamlit as st

from mlops.platform.errors import InvalidRequestError, NotFoundError
from mlops.platform.runs import RunSummary, best_run, compare_runs, list_runs
from ui.common import (
    BACKEND_ERRORS,
    curve_chart,
    mlflow,
    mlflow_run_url,
    mlflow_ui_url,
    settings,
    show_error,
)
from ui.data import (
    curve_metrics,
    experiment_names,
    metric_histories,
    mlflow_experiment_url,
    runs_frame,
)

MLFLOW_HINT = (
    "Check that MLflow answers at MLOPS_MLFLOW__TRACKING_URI (with `mlops up` it is started "
    "for you), then reload the page."
)
MONITOR_FLOW_TAG = "mlops.flow"


def _label(run: RunSummary) -> str:
    return f"{run.run_name or 'run'} ({run.run_id[:8]})"


def show_link(experiment_id: str) -> None:
    cfg = settings()
    url = mlflow_experiment_url(mlflow_ui_url(cfg), experiment_id)
    if url:
        st.link_button("Open the experiment in the MLflow UI", url, icon=":material/open_in_new:")
    else:
        st.caption(
            f"No MLflow UI to link to: the tracking store is {cfg.tracking_uri}. Start one "
            f"with `mlflow ui --backend-store-uri {cfg.tracking_uri}` and set "
            "MLOPS_CONSOLE__MLFLOW_UI_URL to its address, or use `mlops up`."
        )


def show_best(experiment: str, experiment_id: str, metrics: list[str]) -> None:
    st.subheader("Best run")
    if not metrics:
        st.caption("No run logged a metric yet.")
        return
    left, right = st.columns([3, 1])
    default = metrics.index("val_roc_auc") if "val_roc_auc" in metrics else 0
    metric = left.selectbox("by metric", metrics, index=default, key="best_metric")
    lower = metric.endswith("loss") or metric.startswith(("loss", "error"))
    modes: list[Literal["max", "min"]] = ["max", "min"]
    mode = right.radio("best is", modes, index=1 if lower else 0, horizontal=True, key="best_mode")
    try:
        best = best_run(mlflow(), experiment=experiment, metric=metric, mode=mode or "max")
    except NotFoundError as exc:
        st.info(f"{exc}: only finished runs count.")
        return
    except BACKEND_ERRORS as exc:
        show_error("The best run cannot be found", exc, MLFLOW_HINT)
        return
    st.metric(f"{mode} {metric}", f"{best.metrics[metric]:.4f}", help=best.run_id)
    st.caption(
        f"{_label(best)}, started {best.start_time:%Y-%m-%d %H:%M} UTC"
        if best.start_time
        else _label(best)
    )
    url = mlflow_run_url(experiment_id, best.run_id)
    if url:
        st.link_button("Open the best run in MLflow", url)


def show_overlay(runs: list[RunSummary]) -> None:
    st.subheader("Curves")
    labels = {_label(r): r for r in runs}
    chosen = st.multiselect(
        "runs to overlay",
        list(labels),
        default=list(labels)[:2],
        key="overlay_runs",
        help="Pick runs from the table above (newest first).",
    )
    if not chosen:
        st.caption("Pick one run or more to see their curves.")
        return
    ids = {label: labels[label].run_id for label in chosen}
    client = mlflow()
    try:
        with st.spinner("Reading metric histories from MLflow…"):
            curves = curve_metrics(client, ids.values())
            if not curves:
                st.info("None of these runs logged a metric at more than one step.")
                return
            default = curves.index("val_roc_auc") if "val_roc_auc" in curves else 0
            metric = st.selectbox("curve", curves, index=default, key="overlay_metric")
            frame = metric_histories(client, ids, [metric])
            comparison = compare_runs(client, run_ids=list(ids.values()))
    except BACKEND_ERRORS as exc:
        show_error("The runs' metric histories cannot be read", exc, MLFLOW_HINT)
        return
    st.altair_chart(curve_chart(frame, metric, series="run"), width="stretch")

    by_id = {run_id: label for label, run_id in ids.items()}
    side = pd.DataFrame(
        {by_id[r.run_id]: [r.metrics.get(m) for m in comparison.metrics] for r in comparison.runs},
        index=comparison.metrics,
    )
    side["best"] = [by_id.get(comparison.best.get(m, ""), "") for m in comparison.metrics]
    st.dataframe(side, width="stretch")
    if comparison.differing_params:
        names = sorted(comparison.differing_params)
        params = pd.DataFrame(
            {
                label: [comparison.differing_params[p].get(run_id) for p in names]
                for label, run_id in ids.items()
            },
            index=names,
        )
        st.caption("parameters that differ")
        st.dataframe(params, width="stretch")


def render() -> None:
    cfg = settings()
    st.title("Experiments")
    st.caption(f"tracking: {cfg.tracking_uri}")
    client = mlflow(cfg)
    try:
        names = experiment_names(client)
    except BACKEND_ERRORS as exc:
        show_error(
            f"The MLflow tracking store at {cfg.tracking_uri} cannot be read", exc, MLFLOW_HINT
        )
        return
    if not names:
        st.info("No experiment yet: start a training run on the Training page.")
        return
    default = names.index(cfg.mlflow.experiment) if cfg.mlflow.experiment in names else 0
    experiment = st.selectbox("experiment", names, index=default, key="experiment")
    left, middle, right = st.columns([3, 1, 1])
    where = left.text_input(
        "filter (MLflow search syntax)",
        key="filter",
        placeholder="metrics.val_roc_auc > 0.8 and params.epochs = '8'",
    )
    limit = middle.number_input("at most", min_value=1, max_value=1000, value=100, key="limit")
    with_monitor = right.checkbox("monitor runs", value=False, key="with_monitor")
    try:
        with st.spinner("Searching runs…"):
            runs = list_runs(
                client, experiment=experiment, filter_string=where.strip(), max_results=int(limit)
            )
    except InvalidRequestError as exc:
        show_error(
            "The filter is not valid",
            exc,
            "Write it like `metrics.val_roc_auc > 0.8 and params.epochs = '8'` (strings in "
            "single quotes), or clear it.",
        )
        return
    except BACKEND_ERRORS as exc:
        show_error(f"The runs of {experiment!r} cannot be read", exc, MLFLOW_HINT)
        return
    if not with_monitor:
        runs = [r for r in runs if r.tags.get(MONITOR_FLOW_TAG) != "monitor"]
    if not runs:
        st.info(f"No run of {experiment!r} matches." if where.strip() else "No run yet.")
        return
    experiment_id = runs[0].experiment_id
    show_link(experiment_id)
    st.caption(f"{len(runs)} runs, newest first; click a column header to sort.")
    table = runs_frame(runs)
    metrics = sorted({m for r in runs for m in r.metrics})
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        column_config={m: st.column_config.NumberColumn(format="%.4f") for m in metrics},
    )
    show_overlay(runs)
    show_best(experiment, experiment_id, metrics)


render()
