"""Datasets: upload a CSV or Parquet file as a versioned dataset, and browse the versions.

An upload goes through the library's own validation and storage
(:func:`mlops.datasets.add_dataset`): the same rules as ``mlops datasets add``, with the
same limits (``MLOPS_DATASETS__*``). A file that breaks a rule is shown next to the
upload with the rule, the column or row, and what to do. The uploaded bytes are written
to a temporary file of the console's own (the library validates files on disk) and
removed when another file is chosen or the dataset is added (under
``<home>/console-uploads``).

Below: every live version with its rows, time range and schema, a preview of its first
rows and its rows per day. A registered dataset can label a training run
(``labels_dataset`` on the Training page), or become the events a model's feature views
are materialized from (:func:`mlops.data.events.import_events`, as ``mlops
import-events``): the path from an upload to a trained model without a terminal.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path

import altair as alt
import pandas as pd
import pyarrow.parquet as pq
import streamlit as st
from streamlit.runtime.uploaded_file_manager import UploadedFile

from mlops.data.events import import_events
from mlops.datasets import DatasetVersion, add_dataset, dataset_file, list_datasets, open_catalog
from mlops.datasets.validate import columns_of, source_format
from mlops.errors import DataError, MlopsError
from mlops.settings import Settings
from mlops.specs import SPECS
from ui.auth import can_change_state, require_write
from ui.common import BACKEND_ERRORS, ago, settings, show_error, when

UPLOAD_KEY = "datasets_upload"
PREVIEW_ROWS = 100

RULE_HINTS = {
    "name": "Use 1 to 63 characters among a-z, 0-9, '_' and '-', starting with a letter or "
    "a digit.",
    "format": "Upload a .csv, .parquet or .pq file.",
    "max-bytes": "Split the file, or raise MLOPS_DATASETS__MAX_BYTES.",
    "header": "The first line must name every column, each name once.",
    "malformed": "Fix the file: UTF-8 text, every row with as many fields as the header "
    "(CSV), or a readable Parquet file.",
    "column-type": "Flatten or drop list, struct and map columns: a dataset holds ints, "
    "floats, bools, strings and timestamps.",
    "entity-column": "Pick the column that identifies the entity (card, customer, ...); it "
    "must hold values.",
    "timestamp-column": "Pick a column of ISO 8601 times (2024-05-01T12:00:00Z); every row "
    "needs one.",
    "min-rows": "Add rows, or lower MLOPS_DATASETS__MIN_ROWS.",
    "max-empty": "Fill the empty cells of that column or drop it, or raise "
    "MLOPS_DATASETS__MAX_EMPTY_FRACTION.",
    "write": "The datasets folder cannot be written: check the disk and MLOPS_DATASETS__PATH.",
}
_RULE = re.compile(r"^(?P<where>.*?): rule (?P<rule>[a-z-]+): (?P<detail>.*)$", re.DOTALL)


def explain(error: DataError, path: Path, shown_name: str) -> tuple[str | None, str]:
    """``(rule, message)`` of a validation error, naming the uploaded file (not the
    console's temporary copy)."""
    text = str(error).replace(str(path), shown_name)
    found = _RULE.match(text)
    if found is None:
        return None, text
    rule = found["rule"]
    message = f"**{found['where']}** breaks rule `{rule}`: {found['detail']}"
    hint = RULE_HINTS.get(rule)
    return rule, f"{message}\n\n{hint}" if hint else message


def _suggest_name(file_name: str) -> str:
    stem = re.sub(r"[^a-z0-9_-]+", "_", Path(file_name).stem.lower()).strip("_-")
    return stem[:63] or "dataset"


def _pick(columns: list[str], words: tuple[str, ...]) -> int:
    for i, name in enumerate(columns):
        if any(word in name.lower() for word in words):
            return i
    return 0


def _staged(upload: UploadedFile, cfg: Settings) -> Path:
    """The upload as a file on disk under ``<home>/console-uploads`` (written once per
    upload, the previous one removed)."""
    staged = st.session_state.get(UPLOAD_KEY)
    if staged and staged[0] == upload.file_id and Path(staged[1]).is_file():
        return Path(staged[1])
    _drop_staged()
    root = cfg.home / "console-uploads"
    root.mkdir(parents=True, exist_ok=True)
    _sweep_abandoned(root)
    folder = Path(tempfile.mkdtemp(prefix="upload-", dir=root))
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(upload.name).name) or "upload"
    path = folder / safe
    with path.open("wb") as fh:
        shutil.copyfileobj(upload, fh, length=1 << 20)
    upload.seek(0)
    st.session_state[UPLOAD_KEY] = (upload.file_id, str(path))
    return path


