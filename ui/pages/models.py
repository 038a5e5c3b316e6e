"""Models: the registry's versions with their metrics, aliases and lineage; two versions
side by side; promote, roll back and download the ONNX file.

Everything is read through :mod:`mlops.platform.models` with an MLflow client built from
the settings. Promotion and rollback are :func:`~mlops.platform.models.promote` and
:func:`~mlops.platform.models.rollback`: the same operations as the management API, so the
champion history, the promotion tags and the ``mlops.model.promoted`` event (which the
serving app follows) are the same whichever way a person moved the alias. Both need the
management token (:func:`ui.auth.require_write`) and a ticked confirmation, because the
app serves the new champion within seconds. Training runs start on the Training page.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st
from mlflow import MlflowClient

from mlops.platform.errors import ConflictError
from mlops.platform.models import (
    PROMOTION_AT,
    PROMOTION_BY,
    PROMOTION_KIND,
    PROMOTION_REASON,
    VersionInfo,
    champion_history,
    list_models,
    model_versions,
    promote,
    rollback,
)
from mlops.registry import CHALLENGER, CHAMPION
from mlops.tags import Tags
from ui.auth import can_change_state, require_write
from ui.common import (
    BACKEND_ERRORS,
    curve_chart,
    mlflow,
    mlflow_run_url,
    prefect_api_url,
    settings,
    show_error,
    when,
)
from ui.data import (
    ArtifactMismatchError,
    compare_versions,
    curve_metrics,
    key_metrics,
    lineage,
    metric_histories,
    onnx_bytes,
    versions_frame,
)

MLFLOW_HINT = (
    "Check that MLflow answers at MLOPS_MLFLOW__TRACKING_URI (with `mlops up` it is started "
    "for you), then reload the page."
)
DOWNLOAD_KEY = "models_onnx_download"


def _by_version(versions: list[VersionInfo]) -> dict[str, VersionInfo]:
    return {v.version: v for v in versions}


def _label(v: VersionInfo) -> str:
    return f"v{v.version}" + (f" ({', '.join(v.aliases)})" if v.aliases else "")


def _aliased(versions: list[VersionInfo], alias: str) -> VersionInfo | None:
    return next((v for v in versions if alias in v.aliases), None)


def show_summary(versions: list[VersionInfo], history: list[str]) -> None:
    champion = _aliased(versions, CHAMPION)
    challenger = _aliased(versions, CHALLENGER)
    left, middle, right = st.columns(3)
    left.metric("champion (served)", f"v{champion.version}" if champion else "none")
    middle.metric("challenger", f"v{challenger.version}" if challenger else "none")
    right.metric("versions", len(versions))
    if champion is not None and champion.tags.get(PROMOTION_AT):
        tags = champion.tags
        st.caption(
            f"v{champion.version} is champion since {tags[PROMOTION_AT][:16]} "
            f"({tags.get(PROMOTION_KIND, 'promote')} by {tags.get(PROMOTION_BY, '?')}: "
            f"{tags.get(PROMOTION_REASON, '')})"
        )
    if history:
        st.caption("earlier champions, newest last: " + ", ".join(f"v{v}" for v in history))


def show_lineage(versions: list[VersionInfo]) -> None:
    labels = {_label(v): v for v in versions}
    chosen = labels[st.selectbox("version", list(labels), key="lineage_version")]
    st.dataframe(lineage(chosen), hide_index=True, width="stretch")
    cfg = settings()
    if chosen.run_id:
        url = mlflow_run_url(_experiment_id(chosen), chosen.run_id, cfg)
        if url:
            st.link_button("Open its run in MLflow", url)
    with st.expander("every tag of this version"):
        st.json(chosen.tags)


def _experiment_id(version: VersionInfo) -> str:
    try:
        return str(mlflow().get_run(version.run_id or "").info.experiment_id)
    except BACKEND_ERRORS:
        return "0"


def show_compare(client: MlflowClient, versions: list[VersionInfo]) -> None:
    if len(versions) < 2:
        st.info("Only one version: train another one to compare.")
        return
    labels = [_label(v) for v in versions]
    by_label = dict(zip(labels, versions, strict=True))
    champion = _aliased(versions, CHAMPION)
    first = labels.index(_label(champion)) if champion and champion is not versions[0] else 1
    left, right = st.columns(2)
    a = by_label[left.selectbox("version A", labels, index=first, key="compare_a")]
    b = by_label[right.selectbox("version B", labels, index=0, key="compare_b")]
    if a.version == b.version:
        st.warning("Pick two different versions to compare.")
        return
    table = compare_versions(a, b)
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        column_config={"change": st.column_config.NumberColumn(format="%+.4f")},
    )
    sides = pd.DataFrame(
        {
            "": ["data window", "feature views", "gate decision", "created"],
            f"v{a.version}": _facts(a),
            f"v{b.version}": _facts(b),
        }
    )
    st.dataframe(sides, hide_index=True, width="stretch")

    runs = {f"v{v.version}": v.run_id for v in (a, b) if v.run_id}
    try:
        with st.spinner("Reading the runs' metric histories from MLflow…"):
            curves = curve_metrics(client, runs.values())
            histories = metric_histories(client, runs, curves)
    except BACKEND_ERRORS as exc:
        show_error("The runs' metric histories cannot be read", exc, MLFLOW_HINT)
        return
    if histories.empty:
        st.info("Neither run logged per-epoch curves (metrics at several steps).")
        return
    default = curves.index("val_roc_auc") if "val_roc_auc" in curves else 0
    metric = st.selectbox("curve", curves, index=default, key="compare_curve")
    st.altair_chart(curve_chart(histories, metric, series="version"), width="stretch")


def _facts(v: VersionInfo) -> list[str]:
    return [
        v.data_window or "",
        ", ".join(v.feature_views),
        v.tags.get(Tags.GATE_DECISION, ""),
        when(v.created),
    ]


def show_promote(client: MlflowClient, name: str, versions: list[VersionInfo]) -> None:
    cfg = settings()
    champion = _aliased(versions, CHAMPION)
    candidates = [v for v in versions if v is not champion]
    writable = can_change_state()
    if not writable:
        st.info(
            "Promoting and rolling back need the management token: unlock changes in the "
            "sidebar with MLOPS_SERVING__API_TOKEN."
        )
    st.markdown("**Promote a version to champion**")
    if not candidates:
        st.caption("Every version is the champion already: nothing to promote.")
    else:
        challenger = _aliased(candidates, CHALLENGER)
        labels = [_label(v) for v in candidates]
        index = labels.index(_label(challenger)) if challenger else 0
        target = dict(zip(labels, candidates, strict=True))[
            st.selectbox("version to promote", labels, index=index, key="promote_version")
        ]
        reason = st.text_input(
            "reason (recorded on the version)", value="promoted from the console", key="reason"
        )
        current = f"v{champion.version}" if champion else "no version"
        confirmed = st.checkbox(
            f"Yes, make v{target.version} the champion of {name}: the app serves it within "
            f"seconds, replacing {current}.",
            key="promote_confirm",
        )
        if st.button("Promote", type="primary", key="promote_button", disabled=not writable):
            if not confirmed:
                st.warning("Tick the confirmation above first: nothing was changed.")
            elif require_write(f"promote version {target.version} of {name}"):
                _move(
                    lambda: promote(
                        client,
                        name=name,
                        version=target.version,
                        by="console",
                        reason=reason.strip() or "promoted from the console",
                        events_api_url=prefect_api_url(cfg),
                    )
                )

    st.markdown("**Roll back to the previous champion**")
    try:
        history = champion_history(client, name=name)
    except BACKEND_ERRORS as exc:
        show_error("The champion history cannot be read", exc, MLFLOW_HINT)
        return
    if not history:
        st.caption(
            "No earlier champion is recorded: nothing to roll back to (promote a version instead)."
        )
        return
    back = st.checkbox(
        f"Yes, serve v{history[-1]} again instead of "
        f"{f'v{champion.version}' if champion else 'no version'}.",
        key="rollback_confirm",
    )
    if st.button(f"Roll back to v{history[-1]}", key="rollback_button", disabled=not writable):
        if not back:
            st.warning("Tick the confirmation above first: nothing was changed.")
        elif require_write(f"roll back {name}"):
            _move(
                lambda: rollback(
                    client,
                    name=name,
                    by="console",
                    reason="rolled back from the console",
                    events_api_url=prefect_api_url(cfg),
                )
            )


def _move(action: Any) -> None:
    """Run a promotion or rollback; report it, or the reason it was refused."""
    try:
        with st.spinner("Moving the champion alias…"):
            result = action()
    except ConflictError as exc:
        show_error("Refused", exc, "Pick another version, or promote instead of rolling back.")
        return
    except BACKEND_ERRORS as exc:
        show_error("The champion alias could not be moved", exc, MLFLOW_HINT)
        return
    if not result.changed:
        st.info(f"v{result.version} already is the champion of {result.name}: nothing changed.")
        return
    previous = f"v{result.previous}" if result.previous else "no version"
    st.session_state["models_moved"] = (
        f"{result.kind}: v{result.version} is now the champion of {result.name} "
        f"(was {previous}). The app swaps it in at its next registry check."
    )
    for key in ("promote_confirm", "rollback_confirm"):
        st.session_state.pop(key, None)
    st.rerun()


def show_download(client: MlflowClient, name: str, versions: list[VersionInfo]) -> None:
    labels = {_label(v): v for v in versions}
    chosen = labels[st.selectbox("version", list(labels), key="download_version")]
    wanted = (name, chosen.version)
    ready = st.session_state.get(DOWNLOAD_KEY)
    if not (ready and ready[0] == wanted):
        if st.button("Fetch model.onnx", key="fetch_onnx"):
            try:
                with st.spinner(f"Downloading v{chosen.version}'s model.onnx from MLflow…"):
                    data = onnx_bytes(client, name=name, version=chosen.version)
            except ArtifactMismatchError as exc:
                show_error("The ONNX file is not offered", exc, "Do not serve this version.")
                return
            except BACKEND_ERRORS as exc:
                show_error("model.onnx cannot be downloaded", exc, MLFLOW_HINT)
                return
            st.session_state[DOWNLOAD_KEY] = (wanted, data)
            ready = st.session_state[DOWNLOAD_KEY]
        else:
            st.caption("The file is checked against the version's onnx_sha256 tag first.")
            return
    data = ready[1]
    st.caption(
        f"{len(data):,} bytes, sha256 {chosen.tags.get(Tags.ONNX_SHA256, '?')[:16]}… (checked)"
    )
    st.download_button(
        f"Download {name}-v{chosen.version}.onnx",
        data=data,
        file_name=f"{name}-v{chosen.version}.onnx",
        mime="application/octet-stream",
        key="download_onnx",
    )


def render() -> None:
    cfg = settings()
    st.title("Models")
    st.caption(f"registry: {cfg.registry_uri}")
    client = mlflow(cfg)
    try:
        with st.spinner("Reading the registry…"):
            models = list_models(client)
    except BACKEND_ERRORS as exc:
        show_error(f"The MLflow registry at {cfg.registry_uri} cannot be read", exc, MLFLOW_HINT)
        return
    if not models:
        st.info("No registered model yet: start a training run on the Training page.")
        return
    names = [m.name for m in models]
    default = names.index(cfg.serving.model_name) if cfg.serving.model_name in names else 0
    name = st.selectbox("model", names, index=default, key="model")
    try:
        versions = model_versions(client, name=name)
        history = champion_history(client, name=name)
    except BACKEND_ERRORS as exc:
        show_error(f"The versions of {name} cannot be read", exc, MLFLOW_HINT)
        return
    moved = st.session_state.pop("models_moved", None)
    if moved:
        st.success(moved)
    if not versions:
        st.info(f"{name} has no version yet.")
        return

    show_summary(versions, history)
    metrics = key_metrics(versions)
    st.dataframe(
        versions_frame(versions, metrics),
        hide_index=True,
        width="stretch",
        column_config={m: st.column_config.NumberColumn(format="%.4f") for m in metrics},
    )

    lineage_tab, compare_tab, promote_tab, download_tab = st.tabs(
        ["Lineage", "Compare", "Promote / roll back", "Download ONNX"]
    )
    with lineage_tab:
        show_lineage(versions)
    with compare_tab:
        show_compare(client, versions)
    with promote_tab:
        show_promote(client, name, versions)
    with download_tab:
        show_download(client, name, versions)


render()
