"""Retraining: every ``retrain/<model>`` deployment, its schedules (pause, resume), its
event triggers and the monitor's thresholds that fire them, its recent runs with the
reason each was started for, and "retrain now".

Everything goes through the Prefect API (:mod:`mlops.platform.orchestration`:
``deployment_state``, ``pause_schedules``, ``resume_schedules``, ``trigger_now``; the
management API's operations). Pausing stops the schedule only: event triggers and runs
started by hand still run. "Retrain now" starts a run with ``reason="manual"``, which the
new model version records in its ``retrain_reason`` tag.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from mlops.platform.orchestration import (
    MANUAL_TAG,
    DeploymentState,
    deployment_state,
    pause_schedules,
    resume_schedules,
    trigger_now,
)
from ui.auth import can_change_state, require_write
from ui.common import (
    BACKEND_ERRORS,
    flow_run_url,
    prefect,
    recent_flow_runs,
    settings,
    show_error,
)
from ui.data import RetrainDeployment, deployment_triggers, retrain_deployments

PREFECT_HINT = (
    "Check that the Prefect server at MLOPS_PREFECT__API_URL answers (`mlops up` starts "
    "one, `mlops status` says whether it is healthy), then reload the page."
)
NOTICE_KEY = "retraining_notice"


def overview(deployments: list[RetrainDeployment]) -> None:
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "deployment": d.name,
                    "model": d.model,
                    "schedules": "paused" if d.paused else "active",
                    "work pool": d.work_pool or "",
                }
                for d in deployments
            ]
        ),
        hide_index=True,
        width="stretch",
    )


def show_schedules(state: DeploymentState) -> None:
    st.subheader("Schedules")
    if state.paused:
        st.warning(
            f"{state.name} is paused: the schedule creates no runs. Event triggers and "
            "“retrain now” still run it."
        )
    else:
        st.caption(f"{state.name} is active: its schedules create runs.")
    if state.schedules:
        st.dataframe(
            pd.DataFrame(
                [
                    {"schedule": s.schedule, "active": s.active, "slug": s.slug or ""}
                    for s in state.schedules
                ]
            ),
            hide_index=True,
            width="stretch",
        )
    else:
        st.caption("No schedule: it runs on its triggers and by hand only.")
    disabled = not can_change_state()
    if state.paused:
        clicked = st.button("Resume schedules", key="resume", disabled=disabled)
        action, verb, doing = resume_schedules, "resume", "Resuming"
    else:
        clicked = st.button("Pause schedules", key="pause", disabled=disabled)
        action, verb, doing = pause_schedules, "pause", "Pausing"
    if clicked and require_write(f"{verb} the schedules of {state.name}"):
        try:
            with st.spinner(f"{doing} {state.name}…"), prefect() as client:
                done = action(client, deployment=state.name)
        except BACKEND_ERRORS as exc:
            show_error(f"Could not {verb} {state.name}", exc, PREFECT_HINT)
            return
        st.session_state[NOTICE_KEY] = (
            f"{state.name} is {'paused' if done.paused else 'active'} now."
        )
        st.rerun()


def show_triggers(deployment: RetrainDeployment) -> None:
    cfg = settings().monitoring
    st.subheader("Triggers and thresholds")
    with prefect() as client:
        triggers = deployment_triggers(client, deployment.id)
    if triggers:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "trigger": t.name,
                        "enabled": t.enabled,
                        "on events": ", ".join(t.events),
                        "of": t.resource,
                        "posture": t.posture,
                        "threshold": t.threshold,
                        "cooldown h": t.within_s / 3600,
                        "reason passed": str(t.parameters.get("reason", "")),
                    }
                    for t in triggers
                ]
            ),
            hide_index=True,
            width="stretch",
        )
        st.caption(
            "The first matching event starts a run; the model's further events within the "
            "cooldown are ignored, so a burst of events starts one retraining."
        )
    else:
        st.info(
            f"{deployment.name} has no event trigger: it runs on its schedule and by hand "
            "only. `mlops deploy` registers the drift and performance triggers."
        )
    left, middle, right = st.columns(3)
    left.metric(
        "drift share threshold",
        f"{cfg.drift_share_threshold:.0%}",
        help="the monitor emits mlops.model.drift-detected at or above this share of "
        "drifted features (MLOPS_MONITORING__DRIFT_SHARE_THRESHOLD)",
    )
    middle.metric(
        "minimum live accuracy",
        f"{cfg.min_live_accuracy:.0%}",
        help="below it the monitor emits mlops.model.performance-degraded "
        "(MLOPS_MONITORING__MIN_LIVE_ACCURACY)",
    )
    right.metric(
        "rows to judge drift",
        f"{cfg.min_rows:,}",
        help=f"per window of {cfg.window_hours:g} h (MLOPS_MONITORING__MIN_ROWS)",
    )


def show_runs(deployment: RetrainDeployment) -> None:
    st.subheader("Recent runs")
    with prefect() as client:
        runs = recent_flow_runs(client, deployment_ids=[deployment.id], limit=20)
    if not runs:
        st.caption("No run yet.")
        return
    table = pd.DataFrame(
        [
            {
                "started": r["started"],
                "flow run": r["name"],
                "reason": str(r["parameters"].get("reason", "")),
                "by hand": MANUAL_TAG in r["tags"],
                "state": r["state"],
                "seconds": r["duration_s"],
                "message": r["message"],
                "link": flow_run_url(r["id"]),
                "id": r["id"],
            }
            for r in runs
        ]
    )
    st.caption("reason: the event that triggered the run, `schedule`, or `manual` (retrain now).")
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        column_config={
            "link": st.column_config.LinkColumn("Prefect UI", display_text="open"),
            "seconds": st.column_config.NumberColumn(format="%.0f"),
        },
    )


def show_retrain_now(deployment: RetrainDeployment) -> None:
    st.subheader("Retrain now")
    with st.form("retrain_now"):
        left, right = st.columns(2)
        epochs = left.number_input(
            "epochs (0: the train flow's default)", min_value=0, value=0, key="epochs"
        )
        folds = right.number_input("walk-forward folds", min_value=1, value=3, key="folds")
        submitted = st.form_submit_button(
            "Retrain now", type="primary", disabled=not can_change_state()
        )
    if not submitted or not require_write(f"start a run of {deployment.name}"):
        return
    parameters: dict[str, object] = {
        "model_name": deployment.model,
        "reason": "manual",
        "folds": int(folds),
    }
    if epochs:
        parameters["epochs"] = int(epochs)
    try:
        with st.spinner(f"Starting {deployment.name}…"), prefect() as client:
            ref = trigger_now(client, deployment=deployment.name, parameters=parameters)
    except BACKEND_ERRORS as exc:
        show_error(f"Could not start {deployment.name}", exc, PREFECT_HINT)
        return
    url = flow_run_url(ref.id)
    st.session_state[NOTICE_KEY] = (
        f"Started flow run {ref.id} ({ref.name}) of {deployment.name}, reason manual; a "
        f"worker of its pool picks it up." + (f" [Open it in Prefect]({url})" if url else "")
    )
    st.rerun()


def render() -> None:
    st.title("Retraining")
    try:
        with st.spinner("Reading the deployments…"), prefect() as client:
            deployments = retrain_deployments(client)
    except BACKEND_ERRORS as exc:
        show_error("The Prefect API cannot be read", exc, PREFECT_HINT)
        return
    notice = st.session_state.pop(NOTICE_KEY, None)
    if notice:
        st.success(notice)
    if not deployments:
        st.info(
            "No retrain deployment is registered: run `mlops deploy` (or `mlops up`) to "
            "register retrain/<model> with its schedule and triggers."
        )
        return
    overview(deployments)
    names = [d.name for d in deployments]
    wanted = f"retrain/{settings().serving.model_name}"
    chosen = st.selectbox(
        "deployment", names, index=names.index(wanted) if wanted in names else 0, key="deployment"
    )
    deployment = deployments[names.index(chosen)]
    if not can_change_state():
        st.info(
            "Pausing, resuming and retraining need the management token: unlock changes in "
            "the sidebar with MLOPS_SERVING__API_TOKEN."
        )
    try:
        with prefect() as client:
            state = deployment_state(client, deployment=deployment.name)
        show_schedules(state)
        show_triggers(deployment)
        show_retrain_now(deployment)
        show_runs(deployment)
    except BACKEND_ERRORS as exc:
        show_error(f"{deployment.name} cannot be read", exc, PREFECT_HINT)


render()