STALE_UPLOAD_S = 6 * 3600.0
"""A staged upload older than this belongs to a session that went away (a closed tab
never says so): the next upload of any session removes it."""


def _sweep_abandoned(root: Path) -> None:
    cutoff = time.time() - STALE_UPLOAD_S
    for folder in root.glob("upload-*"):
        try:
            if folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # removed by another session meanwhile
            continue


def _drop_staged() -> None:
    staged = st.session_state.pop(UPLOAD_KEY, None)
    if staged:
        shutil.rmtree(Path(staged[1]).parent, ignore_errors=True)


def render_upload(cfg: Settings) -> None:
    st.subheader("Add a dataset")
    limit_mb = cfg.datasets.max_bytes / 1e6
    upload = st.file_uploader(
        "CSV or Parquet file",
        type=["csv", "parquet", "pq"],
        help=f"At most {limit_mb:,.0f} MB (MLOPS_DATASETS__MAX_BYTES), at least "
        f"{cfg.datasets.min_rows} rows, at most {cfg.datasets.max_empty_fraction:.0%} empty "
        "cells per column, an entity column and a timestamp column of ISO 8601 times.",
    )
    if upload is None:
        _drop_staged()
        st.caption("Choose a file to see its columns and add it.")
        return
    path = _staged(upload, cfg)
    try:
        columns = list(columns_of(path, source_format(path)))
    except DataError as exc:
        _, message = explain(exc, path, upload.name)
        st.error(message, icon=":material/rule:")
        return
    st.caption(f"{upload.name}: {len(columns)} columns, {upload.size:,} bytes")
    with st.form("add_dataset"):
        name = st.text_input(
            "Dataset name",
            value=_suggest_name(upload.name),
            help="a-z, 0-9, '_' and '-'; adding the same name again makes a new version",
        )
        left, right = st.columns(2)
        entity = left.selectbox(
            "Entity column", columns, index=_pick(columns, ("id", "key", "entity"))
        )
        timestamp = right.selectbox(
            "Timestamp column", columns, index=_pick(columns, ("time", "ts", "date", "at"))
        )
        submitted = st.form_submit_button(
            "Validate and add", type="primary", disabled=not can_change_state()
        )
    if not can_change_state():
        st.caption("Adding a dataset needs the management token (unlock in the sidebar).")
    if not submitted or not require_write(f"add dataset {name!r}"):
        return
    url = cfg.datasets.catalog_url
    assert url is not None  # filled by Settings
    try:
        with st.spinner(f"Validating {upload.name} and storing it..."):
            catalog = open_catalog(url)
            try:
                record = add_dataset(
                    settings=cfg,
                    catalog=catalog,
                    path=path,
                    name=name,
                    entity=str(entity),
                    timestamp=str(timestamp),
                )
            finally:
                catalog.engine.dispose()
    except DataError as exc:
        _, message = explain(exc, path, upload.name)
        st.error(message, icon=":material/rule:")
        return
    except BACKEND_ERRORS as exc:
        show_error(
            f"Could not add {upload.name}",
            exc,
            "Check the dataset catalog (MLOPS_DATASETS__CATALOG_URL) and the datasets folder "
            "(MLOPS_DATASETS__PATH).",
        )
        return
    _drop_staged()  # stored now; the upload is written again only if added again
    st.success(
        f"Added {upload.name} as dataset {record.name} version {record.version}: "
        f"{record.rows:,} rows from {when(record.time_min)} to {when(record.time_max)}."
    )


def versions_frame(records: list[DatasetVersion]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "dataset": r.name,
                "version": r.version,
                "rows": r.rows,
                "from": r.time_min,
                "to": r.time_max,
                "entity": r.entity,
                "timestamp": r.timestamp,
                "columns": len(r.schema),
                "size (MB)": round(r.size_bytes / 1e6, 3),
                "added": r.created_at,
                "source file": r.source_name,
                "sha256": r.sha256[:12],
            }
            for r in records
        ],
        columns=[
            "dataset",
            "version",
            "rows",
            "from",
            "to",
            "entity",
            "timestamp",
            "columns",
            "size (MB)",
            "added",
            "source file",
            "sha256",
        ],
    )


