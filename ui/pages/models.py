"""Models: the registered models with their versions and aliases, and a form that
starts a training run of the deployment ``train/<model>``.

The registry is read with an :class:`MlflowClient` built from the settings; the run is
created through the Prefect API (``run_deployment`` with ``timeout=0``: the page does
not wait for it) and linked to the Prefect UI.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import pandas as pd
import streamlit as st
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlops.registry import mlflow_client
from mlops.settings import Settings
from mlops.specs import SPECS


def registry_table(client: MlflowClient) -> pd.DataFrame:
    """One row per model version, newest first within a model, with its aliases."""
    rows: list[dict[str, Any]] = []
    for model in client.search_registered_models(order_by=["name ASC"]):
        aliases_of: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases_of.setdefault(str(version), []).append(alias)
        versions = client.search_model_versions(f"name = '{model.name}'")
        for version in sorted(versions, key=lambda v: int(v.version), reverse=True):
            rows.append(
                {
                    "model": model.name,
                    "version": int(version.version),
                    "aliases": ", ".join(sorted(aliases_of.get(str(version.version), []))),
                    "created": datetime.fromtimestamp(version.creation_timestamp / 1000, UTC),
                    "data window": (version.tags or {}).get("data_window", ""),
                    "run": version.run_id,
                }
            )
    columns = ["model", "version", "aliases", "created", "data window", "run"]
    return pd.DataFrame(rows, columns=columns)


def start_training(api_url: str, model: str, parameters: dict[str, Any]) -> tuple[str, str]:
    """Create a flow run of ``train/<model>`` through the Prefect API at ``api_url`` and
    return at once: ``(flow run id, its page in the Prefect UI)``."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.utilities.urls import url_for

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        flow_run = cast(FlowRun, run_deployment(f"train/{model}", parameters=parameters, timeout=0))
        return str(flow_run.id), url_for(flow_run) or ""


def render() -> None:
    settings = Settings()
    st.title("Models")
    st.caption(f"registry: {settings.registry_uri}")

    try:
        table = registry_table(mlflow_client(settings))
    except (MlflowException, OSError) as exc:
        st.error(f"The MLflow registry at {settings.registry_uri} cannot be read: {exc}")
        table = None
    if table is not None and table.empty:
        st.info("No registered model yet: start a training run below.")
    elif table is not None:
        st.dataframe(table, hide_index=True)

    st.subheader("Start a training run")
    api_url = settings.prefect.api_url
    if not api_url:
        st.warning(
            "No Prefect server is configured (MLOPS_PREFECT__API_URL): start the platform "
            "with `mlops up` to run deployments from here."
        )
    models = sorted({*SPECS, *([] if table is None else table["model"].unique())})
    with st.form("train"):
        model = st.selectbox("model", models)
        left, middle, right = st.columns(3)
        epochs = left.number_input("epochs", min_value=1, value=8, step=1)
        batch_size = middle.number_input("batch size", min_value=1, value=1024, step=64)
        learning_rate = right.number_input(
            "learning rate", min_value=1e-6, value=2e-3, step=1e-4, format="%.4f"
        )
        device = st.selectbox("device", ["auto", "cpu", "cuda"])
        submitted = st.form_submit_button("Train", type="primary", disabled=not api_url)
    if submitted and model and api_url:
        parameters = {
            "model_name": model,
            "epochs": int(epochs),
            "batch_size": int(batch_size),
            "learning_rate": float(learning_rate),
            "device": device,
        }
        try:
            run_id, url = start_training(api_url, model, parameters)
        except Exception as exc:  # the API's errors are many kinds; show what happened
            st.error(f"Could not start train/{model}: {exc}")
        else:
            st.success(f"Started flow run {run_id} of train/{model}.")
            if url:
                st.link_button("Open it in the Prefect UI", url)


render()
