"""The ONNX runtime side of serving: load a registered model, check it, and predict.

:func:`load_model` resolves a registry alias to a version, downloads the version's
MLflow ONNX model, refuses it unless the sha256 of ``model.onnx`` equals the version's
``onnx_sha256`` tag, builds an onnxruntime session from exactly the bytes it hashed, and
runs one warm-up inference. The result, a :class:`LoadedModel`, is immutable: a new
champion is a new object, swapped in with one reference assignment.

What a served version carries (written by the training flow):

==================  ================================================================
``model.onnx``      input ``features`` float32 [N, F], output ``probabilities``
                    float32 [N, 2] (column 1 = P(positive)); scaling is in the graph
``onnx_sha256``     sha256 hex of ``model.onnx``
``feature_names``   JSON list: the input columns, in order
``feature_views``   JSON list of ``"view@version"``: where entity features are read
``entity_key``      the entity column, e.g. ``card_id``
==================  ================================================================

Feature rows come either inline (:func:`rows_to_matrix`) or from the online store by
entity key (:func:`features_for_entities`); both give the raw float32 matrix the graph
expects.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any, NoReturn

import mlflow
import mlflow.artifacts
import numpy as np
import onnxruntime as ort
from mlflow.exceptions import MlflowException

from mlops.errors import (
    EntityNotFoundError,
    FeatureColumnError,
    FeatureRowError,
    FeatureStoreError,
    IncompleteFeaturesError,
    IntegrityError,
    NoChampionError,
    RegistryError,
    SchemaError,
    VersionMismatchError,
)
from mlops.features.online.base import OnlineRow, OnlineStore
from mlops.registry import version_by_alias
from mlops.tags import Tags

logger = logging.getLogger(__name__)

INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"
MODEL_FILE = "model.onnx"
REQUIRED_TAGS = Tags.REQUIRED_FOR_SERVING
DEFAULT_INTRA_OP_THREADS = 1
"""onnxruntime threads per session. A server runs many small requests at once, each on
the event loop or a thread of its own: a pool per session only fights them for cores
(on 2 cores, one row: 11 µs with 1 thread, 31 µs with 4; 1,000 rows: 158 µs vs 327 µs)."""
POSITIVE_THRESHOLD = 0.5
"""P(positive) at or above which the predicted label is 1."""

_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class ViewRef:
    """A feature view at one version, written ``name@version`` in tags."""

    name: str
    version: str

    @classmethod
    def parse(cls, ref: str) -> ViewRef:
        """``"card_features@3f2a9c"`` → ``ViewRef("card_features", "3f2a9c")``."""
        name, sep, version = ref.rpartition("@")
        if not sep or not name or not version:
            raise RegistryError(f"feature view reference {ref!r} is not of the form name@version")
        return cls(name=name, version=version)

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class LoadedModel:
    """A verified, warmed ONNX model version, ready to predict."""

    name: str
    version: str
    alias: str
    feature_names: tuple[str, ...]
    feature_views: tuple[ViewRef, ...]
    entity_key: str
    onnx_sha256: str
    signature: dict[str, Any]
    session: ort.InferenceSession = field(repr=False, compare=False)
    loaded_at: datetime

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities [N, 2] for the raw feature matrix ``x`` [N, F] (columns in order)."""
        matrix = np.ascontiguousarray(x, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[1] != self.n_features:
            raise SchemaError(
                f"model {self.name} v{self.version} takes a [N, {self.n_features}] matrix, "
                f"got shape {list(matrix.shape)}"
            )
        if matrix.shape[0] == 0:
            return np.empty((0, 2), dtype=np.float32)
        (out,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: matrix})
        return np.asarray(out, dtype=np.float32)


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def load_model(
    *,
    client: mlflow.MlflowClient,
    name: str,
    alias: str = "champion",
    cache_dir: Path,
    intra_op_threads: int | None = None,
) -> LoadedModel:
    """Resolve ``name@alias``, download, verify, build and warm the ONNX session.

    Raises :class:`NoChampionError` when no version carries ``alias``,
    :class:`IntegrityError` when ``model.onnx`` does not match the ``onnx_sha256`` tag,
    and :class:`RegistryError` when the registry cannot be read or a tag is malformed.
    """
    started = time.perf_counter()
    try:
        version = version_by_alias(client, name, alias)
    except MlflowException as exc:
        raise RegistryError(f"cannot resolve model {name!r} alias {alias!r}: {exc}") from exc
    if version is None:
        raise NoChampionError(
            f"no version of model {name!r} has alias {alias!r} yet: "
            "run `mlops demo` or the train and evaluate flows"
        )

    tags: dict[str, str] = dict(version.tags or {})
    missing = [tag for tag in REQUIRED_TAGS if not tags.get(tag)]
    if missing:
        raise IntegrityError(
            f"model {name!r} version {version.version} lacks tag(s) {', '.join(missing)}: "
            "it was not registered by the training flow and cannot be served"
        )
    expected_sha = tags[Tags.ONNX_SHA256].strip().lower()
    feature_names = _json_str_list(tags[Tags.FEATURE_NAMES], tag=Tags.FEATURE_NAMES, name=name)
    views = tuple(
        ViewRef.parse(ref)
        for ref in _json_str_list(tags[Tags.FEATURE_VIEWS], tag=Tags.FEATURE_VIEWS, name=name)
    )

    model_bytes = _fetch_model_bytes(
        client=client,
        name=name,
        version=str(version.version),
        expected_sha=expected_sha,
        cache_dir=cache_dir,
    )
    actual_sha = sha256_hex(model_bytes)
    if actual_sha != expected_sha:
        raise IntegrityError(
            f"model {name!r} version {version.version}: sha256 of {MODEL_FILE} is "
            f"{actual_sha} but the version's onnx_sha256 tag is {expected_sha}; refusing to serve"
        )

    session = _build_session(model_bytes, intra_op_threads=intra_op_threads)
    signature = _check_signature(session, n_features=len(feature_names), name=name)
    model = LoadedModel(
        name=name,
        version=str(version.version),
        alias=alias,
        feature_names=tuple(feature_names),
        feature_views=views,
        entity_key=tags[Tags.ENTITY_KEY],
        onnx_sha256=actual_sha,
        signature=signature,
        session=session,
        loaded_at=datetime.now(UTC),
    )
    warm = model.predict(np.zeros((1, model.n_features), dtype=np.float32))
    if warm.shape != (1, 2):
        raise IntegrityError(
            f"model {name!r} version {model.version}: warm-up output has shape "
            f"{list(warm.shape)}, expected [1, 2]"
        )
    logger.info(
        "loaded model %s v%s (alias %s, sha256 %s…) in %.2fs",
        name,
        model.version,
        alias,
        actual_sha[:12],
        time.perf_counter() - started,
    )
    return model