def render_version(cfg: Settings, record: DatasetVersion) -> None:
    path = dataset_file(cfg, record)
    st.markdown(
        f"**{record.name} version {record.version}** · {record.rows:,} rows · "
        f"{when(record.time_min)} → {when(record.time_max)} · added {ago(record.created_at)} "
        f"from `{record.source_name}`"
    )
    schema, preview = st.columns([1, 3])
    roles = {record.entity: "entity", record.timestamp: "timestamp"}
    schema.dataframe(
        pd.DataFrame(
            [{"column": c, "kind": k, "role": roles.get(c, "")} for c, k in record.schema.items()]
        ),
        hide_index=True,
    )
    try:
        parquet = pq.ParquetFile(path)
        first = next(parquet.iter_batches(batch_size=PREVIEW_ROWS), None)
        times = pq.read_table(path, columns=[record.timestamp]).column(0).to_pandas()
    except (OSError, ValueError) as exc:
        show_error(
            f"The file of {record.name} version {record.version} cannot be read",
            exc,
            f"It should be {path}: restore it, or add the dataset again.",
        )
        return
    with preview:
        st.caption(f"first {PREVIEW_ROWS} rows")
        st.dataframe(first.to_pandas() if first is not None else pd.DataFrame(), hide_index=True)
    per_day = (
        pd.to_datetime(times, utc=True).dt.floor("D").value_counts().sort_index().reset_index()
    )
    per_day.columns = ["day", "rows"]
    st.altair_chart(
        alt.Chart(per_day)
        .mark_bar()
        .encode(x=alt.X("day:T", title="day (UTC)"), y="rows:Q", tooltip=["day:T", "rows:Q"])
        .properties(height=180),
        use_container_width=True,
    )


def render_versions(cfg: Settings) -> None:
    st.subheader("Versions")
    url = cfg.datasets.catalog_url
    assert url is not None
    try:
        catalog = open_catalog(url)
        try:
            records = list_datasets(catalog=catalog)
        finally:
            catalog.engine.dispose()
    except BACKEND_ERRORS as exc:
        show_error(
            "The dataset catalog cannot be read",
            exc,
            "Check MLOPS_DATASETS__CATALOG_URL (its database must be reachable).",
        )
        return
    if not records:
        st.info("No dataset yet: add a CSV or Parquet file above.")
        return
    st.dataframe(
        versions_frame(records),
        hide_index=True,
        column_config={
            "from": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
            "to": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
            "added": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
        },
    )
    labels = [f"{r.name}@{r.version}" for r in reversed(records)]
    chosen = st.selectbox("Schema and preview of", labels)
    record = next(r for r in records if f"{r.name}@{r.version}" == chosen)
    render_version(cfg, record)
    render_use_as_events(cfg, record)


def render_use_as_events(cfg: Settings, record: DatasetVersion) -> None:
    """Make this version the events of a model's feature views (then materialize them on
    the Features page and train on the Training page)."""
    st.subheader("Use as a model's events")
    with st.form("use_as_events"):
        model = st.selectbox("model", sorted(SPECS), help="its feature views and labels")
        submitted = st.form_submit_button(
            f"Use {record.name}@{record.version} as its events",
            disabled=not can_change_state(),
        )
    if not submitted or not require_write(f"use {record.name} as the events of {model}"):
        return
    try:
        with st.spinner("Checking and writing the events..."):
            imported = import_events(cfg, dataset_file(cfg, record), str(model))
    except MlopsError as exc:
        show_error(
            f"{record.name}@{record.version} cannot be the events of {model}",
            exc,
            "The file needs every column the model's feature views and label read.",
        )
        return
    st.success(
        f"{imported.rows:,} events of {record.name}@{record.version} are now the source of "
        f"{model}'s feature views ({imported.target}): materialize them on the Features page."
    )


def render() -> None:
    cfg = settings()
    st.title("Datasets")
    st.caption(f"catalog {cfg.datasets.catalog_url} · files under {cfg.datasets.path}")
    render_upload(cfg)
    render_versions(cfg)


render()
