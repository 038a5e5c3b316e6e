"""A window of the request log as a frame: one row per scored row, with its features.

Each logged prediction holds the matrix the model scored (float32, columns in the
version's ``feature_names`` order) and one output per row (``label``, ``probability``);
feedback labels refer to a row by ``(request_id, index)``, the row's position in the
request's predictions. :func:`window_frame` lines the three up; :func:`read_window` reads
them from a :class:`~mlops.serving.request_log.RequestLog`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
import orjson
import pandas as pd

from mlops.errors import DataError
from mlops.serving.request_log import FeedbackRecord, PredictionRecord, RequestLog

logger = logging.getLogger(__name__)

REQUEST_ID = "request_id"
ROW = "row"
RECEIVED_AT = "received_at"
MODEL_VERSION = "model_version"
PREDICTED = "predicted_label"
PROBABILITY = "probability"
LABEL = "feedback_label"
"""The true label sent back through ``POST /feedback`` (missing where none came)."""

META_COLUMNS = (REQUEST_ID, ROW, RECEIVED_AT, MODEL_VERSION)
OUTPUT_COLUMNS = (PREDICTED, PROBABILITY, LABEL)


def window_frame(
    records: Sequence[PredictionRecord],
    feature_names: Sequence[str],
    feedback: Sequence[FeedbackRecord] = (),
) -> pd.DataFrame:
    """The scored rows of ``records``: request id, row, time, version, the features (float64,
    in ``feature_names`` order), the predicted label and probability, and the feedback label
    (a nullable integer).

    A request logged without its features (before the request log's revision 0002) has
    nothing to compare with the reference: it is left out, and counted in a warning.
    Raises :class:`~mlops.errors.DataError` when a request's features or outputs do not
    match its rows.
    """
    names = list(feature_names)
    blocks: list[np.ndarray] = []
    meta: dict[str, list[Any]] = {c: [] for c in (*META_COLUMNS, PREDICTED, PROBABILITY)}
    skipped = 0
    for record in records:
        try:
            matrix = record.feature_matrix(len(names))
        except ValueError as exc:
            raise DataError(f"{exc} (the model's feature_names: {', '.join(names)})") from exc
        if matrix is None:
            skipped += 1
            continue
        outputs = _outputs(record)
        if len(outputs) != len(matrix):
            raise DataError(
                f"request {record.request_id}: {len(matrix)} rows of logged features but "
                f"{len(outputs)} logged predictions"
            )
        blocks.append(matrix)
        for row, output in enumerate(outputs):
            meta[REQUEST_ID].append(record.request_id)
            meta[ROW].append(row)
            meta[RECEIVED_AT].append(record.received_at)
            meta[MODEL_VERSION].append(str(record.model_version))
            meta[PREDICTED].append(int(output["label"]))
            meta[PROBABILITY].append(float(output["probability"]))
    if skipped:
        logger.warning(
            "%d logged predictions have no features (logged before 0002): left out", skipped
        )
    values = np.concatenate(blocks) if blocks else np.empty((0, len(names)), dtype="<f4")
    frame = pd.DataFrame(values.astype(np.float64), columns=names)
    for column in reversed(META_COLUMNS):
        frame.insert(0, column, meta[column])
    frame[RECEIVED_AT] = pd.to_datetime(frame[RECEIVED_AT], utc=True)
    frame[PREDICTED] = pd.Series(meta[PREDICTED], dtype="int64")
    frame[PROBABILITY] = pd.Series(meta[PROBABILITY], dtype="float64")
    labels = {(f.request_id, f.index): f.label for f in feedback}
    frame[LABEL] = pd.array(
        [labels.get(key) for key in zip(frame[REQUEST_ID], frame[ROW], strict=True)],
        dtype="Int64",
    )
    return frame


def _outputs(record: PredictionRecord) -> list[dict[str, Any]]:
    outputs = record.outputs
    if isinstance(outputs, bytes | str):
        outputs = orjson.loads(outputs)
    if not isinstance(outputs, list):
        raise DataError(f"request {record.request_id}: logged outputs are not a list of rows")
    return outputs


def read_window(
    log: RequestLog,
    *,
    model_name: str,
    model_version: str,
    feature_names: Sequence[str],
    since: datetime,
    until: datetime,
) -> pd.DataFrame:
    """:func:`window_frame` of ``model_name`` version ``model_version``'s predictions in
    ``[since, until)``, with the feedback labels received for them so far."""
    records = log.predictions_between(model_name, since, until, model_version=model_version)
    feedback = log.feedback([r.request_id for r in records]) if records else []
    return window_frame(records, feature_names, feedback)
