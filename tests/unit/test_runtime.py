"""Serving runtime helpers: feature matrices from inline rows and from an online store.

The model is a real onnxruntime session over a two-node ONNX graph built in the test
(probabilities = [1 - sigmoid(x·w), sigmoid(x·w)]); the online store is the real SQLite
backend in a temporary file.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from onnx import TensorProto, helper

from mlops.errors import (
    EntityNotFoundError,
    FeatureStoreError,
    RegistryError,
    SchemaError,
    VersionMismatchError,
)
from mlops.features.online import OnlineStore, build_online_store
from mlops.features.online.base import OnlineRow
from mlops.serving import (
    FeatureColumnError,
    FeatureRowError,
    IncompleteFeaturesError,
    LoadedModel,
    ViewRef,
    features_for_entities,
    rows_to_matrix,
    table_to_matrix,
)
from mlops.serving.runtime import (
    bulk_rows_matrix,
    bulk_table_matrix,
    column_order,
    matrix_from_rows,
)
from mlops.settings import SqliteOnlineStoreSettings

FEATURES = ("a", "b", "c")
WEIGHTS = np.array([[0.5], [-1.0], [2.0]], dtype=np.float32)


def _session() -> ort.InferenceSession:
    """features [N, 3] → probabilities [N, 2] = [1 - σ(xw), σ(xw)]."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 1], WEIGHTS.ravel().tolist())
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "w"], ["z"]),
            helper.make_node("Sigmoid", ["z"], ["p"]),
            helper.make_node("Sub", ["one", "p"], ["q"]),
            helper.make_node("Concat", ["q", "p"], ["probabilities"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])],
        initializer=[w, one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _model(
    views: tuple[ViewRef, ...] = (ViewRef("left", "v1"), ViewRef("right", "v2")),
) -> LoadedModel:
    return LoadedModel(
        name="tiny",
        version="7",
        alias="champion",
        feature_names=FEATURES,
        feature_views=views,
        entity_key="user_id",
        onnx_sha256="0" * 64,
        signature={},
        session=_session(),
        loaded_at=datetime.now(UTC),
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[OnlineStore]:
    """SQLite store: view ``left`` holds a, b; view ``right`` holds c."""
    store = build_online_store(SqliteOnlineStoreSettings(path=tmp_path / "online.db"))
    now = datetime.now(UTC)
    left = pd.DataFrame(
        {"user_id": ["u1", "u2", "u3"], "ts": now, "a": [1.0, 2.0, 3.0], "b": [4.0, 5.0, math.nan]}
    )
    right = pd.DataFrame({"user_id": ["u1", "u2", "u3"], "ts": now, "c": [7.0, 8.0, 9.0]})
    for view, version, frame, features in (
        ("left", "v1", left, ["a", "b"]),
        ("right", "v2", right, ["c"]),
    ):
        store.write_batch(
            view=view,
            version=version,
            frame=frame,
            entity="user_id",
            timestamp="ts",
            features=features,
            ttl=timedelta(hours=1),
        )
    yield store
    store.close()


def test_view_ref_parse_round_trip() -> None:
    ref = ViewRef.parse("card_features@3f2a9c")
    assert ref == ViewRef("card_features", "3f2a9c")
    assert str(ref) == "card_features@3f2a9c"
    for bad in ("card_features", "@v1", "name@"):
        with pytest.raises(RegistryError, match="name@version"):
            ViewRef.parse(bad)


def test_rows_to_matrix_orders_columns_by_feature_names() -> None:
    rows = [{"c": 3.0, "a": 1.0, "b": 2.0}, {"b": -1.0, "c": 0.0, "a": 1e30}]
    matrix = rows_to_matrix(rows, FEATURES)
    assert matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix, np.array([[1, 2, 3], [1e30, -1, 0]], np.float32))
    assert rows_to_matrix([], FEATURES).shape == (0, 3)


@pytest.mark.parametrize(
    ("row", "feature", "problem"),
    [
        ({"a": 1.0, "b": 2.0}, "c", "missing"),
        ({"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}, "d", "unknown"),
        ({"a": 1.0, "b": math.inf, "c": 3.0}, "b", "not finite"),
        ({"a": 1.0, "b": 2.0, "c": 1e39}, "c", "not finite"),
    ],
)
def test_rows_to_matrix_names_row_and_feature(
    row: dict[str, float], feature: str, problem: str
) -> None:
    good = {"a": 0.0, "b": 0.0, "c": 0.0}
    with pytest.raises(FeatureRowError) as caught:
        rows_to_matrix([good, row], FEATURES)
    assert (caught.value.row, caught.value.feature, caught.value.problem) == (1, feature, problem)
    assert "rows[1]" in str(caught.value) and repr(feature) in str(caught.value)
    assert isinstance(caught.value, SchemaError)


@pytest.mark.parametrize("value", ["1.5", None, [1.0], {"x": 1.0}, 10**40, float("nan")], ids=repr)
def test_bulk_matrices_answer_none_unless_every_value_is_a_finite_number(value: object) -> None:
    # Straight from a JSON parser: numpy would turn "1.5" into 1.5; the bulk path must not.
    rows = [{"a": 0.0, "b": 0.0, "c": 0.0}, {"a": 1.0, "b": value, "c": 3.0}]
    assert bulk_rows_matrix(rows, FEATURES) is None
    assert bulk_table_matrix([[0.0, 0.0, 0.0], [1.0, value, 3.0]], 3) is None


def test_bulk_matrices_take_ints_and_bools_as_json_numbers() -> None:
    rows = [{"a": 1, "b": True, "c": 2.5}, {"a": -3, "b": False, "c": 0}]
    expected = np.array([[1, 1, 2.5], [-3, 0, 0]], np.float32)
    np.testing.assert_array_equal(bulk_rows_matrix(rows, FEATURES), expected)
    np.testing.assert_array_equal(bulk_table_matrix([[1, True, 2.5], [-3, False, 0]], 3), expected)
    # A row of another shape, or a row that is not a list/dict, is not taken in bulk.
    assert bulk_table_matrix([[1.0, 2.0, 3.0], [1.0, 2.0]], 3) is None
    for odd in ({"a": 1.0, "b": 2.0, "c": 3.0}, "abc", [1.0, [2.0], 3.0], None, 7.0):
        assert bulk_table_matrix([[1.0, 2.0, 3.0], odd], 3) is None, odd
    assert bulk_table_matrix(["abc", "def"], 3) is None
    assert bulk_table_matrix([[[1.0, 2.0, 3.0]]], 3) is None
    assert bulk_rows_matrix([{"a": 1.0, "b": 2.0}], FEATURES) is None
    assert bulk_rows_matrix([[1.0, 2.0, 3.0]], FEATURES) is None
    assert bulk_rows_matrix([{"a": 1}], ["a"]) is not None  # one feature: no tuples


def test_table_to_matrix_reorders_columns_into_feature_order() -> None:
    matrix = table_to_matrix([[3.0, 1.0, 2.0], [0.0, 1e30, -1.0]], ["c", "a", "b"], FEATURES)
    assert matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix, np.array([[1, 2, 3], [1e30, -1, 0]], np.float32))
    assert column_order(FEATURES, FEATURES) is None
    # Values the bulk path does not take go through the checked walk.
    np.testing.assert_array_equal(
        table_to_matrix([["1.5", 2, 3]], FEATURES, FEATURES), [[1.5, 2, 3]]
    )


@pytest.mark.parametrize(
    ("columns", "column", "feature", "problem"),
    [
        (["a", "b", "d"], 2, "d", "unknown"),
        (["a", "b", "a", "c"], 2, "a", "repeated"),
        (["a", "c"], None, "b", "missing"),
    ],
)
def test_column_order_names_the_column(
    columns: list[str], column: int | None, feature: str, problem: str
) -> None:
    with pytest.raises(FeatureColumnError) as caught:
        column_order(columns, FEATURES)
    assert (caught.value.column, caught.value.feature, caught.value.problem) == (
        column,
        feature,
        problem,
    )


@pytest.mark.parametrize(
    ("row", "feature", "problem"),
    [
        ([1.0, 2.0], None, "wrong length"),
        ([1.0, "lots", 3.0], "b", "not a number"),
        ([1.0, 2.0, math.inf], "c", "not finite"),
    ],
)
def test_table_to_matrix_names_row_and_column(
    row: list[object], feature: str | None, problem: str
) -> None:
    with pytest.raises(FeatureRowError) as caught:
        table_to_matrix([[0.0, 0.0, 0.0], row], FEATURES, FEATURES)
    assert (caught.value.row, caught.value.feature, caught.value.problem) == (1, feature, problem)


def test_predict_matches_the_formula_and_checks_shape() -> None:
    model = _model()
    x = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    p = 1.0 / (1.0 + np.exp(-(x @ WEIGHTS).ravel()))
    np.testing.assert_allclose(model.predict(x), np.stack([1 - p, p], axis=1), rtol=1e-6)
    assert model.predict(np.empty((0, 3))).shape == (0, 2)
    with pytest.raises(SchemaError, match=r"\[N, 3\]"):
        model.predict(np.zeros((2, 4)))


def test_features_for_entities_joins_views_in_feature_order(store: OnlineStore) -> None:
    matrix = features_for_entities(store, _model(), ["u2", "u1", "u2"])
    np.testing.assert_array_equal(
        matrix, np.array([[2, 5, 8], [1, 4, 7], [2, 5, 8]], dtype=np.float32)
    )
    assert features_for_entities(store, _model(), []).shape == (0, 3)


def test_features_for_entities_missing_key(store: OnlineStore) -> None:
    with pytest.raises(EntityNotFoundError) as caught:
        features_for_entities(store, _model(), ["u1", "ghost", "ghost2"])
    assert caught.value.keys == ["ghost", "ghost2"]
    assert caught.value.view == "left"


def test_features_for_entities_version_mismatch_names_both(store: OnlineStore) -> None:
    model = _model((ViewRef("left", "v1"), ViewRef("right", "v9")))
    with pytest.raises(VersionMismatchError, match=r"version v2 .*version v9"):
        features_for_entities(store, model, ["u1"])


def test_features_for_entities_nan_value(store: OnlineStore) -> None:
    with pytest.raises(IncompleteFeaturesError) as caught:
        features_for_entities(store, _model(), ["u1", "u3"])
    assert (caught.value.view, caught.value.entity, caught.value.feature) == ("left", "u3", "b")


@pytest.mark.parametrize(
    ("values", "culprit"),
    [
        ({"a": 3.0}, "b"),  # absent from this row, held by the first
        ({"a": 1e39, "b": 6.0}, "a"),  # finite as a double, infinite as float32
        ({"a": 3.0, "b": math.inf}, "b"),
    ],
)
def test_matrix_from_rows_names_the_first_unusable_value(
    values: dict[str, float], culprit: str
) -> None:
    model = _model((ViewRef("left", "v1"), ViewRef("right", "v2")))
    now = datetime.now(UTC)
    rows: dict[str, dict[str, OnlineRow | None]] = {
        "left": {
            "u1": OnlineRow(values={"a": 1.0, "b": 4.0}, event_timestamp=now, version="v1"),
            "u9": OnlineRow(values=values, event_timestamp=now, version="v1"),
        },
        "right": {
            key: OnlineRow(values={"c": 7.0}, event_timestamp=now, version="v2")
            for key in ("u1", "u9")
        },
    }
    np.testing.assert_array_equal(
        matrix_from_rows(model, ["u1", "u1"], rows), np.array([[1, 4, 7]] * 2, dtype=np.float32)
    )
    with pytest.raises(IncompleteFeaturesError) as caught:
        matrix_from_rows(model, ["u1", "u9"], rows)
    assert (caught.value.view, caught.value.entity, caught.value.feature) == ("left", "u9", culprit)


def test_features_for_entities_feature_in_no_view(store: OnlineStore) -> None:
    with pytest.raises(FeatureStoreError, match="needs feature"):
        features_for_entities(store, _model((ViewRef("left", "v1"),)), ["u1"])