def _json_str_list(raw: str, *, tag: str, name: str) -> list[str]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RegistryError(f"model {name!r}: tag {tag!r} is not JSON: {raw!r}") from exc
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise RegistryError(f"model {name!r}: tag {tag!r} must be a JSON list of names: {raw!r}")
    if len(set(value)) != len(value):
        raise RegistryError(f"model {name!r}: tag {tag!r} repeats a name: {raw!r}")
    return value


def _fetch_model_bytes(
    *, client: mlflow.MlflowClient, name: str, version: str, expected_sha: str, cache_dir: Path
) -> bytes:
    """``model.onnx`` of the version, from ``cache_dir/name/version`` when it still matches.

    A fresh download goes to a temporary folder beside the cache entry and replaces it
    whole, so a half-written download is never read back.
    """
    target = cache_dir / name / version
    cached = target / MODEL_FILE
    if cached.is_file():
        data = cached.read_bytes()
        if sha256_hex(data) == expected_sha:
            logger.debug("model %s v%s: using cached %s", name, version, cached)
            return data
        logger.warning("model %s v%s: cached %s does not match, downloading", name, version, cached)

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=target.parent))
    try:
        uri = client.get_model_version_download_uri(name, version)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=str(staging), tracking_uri=client.tracking_uri
        )
        model_file = Path(local) / MODEL_FILE
        if not model_file.is_file():
            raise IntegrityError(
                f"model {name!r} version {version}: its artifacts at {uri} have no {MODEL_FILE} "
                "(only ONNX models are served)"
            )
        data = model_file.read_bytes()
        if target.exists():
            shutil.rmtree(target)
        os.replace(Path(local), target)
    except MlflowException as exc:
        raise RegistryError(f"cannot download model {name!r} version {version}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return data


def _build_session(model_bytes: bytes, *, intra_op_threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    threads = intra_op_threads or min(DEFAULT_INTRA_OP_THREADS, os.cpu_count() or 1)
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(
            model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise IntegrityError(f"onnxruntime cannot load the model: {exc}") from exc


def _check_signature(
    session: ort.InferenceSession, *, n_features: int, name: str
) -> dict[str, Any]:
    """The graph's inputs and outputs as JSON; raises unless they follow the contract."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
        raise IntegrityError(
            f"model {name!r}: the graph must take {INPUT_NAME!r} and return {OUTPUT_NAME!r}; "
            f"it takes {sorted(inputs)} and returns {sorted(outputs)}"
        )
    width = inputs[INPUT_NAME].shape[-1] if inputs[INPUT_NAME].shape else None
    if isinstance(width, int) and width != n_features:
        raise IntegrityError(
            f"model {name!r}: the graph takes {width} features but the feature_names tag "
            f"lists {n_features}"
        )

    def describe(arg: Any) -> dict[str, Any]:
        return {"name": arg.name, "type": arg.type, "shape": list(arg.shape)}

    return {
        "inputs": [describe(i) for i in session.get_inputs()],
        "outputs": [describe(o) for o in session.get_outputs()],
    }


def rows_to_matrix(rows: Sequence[Mapping[str, Any]], feature_names: Sequence[str]) -> np.ndarray:
    """Inline feature rows → float32 matrix [N, F] with columns in ``feature_names`` order.

    Every row must hold exactly the model's features, each a finite number (also once
    cast to float32). Raises :class:`FeatureRowError` naming the row and the feature.
    The common case (every row well formed) is checked in bulk
    (:func:`bulk_rows_matrix`); the row-by-row walk that names the culprit runs only
    when that check fails.
    """
    matrix = bulk_rows_matrix(rows, feature_names)
    if matrix is not None:
        return matrix
    return _rows_to_matrix_checked(rows, list(feature_names))


def bulk_rows_matrix(rows: Sequence[Any], feature_names: Sequence[str]) -> np.ndarray | None:
    """The float32 matrix of object rows when every row is a dict of exactly
    ``feature_names`` holding JSON numbers (int, float, bool) finite as float32; None
    otherwise, without saying why (:func:`rows_to_matrix` names the culprit).

    Safe on rows straight from a JSON parser: a string, list or null value makes it
    answer None rather than convert it.
    """
    names = tuple(feature_names)
    if not rows:
        return np.empty((0, len(names)), dtype=np.float32)
    known = frozenset(names)
    if not all(type(row) is dict and row.keys() == known for row in rows):
        return None
    if len(names) == 1:
        (only,) = names
        values: Any = [[row[only]] for row in rows]
    else:
        values = list(map(itemgetter(*names), rows))  # tuples, built in C
    return _numeric_matrix(values, len(names))


def table_to_matrix(
    rows: Sequence[Sequence[Any]], columns: Sequence[str], feature_names: Sequence[str]
) -> np.ndarray:
    """Array rows whose values follow ``columns`` → float32 matrix [N, F] in
    ``feature_names`` order (the compact form of inline rows, as a table).

    ``columns`` must name each model feature once, in any order
    (:class:`FeatureColumnError` otherwise); each row must have ``len(columns)`` finite
    numbers (:class:`FeatureRowError` naming the row and the column otherwise).
    """
    order = column_order(columns, feature_names)
    matrix = bulk_table_matrix(rows, len(columns))
    if matrix is None:
        matrix = _table_checked(rows, list(columns))
    return matrix if order is None else matrix[:, order]


def column_order(columns: Sequence[str], feature_names: Sequence[str]) -> list[int] | None:
    """The indices that put ``columns`` in ``feature_names`` order (None when they already
    are); raises :class:`FeatureColumnError` unless ``columns`` names each feature once."""
    names = list(feature_names)
    if list(columns) == names:
        return None
    position: dict[str, int] = {}
    for j, column in enumerate(columns):
        if column not in names:
            raise FeatureColumnError(
                column=j,
                feature=column,
                problem="unknown",
                message=f"columns[{j}]: unknown feature {column!r}; the model takes "
                f"{', '.join(names)}",
            )
        if column in position:
            raise FeatureColumnError(
                column=j,
                feature=column,
                problem="repeated",
                message=f"columns[{j}]: feature {column!r} is already columns[{position[column]}]",
            )
        position[column] = j
    for feature in names:
        if feature not in position:
            raise FeatureColumnError(
                column=None,
                feature=feature,
                problem="missing",
                message=f"columns: missing feature {feature!r}; the model takes {', '.join(names)}",
            )
    return [position[feature] for feature in names]


def bulk_table_matrix(rows: Sequence[Any], width: int) -> np.ndarray | None:
    """The float32 matrix of array rows when every row is a list of ``width`` JSON
    numbers finite as float32; None otherwise (:func:`table_to_matrix` names why)."""
    if not rows:
        return np.empty((0, width), dtype=np.float32)
    # No check per row: numpy refuses ragged rows, and _numeric_matrix anything but a
    # [N, width] matrix of numbers (a row that is a dict, a string or nested lists).
    return _numeric_matrix(rows, width)


def _numeric_matrix(values: Any, width: int) -> np.ndarray | None:
    """``values`` (equal-length sequences) as float32 when all are numbers finite as
    float32, else None. Numbers only: numpy would also convert strings such as "1e3"."""
    try:
        array = np.array(values)
    except (TypeError, ValueError, OverflowError):
        return None
    if array.ndim != 2 or array.shape[1] != width or array.dtype.kind not in "biuf":
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        matrix = array.astype(np.float32)
    return matrix if bool(np.isfinite(matrix).all()) else None


def _number(value: Any, *, row: int, feature: str) -> float:
    """``value`` as a float finite in float32, else :class:`FeatureRowError`."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FeatureRowError(
            row=row,
            feature=feature,
            problem="not a number",
            message=f"rows[{row}]: feature {feature!r} = {value!r} is not a number",
        ) from None
    if not (math.isfinite(number) and abs(number) <= _FLOAT32_MAX):
        raise FeatureRowError(
            row=row,
            feature=feature,
            problem="not finite",
            message=f"rows[{row}]: feature {feature!r} = {value!r} is not a finite float32",
        )
    return number


def _rows_to_matrix_checked(rows: Sequence[Mapping[str, Any]], names: list[str]) -> np.ndarray:
    known = set(names)
    matrix = np.empty((len(rows), len(names)), dtype=np.float32)
    for i, row in enumerate(rows):
        for feature in row:
            if feature not in known:
                raise FeatureRowError(
                    row=i,
                    feature=feature,
                    problem="unknown",
                    message=f"rows[{i}]: unknown feature {feature!r}; the model takes "
                    f"{', '.join(names)}",
                )
        for j, feature in enumerate(names):
            if feature not in row:
                raise FeatureRowError(
                    row=i,
                    feature=feature,
                    problem="missing",
                    message=f"rows[{i}]: missing feature {feature!r}",
                )
            matrix[i, j] = _number(row[feature], row=i, feature=feature)
    return matrix


def _table_checked(rows: Sequence[Sequence[Any]], columns: list[str]) -> np.ndarray:
    matrix = np.empty((len(rows), len(columns)), dtype=np.float32)
    for i, row in enumerate(rows):
        if len(row) != len(columns):
            raise FeatureRowError(
                row=i,
                feature=None,
                problem="wrong length",
                message=f"rows[{i}]: {len(row)} values for {len(columns)} columns",
            )
        for j, column in enumerate(columns):
            matrix[i, j] = _number(row[j], row=i, feature=column)
    return matrix


def features_for_entities(
    store: OnlineStore, model: LoadedModel, keys: Sequence[str]
) -> np.ndarray:
    """The model's raw feature matrix [len(keys), F] read from the online store.

    Reads every view the model was trained on, in one :meth:`OnlineStore.read_many`.
    Raises :class:`EntityNotFoundError` naming the keys a view has no row for,
    :class:`VersionMismatchError` when a stored row was computed by another version of
    its view than the model recorded, and :class:`IncompleteFeaturesError` when a model
    feature is absent or NaN.
    :class:`mlops.errors.StoreUnavailableError` from the store passes through.
    """
    if not keys:
        return np.empty((0, model.n_features), dtype=np.float32)
    # Every view in one round trip (Redis: one script call for up to 1,000 keys in all).
    return matrix_from_rows(model, keys, store.read_many(entity_reads(model, keys)))


def entity_reads(model: LoadedModel, keys: Sequence[str]) -> dict[str, Sequence[str]]:
    """The :meth:`OnlineStore.read_many` request of ``keys`` for ``model``: every view."""
    return {ref.name: keys for ref in model.feature_views}


def matrix_from_rows(
    model: LoadedModel, keys: Sequence[str], by_view: Mapping[str, Mapping[str, OnlineRow | None]]
) -> np.ndarray:
    """The matrix of :func:`features_for_entities` from rows already read (``by_view``:
    view → key → row, for at least ``keys``), with the same checks and errors."""
    if not keys:
        return np.empty((0, model.n_features), dtype=np.float32)
    columns: dict[str, np.ndarray] = {}
    for ref in model.feature_views:
        rows = by_view[ref.name]
        missing = [key for key in dict.fromkeys(keys) if rows.get(key) is None]
        if missing:
            raise EntityNotFoundError(ref.name, missing)
        for key in keys:
            row = rows[key]
            assert row is not None
            if row.version != ref.version:
                raise VersionMismatchError(
                    f"view {ref.name!r} holds features of version {row.version} for entity "
                    f"{key!r}, but model {model.name} v{model.version} was trained on version "
                    f"{ref.version}: rematerialize the view or promote a model trained on it"
                )
        first = rows[keys[0]]
        assert first is not None
        held = [f for f in model.feature_names if f not in columns and f in first.values]
        if held:
            block = _view_block(rows, keys, held)
            if block is None:  # a feature absent or not finite: name the first culprit
                _raise_incomplete(ref.name, rows, keys, held)
            columns.update(zip(held, block.T, strict=True))
    absent = [f for f in model.feature_names if f not in columns]
    if absent:
        views = ", ".join(str(ref) for ref in model.feature_views)
        raise FeatureStoreError(
            f"model {model.name} v{model.version} needs feature(s) {', '.join(absent)} that "
            f"none of its views ({views}) hold"
        )
    return np.stack([columns[f] for f in model.feature_names], axis=1)


def _view_block(
    rows: Mapping[str, OnlineRow | None], keys: Sequence[str], features: list[str]
) -> np.ndarray | None:
    """``features`` of ``keys`` as float32 [len(keys), len(features)], read in C; None
    when a row lacks one of them or a value is not finite as float32."""
    pick = itemgetter(*features)
    try:
        if len(features) == 1:
            values: Any = [[pick(rows[key].values)] for key in keys]  # type: ignore[union-attr]
        else:
            values = [pick(rows[key].values) for key in keys]  # type: ignore[union-attr]
    except KeyError:
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        block = np.array(values, dtype=np.float32)
    return block if bool(np.isfinite(block).all()) else None


def _raise_incomplete(
    view: str, rows: Mapping[str, OnlineRow | None], keys: Sequence[str], features: list[str]
) -> NoReturn:
    """Raise :class:`IncompleteFeaturesError` for the first (key, feature) absent or not
    finite in float32, in key order."""
    for key in keys:
        row = rows[key]
        assert row is not None
        for feature in features:
            with np.errstate(over="ignore"):
                value = np.float32(row.values.get(feature, math.nan))
            if not math.isfinite(value):
                raise IncompleteFeaturesError(view=view, entity=key, feature=feature)
    raise AssertionError("_view_block refused rows that all hold finite values")
