"""The serving app end to end: a real MLflow registry, a real ONNX model, real stores.

The registry (SQLite + local artifacts) is built once per module with the models:

- ``fraud_detector`` v1, alias ``champion``, tagged like the training flow does;
- ``tampered`` v1, alias ``champion``, whose ``onnx_sha256`` tag is wrong.

Each test gets its own home folder and SQLite online store; the Redis tests use the
server at ``MLOPS_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) under a unique
key prefix, and ``redis://127.0.0.1:1/0`` as the unreachable one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import hypothesis
import numpy as np
import onnxruntime as ort
import pytest
import schemathesis
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from pydantic import SecretStr

from app.main import create_app
from mlops.errors import IntegrityError, NoChampionError
from mlops.features.online import build_online_store
from mlops.monitoring.history import MonitoringRun, history_engine, record_run
from mlops.serving import load_model
from mlops.settings import (
    MlflowSettings,
    RedisOnlineStoreSettings,
    ServingSettings,
    Settings,
    SqliteOnlineStoreSettings,
)
from tests.integration._registry import (
    FEATURES,
    VIEW,
    VIEW_VERSION,
    model_bytes,
    new_registry,
    register_version,
    write_features,
)

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("MLOPS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
UNREACHABLE_REDIS_URL = "redis://127.0.0.1:1/0"
MODEL = "fraud_detector"
TAMPERED = "tampered"
MAX_BATCH = 5
STALE_VERSION = "0ld0ld0ld0ld"

ENTITY_FEATURES = {
    "card_00001": [12.5, 30.0, 1.0],
    "card_00002": [400.0, 20.0, 6.0],
    "card_00003": [75.0, 75.0, 0.0],
}
INLINE_ROWS = [
    {"amount": 999.0, "amount_mean_24h": 10.0, "events_count_1h": 9.0},
    {"amount": 1.0, "amount_mean_24h": 60.0, "events_count_1h": 0.0},
]


@dataclass(frozen=True)
class Registry:
    tracking_uri: str
    experiment_id: str
    version: str
    session: ort.InferenceSession

    def expected(self, matrix: list[list[float]]) -> np.ndarray:
        """Probabilities straight from onnxruntime, for comparison."""
        x = np.asarray(matrix, dtype=np.float32)
        return np.asarray(self.session.run(["probabilities"], {"features": x})[0])


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    uri, experiment_id = new_registry(tmp_path_factory.mktemp("registry"))
    version = register_version(tracking_uri=uri, experiment_id=experiment_id, name=MODEL)
    register_version(tracking_uri=uri, experiment_id=experiment_id, name=TAMPERED, sha256="0" * 64)
    session = ort.InferenceSession(
        model_bytes(tracking_uri=uri, name=MODEL, version=version),
        providers=["CPUExecutionProvider"],
    )
    return Registry(uri, experiment_id, version, session)


def make_settings(
    tmp_path: Path,
    registry: Registry,
    *,
    model_name: str = MODEL,
    online_store: SqliteOnlineStoreSettings | RedisOnlineStoreSettings | None = None,
) -> Settings:
    return Settings(
        home=tmp_path / "home",
        mlflow=MlflowSettings(tracking_uri=registry.tracking_uri),
        online_store=online_store or SqliteOnlineStoreSettings(path=tmp_path / "online.db"),
        serving=ServingSettings(model_name=model_name, max_batch_rows=MAX_BATCH),
    )


@pytest.fixture
def settings(tmp_path: Path, registry: Registry) -> Settings:
    """SQLite online store: the three cards, one of a stale view version, one with a NaN."""
    settings = make_settings(tmp_path, registry)
    store = build_online_store(settings.online_store)
    write_features(store, ENTITY_FEATURES)
    write_features(store, {"card_stale": [1.0, 2.0, 3.0]}, version=STALE_VERSION)
    write_features(store, {"card_nan": [1.0, math.nan, 3.0]})
    store.close()
    return settings


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


# --- health, readiness, model info ---------------------------------------------------


def test_health_ready_and_model(client: TestClient, registry: Registry) -> None:
    assert client.get("/health").json() == {"status": "ok"}

    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "model": {"name": MODEL, "version": "1"}}
    assert ready.headers["X-Model-Version"] == registry.version

    info = client.get("/model")
    assert info.status_code == 200
    body = info.json()
    assert body["name"] == MODEL and body["version"] == registry.version
    assert body["alias"] == "champion"
    assert body["feature_names"] == FEATURES
    assert body["feature_views"] == [{"name": VIEW, "version": VIEW_VERSION}]
    assert body["entity_key"] == "card_id"
    assert len(body["onnx_sha256"]) == 64
    assert body["signature"]["inputs"][0]["name"] == "features"
    assert body["signature"]["outputs"][0]["name"] == "probabilities"
    assert body["loaded_at"]
    assert info.headers["X-Model-Version"] == registry.version


def test_no_champion_then_champion(tmp_path: Path, registry: Registry) -> None:
    settings = make_settings(tmp_path, registry, model_name="late_model")
    with TestClient(create_app(settings)) as client:
        assert client.get("/health").status_code == 200
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert "no champion model is loaded" in ready.json()["detail"]
        assert "no version of model 'late_model' has alias 'champion'" in ready.json()["detail"]
        assert client.get("/model").status_code == 503
        assert client.post("/predict", json={"rows": INLINE_ROWS}).status_code == 503

    version = register_version(
        tracking_uri=registry.tracking_uri,
        experiment_id=registry.experiment_id,
        name="late_model",
    )
    with TestClient(create_app(settings)) as client:
        ready = client.get("/ready")
        assert ready.status_code == 200
        assert ready.json()["model"] == {"name": "late_model", "version": version}


def test_tampered_sha256_starts_but_is_not_ready(
    tmp_path: Path, registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path, registry, model_name=TAMPERED)
    with caplog.at_level(logging.ERROR), TestClient(create_app(settings)) as client:
        assert client.get("/health").status_code == 200
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert "IntegrityError" in ready.json()["detail"]
        assert "0" * 64 in ready.json()["detail"]
        assert client.post("/predict", json={"rows": INLINE_ROWS}).status_code == 503
    failures = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert any(isinstance(exc, IntegrityError) for exc in failures)


# --- predictions ----------------------------------------------------------------------


def test_predict_by_entity(client: TestClient, registry: Registry) -> None:
    keys = ["card_00002", "card_00001"]
    response = client.post("/predict", json={"entities": keys})
    assert response.status_code == 200, response.text
    assert response.headers["X-Model-Version"] == registry.version
    body = response.json()
    assert body["model"] == {"name": MODEL, "version": registry.version}
    expected = registry.expected([ENTITY_FEATURES[k] for k in keys])
    for i, (prediction, probs) in enumerate(zip(body["predictions"], expected, strict=True)):
        assert prediction["entity"] == keys[i]
        assert prediction["index"] == i
        np.testing.assert_allclose(prediction["probabilities"], probs, rtol=1e-6)
        assert prediction["probability"] == pytest.approx(float(probs[1]), rel=1e-6)
        assert prediction["label"] == int(probs[1] >= 0.5)
    # The fixture's inputs make both labels appear, so the threshold is exercised.
    assert {p["label"] for p in body["predictions"]} == {0, 1}


def test_predict_inline_rows(client: TestClient, registry: Registry) -> None:
    # Keys in another order than the model's features: columns follow feature_names.
    rows = [dict(reversed(list(row.items()))) for row in INLINE_ROWS]
    response = client.post("/predict", json={"rows": rows})
    assert response.status_code == 200, response.text
    expected = registry.expected([[row[f] for f in FEATURES] for row in INLINE_ROWS])
    predictions = response.json()["predictions"]
    assert [p["entity"] for p in predictions] == [None, None]
    assert [p["index"] for p in predictions] == [0, 1]
    np.testing.assert_allclose([p["probabilities"] for p in predictions], expected, rtol=1e-6)


def test_predict_array_rows_under_columns(client: TestClient, registry: Registry) -> None:
    # The compact form: arrays of values, 'columns' naming each position (any order).
    columns = list(reversed(FEATURES))
    rows = [[row[f] for f in columns] for row in INLINE_ROWS]
    response = client.post("/predict", json={"columns": columns, "rows": rows})
    assert response.status_code == 200, response.text
    expected = registry.expected([[row[f] for f in FEATURES] for row in INLINE_ROWS])
    predictions = response.json()["predictions"]
    assert [(p["entity"], p["index"]) for p in predictions] == [(None, 0), (None, 1)]
    np.testing.assert_allclose([p["probabilities"] for p in predictions], expected, rtol=1e-6)

    both = client.post(
        "/predict", json={"entities": ["card_00003"], "columns": columns, "rows": rows[:1]}
    )
    assert both.status_code == 200, both.text
    assert [p["entity"] for p in both.json()["predictions"]] == ["card_00003", None]


@pytest.mark.parametrize(
    ("body", "loc", "says"),
    [
        (
            {"columns": ["amount", "amount_mean_24h", "merchant"], "rows": [[1, 2, 3]]},
            ["body", "columns", 2],
            "unknown feature 'merchant'",
        ),
        (
            {"columns": [*FEATURES, "amount"], "rows": [[1, 2, 3, 4]]},
            ["body", "columns", 3],
            "already columns[0]",
        ),
        (
            {"columns": FEATURES[:2], "rows": [[1, 2]]},
            ["body", "columns"],
            "missing feature 'events_count_1h'",
        ),
        (
            {"columns": FEATURES, "rows": [[1, 2, 3], [1, 2]]},
            ["body", "rows", 1],
            "2 values for 3 columns",
        ),
        (
            {"columns": FEATURES, "rows": [[1, 2, 3], [1, "lots", 3]]},
            ["body", "rows", 1, 1],
            "valid number",
        ),
        (
            {"columns": FEATURES, "rows": [[1, 2, 1e39]]},
            ["body", "rows", 0, 2],
            "not a finite float32",
        ),
        ({"rows": [[1, 2, 3]]}, ["body"], "need 'columns'"),
        ({"columns": FEATURES, "rows": INLINE_ROWS}, ["body"], "'columns' go with array"),
        ({"columns": FEATURES, "entities": ["card_00001"]}, ["body"], "'columns' go with"),
    ],
)
def test_array_rows_errors_are_422_naming_the_place(
    client: TestClient, body: dict[str, object], loc: list[object], says: str
) -> None:
    response = client.post("/predict", json=body)
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == loc
    assert says in error["msg"]


def test_json_numbers_of_any_kind_and_numeric_text_score_alike(client: TestClient) -> None:
    # ints, bools and numeric strings (which the schema takes) give what the floats give,
    # whether the body takes the bulk path (numbers) or the validated one (text).
    def probabilities(body: dict[str, object]) -> list[list[float]]:
        response = client.post("/predict", json=body)
        assert response.status_code == 200, response.text
        return [p["probabilities"] for p in response.json()["predictions"]]

    floats = {"amount": 3.0, "amount_mean_24h": 1.0, "events_count_1h": 0.0}
    expected = probabilities({"rows": [floats]})
    for row in (
        {"amount": 3, "amount_mean_24h": True, "events_count_1h": False},
        {"amount": "3.0", "amount_mean_24h": 1, "events_count_1h": "0"},
    ):
        assert probabilities({"rows": [row]}) == expected
    assert probabilities({"columns": FEATURES, "rows": [[3, True, 0]]}) == expected


def test_predict_under_a_root_path_takes_the_router_and_answers_alike(
    settings: Settings, registry: Registry
) -> None:
    # Behind a proxy that strips a prefix, the path is not "/predict": the request goes
    # through FastAPI's router and the middlewares instead of ServingApp's direct path.
    with TestClient(create_app(settings), root_path="/api") as client:
        direct = client.post("/predict", json={"rows": INLINE_ROWS})
        routed = client.post("/api/predict", json={"rows": INLINE_ROWS})
        metrics = client.get("/metrics").text
    assert direct.status_code == routed.status_code == 200, routed.text
    assert routed.headers["X-Model-Version"] == registry.version
    assert routed.headers["X-Request-ID"] == routed.json()["request_id"]
    assert [p["probabilities"] for p in routed.json()["predictions"]] == [
        p["probabilities"] for p in direct.json()["predictions"]
    ]
    line = (
        f'mlops_http_requests_total{{method="POST",model_version="{registry.version}",'
        'route="/predict",status="200"}'
    )
    assert f"{line} 2.0" in metrics


def test_request_ids_are_unique_and_time_ordered(client: TestClient) -> None:
    ids = [
        client.post("/predict", json={"rows": INLINE_ROWS}).json()["request_id"] for _ in range(20)
    ]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    # The first 12 hex digits are the milliseconds since the epoch.
    assert abs(int(ids[-1][:12], 16) / 1000 - time.time()) < 60


def test_predict_entities_then_rows(client: TestClient, registry: Registry) -> None:
    response = client.post("/predict", json={"entities": ["card_00003"], "rows": INLINE_ROWS[:1]})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [(p["entity"], p["index"]) for p in predictions] == [("card_00003", 0), (None, 0)]
    expected = registry.expected(
        [ENTITY_FEATURES["card_00003"], [INLINE_ROWS[0][f] for f in FEATURES]]
    )
    np.testing.assert_allclose([p["probabilities"] for p in predictions], expected, rtol=1e-6)


def test_unknown_entity_is_404_naming_keys(client: TestClient, registry: Registry) -> None:
    response = client.post("/predict", json={"entities": ["card_00001", "card_nope", "card_x"]})
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert "card_nope" in detail and "card_x" in detail and VIEW in detail
    assert "card_00001" not in detail
    assert response.headers["X-Model-Version"] == registry.version


def test_missing_and_unknown_feature_are_422_naming_it(client: TestClient) -> None:
    rows = [INLINE_ROWS[0], {"amount": 1.0, "events_count_1h": 2.0}]
    response = client.post("/predict", json={"rows": rows})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "rows", 1, "amount_mean_24h"]
    assert "missing feature 'amount_mean_24h'" in error["msg"]

    rows = [{**INLINE_ROWS[0], "merchant_risk": 0.3}]
    response = client.post("/predict", json={"rows": rows})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "rows", 0, "merchant_risk"]
    assert "unknown feature 'merchant_risk'" in error["msg"]


def test_non_numeric_or_non_finite_feature_is_422(client: TestClient) -> None:
    response = client.post("/predict", json={"rows": [{**INLINE_ROWS[0], "amount": "lots"}]})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "rows", 0, "amount"]

    # Finite as float64 but not as float32.
    response = client.post("/predict", json={"rows": [{**INLINE_ROWS[0], "amount": 1e39}]})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "rows", 0, "amount"]


@pytest.mark.parametrize("body", [{}, {"entities": []}, {"rows": []}, {"entities": [], "rows": []}])
def test_empty_body_is_422(client: TestClient, body: dict[str, list[str]]) -> None:
    response = client.post("/predict", json=body)
    assert response.status_code == 422
    assert "at least one of 'entities' or 'rows'" in response.text


def test_unexpected_field_is_422(client: TestClient) -> None:
    response = client.post("/predict", json={"entities": ["card_00001"], "features": []})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "features"]


def test_batch_limit(client: TestClient) -> None:
    at_limit = {"entities": ["card_00001"] * 3, "rows": INLINE_ROWS}
    assert client.post("/predict", json=at_limit).status_code == 200

    over = {"entities": ["card_00001"] * 4, "rows": INLINE_ROWS}
    response = client.post("/predict", json=over)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body"]
    assert f"limit of {MAX_BATCH}" in error["msg"] and "MAX_BATCH_ROWS" in error["msg"]


def test_feature_version_mismatch_is_409(client: TestClient, registry: Registry) -> None:
    response = client.post("/predict", json={"entities": ["card_00001", "card_stale"]})
    assert response.status_code == 409
    detail = response.json()["detail"]
    assert STALE_VERSION in detail and VIEW_VERSION in detail and "card_stale" in detail
    assert response.headers["X-Model-Version"] == registry.version


def test_entity_with_nan_feature_is_422_naming_it(client: TestClient) -> None:
    response = client.post("/predict", json={"entities": ["card_00001", "card_nan"]})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "entities", 1]
    assert "'amount_mean_24h'" in error["msg"] and "'card_nan'" in error["msg"]


# --- Redis ----------------------------------------------------------------------------


def test_predict_by_entity_from_redis(tmp_path: Path, registry: Registry) -> None:
    config = RedisOnlineStoreSettings(url=REDIS_URL, key_prefix=f"test-app-{uuid.uuid4().hex}")
    store = build_online_store(config)
    try:
        write_features(store, ENTITY_FEATURES)
        settings = make_settings(tmp_path, registry, online_store=config)
        with TestClient(create_app(settings)) as client:
            response = client.post("/predict", json={"entities": ["card_00001", "card_00002"]})
        assert response.status_code == 200, response.text
        expected = registry.expected([ENTITY_FEATURES["card_00001"], ENTITY_FEATURES["card_00002"]])
        got = [p["probabilities"] for p in response.json()["predictions"]]
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    finally:
        store.teardown(VIEW)
        store.close()


def test_unreachable_redis_fails_entities_only(tmp_path: Path, registry: Registry) -> None:
    config = RedisOnlineStoreSettings(url=UNREACHABLE_REDIS_URL, socket_timeout_s=0.5)
    settings = make_settings(tmp_path, registry, online_store=config)
    with TestClient(create_app(settings)) as client:
        assert client.get("/ready").status_code == 200

        response = client.post("/predict", json={"entities": ["card_00001"]})
        assert response.status_code == 503
        assert "online store (redis) is unreachable" in response.json()["detail"]

        response = client.post("/predict", json={"rows": INLINE_ROWS})
        assert response.status_code == 200
        assert len(response.json()["predictions"]) == 2


# --- the loader -----------------------------------------------------------------------


def test_load_model_reuses_and_repairs_its_cache(tmp_path: Path, registry: Registry) -> None:
    client = MlflowClient(tracking_uri=registry.tracking_uri, registry_uri=registry.tracking_uri)
    first = load_model(client=client, name=MODEL, cache_dir=tmp_path)
    cached = tmp_path / MODEL / registry.version / "model.onnx"
    assert cached.is_file()
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == first.onnx_sha256

    cached.write_bytes(b"not the model")
    again = load_model(client=client, name=MODEL, cache_dir=tmp_path)
    assert again.onnx_sha256 == first.onnx_sha256
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == first.onnx_sha256

    # An intact cache entry is used as it is.
    stamp = cached.stat().st_mtime_ns
    load_model(client=client, name=MODEL, cache_dir=tmp_path)
    assert cached.stat().st_mtime_ns == stamp
    x = np.asarray([ENTITY_FEATURES["card_00002"]], dtype=np.float32)
    np.testing.assert_allclose(again.predict(x), registry.expected(x.tolist()), rtol=1e-6)


def test_load_model_errors_name_the_problem(tmp_path: Path, registry: Registry) -> None:
    client = MlflowClient(tracking_uri=registry.tracking_uri, registry_uri=registry.tracking_uri)
    with pytest.raises(NoChampionError, match="run `mlops demo`"):
        load_model(client=client, name=MODEL, alias="challenger", cache_dir=tmp_path)
    with pytest.raises(IntegrityError) as caught:
        load_model(client=client, name=TAMPERED, cache_dir=tmp_path)
    assert "0" * 64 in str(caught.value)
    assert len([w for w in str(caught.value).split() if len(w.strip(";")) == 64]) == 2


def test_load_model_refuses_a_version_without_contract_tags(
    tmp_path: Path, registry: Registry
) -> None:
    register_version(
        tracking_uri=registry.tracking_uri,
        experiment_id=registry.experiment_id,
        name="untagged",
        without=("feature_views", "entity_key"),
    )
    client = MlflowClient(tracking_uri=registry.tracking_uri, registry_uri=registry.tracking_uri)
    with pytest.raises(IntegrityError, match="lacks tag\\(s\\) feature_views, entity_key"):
        load_model(client=client, name="untagged", cache_dir=tmp_path)


# --- request ids, the request log and feedback ------------------------------------------

TOKEN = "s3cret-token-for-tests"


def production_settings(
    tmp_path: Path, registry: Registry, *, model_name: str = MODEL, **serving: object
) -> Settings:
    """Settings with a real token (and whatever ``serving`` overrides)."""
    base = make_settings(tmp_path, registry, model_name=model_name)
    return base.model_copy(
        update={
            "serving": ServingSettings(
                model_name=model_name,
                max_batch_rows=MAX_BATCH,
                api_token=SecretStr(TOKEN),
                reload_poll_s=60.0,
                **serving,  # type: ignore[arg-type]
            )
        }
    )


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_each_prediction_is_logged_under_its_request_id(
    client: TestClient, registry: Registry
) -> None:
    first = client.post("/predict", json={"entities": ["card_00001"], "rows": INLINE_ROWS[:1]})
    second = client.post("/predict", json={"rows": INLINE_ROWS})
    assert first.status_code == second.status_code == 200
    ids = [first.json()["request_id"], second.json()["request_id"]]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids) and ids[0] != ids[1]
    assert first.headers["X-Request-ID"] == ids[0]

    log = client.app.state.serving.request_log  # type: ignore[attr-defined]
    assert log.flush(timeout_s=10)
    records = {r.request_id: r for r in log.predictions(ids)}
    assert set(records) == set(ids)
    one = records[ids[0]]
    assert one.model_name == MODEL and one.model_version == registry.version
    assert one.inputs == {"entities": ["card_00001"], "rows": INLINE_ROWS[:1]}
    assert [o["entity"] for o in one.outputs] == ["card_00001", None]
    assert [o["probabilities"] for o in one.outputs] == [
        p["probabilities"] for p in first.json()["predictions"]
    ]
    assert one.latency_ms > 0 and one.received_at.tzinfo is not None
    # The matrix the model scored, entity lookups included, in feature_names order.
    np.testing.assert_array_equal(
        one.feature_matrix(len(FEATURES)),
        np.array(
            [ENTITY_FEATURES["card_00001"], [INLINE_ROWS[0][f] for f in FEATURES]],
            dtype=np.float32,
        ),
    )


def test_feedback_needs_the_token_and_joins_the_log(tmp_path: Path, registry: Registry) -> None:
    with TestClient(create_app(production_settings(tmp_path, registry))) as client:
        request_id = client.post("/predict", json={"rows": INLINE_ROWS}).json()["request_id"]
        body = {"feedback": [{"request_id": request_id, "index": 1, "label": 1}]}

        missing = client.post("/feedback", json=body)
        assert missing.status_code == 401
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        assert client.post("/feedback", json=body, headers=bearer("wrong")).status_code == 403

        accepted = client.post("/feedback", json=body, headers=bearer())
        assert accepted.status_code == 202 and accepted.json() == {"accepted": 1}
        bad = client.post(
            "/feedback", json={"feedback": [{"request_id": "nope", "label": 1}]}, headers=bearer()
        )
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["loc"] == ["body", "feedback", 0, "request_id"]

        log = client.app.state.serving.request_log  # type: ignore[attr-defined]
        assert log.flush(timeout_s=10)
        (pair,) = [p for p in log.labelled_predictions() if p[0].request_id == request_id]
        assert pair[1].index == 1 and pair[1].label == 1


def test_predict_can_require_the_token(tmp_path: Path, registry: Registry) -> None:
    settings = production_settings(tmp_path, registry, require_token_for_predict=True)
    with TestClient(create_app(settings)) as client:
        assert client.post("/predict", json={"rows": INLINE_ROWS}).status_code == 401
        wrong = client.post("/predict", json={"rows": INLINE_ROWS}, headers=bearer("x" * 30))
        assert wrong.status_code == 403
        ok = client.post("/predict", json={"rows": INLINE_ROWS}, headers=bearer())
        assert ok.status_code == 200
        # Reads stay open.
        assert client.get("/model").status_code == 200


def test_the_placeholder_token_refuses_to_start_outside_development(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="placeholder"):
        Settings(home=tmp_path, environment="production")
    Settings(home=tmp_path, environment="production", serving=ServingSettings(api_token=TOKEN))


def test_predictions_go_on_while_the_request_log_database_is_down(
    tmp_path: Path, registry: Registry
) -> None:
    settings = make_settings(tmp_path, registry)
    settings.request_log.url = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"
    settings.request_log.retry_interval_s = 0.1
    settings.request_log.flush_interval_s = 0.05
    with TestClient(create_app(settings)) as client:
        for _ in range(5):
            assert client.post("/predict", json={"rows": INLINE_ROWS}).status_code == 200
        log = client.app.state.serving.request_log  # type: ignore[attr-defined]
        log.flush(timeout_s=10)
        assert log.spool_records >= 5 and not log.database_ok
        text = client.get("/metrics").text
        assert "mlops_request_log_database_up 0.0" in text
        assert metric(text, "mlops_request_log_spool_records") >= 5


# --- metrics ------------------------------------------------------------------------------


def metric(text: str, name: str, /, **labels: str) -> float:
    """The value of one sample of the Prometheus text ``text`` (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, label_text = head.partition("{")
        if sample != name:
            continue
        if all(part in label_text for part in want.split(",") if part):
            total += float(value)
    return total


def test_metrics_count_requests_predictions_loads_and_store_reads(
    client: TestClient, registry: Registry
) -> None:
    v = registry.version
    for _ in range(3):
        assert client.post("/predict", json={"rows": INLINE_ROWS}).status_code == 200
    assert client.post("/predict", json={"entities": ["card_00001"]}).status_code == 200
    assert client.post("/predict", json={"entities": ["card_nope"]}).status_code == 404
    assert client.post("/predict", json={}).status_code == 422
    client.get("/no/such/route")

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    ok = {"route": "/predict", "method": "POST", "status": "200", "model_version": v}
    assert metric(text, "mlops_http_requests_total", **ok) == 4
    assert metric(text, "mlops_http_request_duration_seconds_count", **ok) == 4
    assert metric(text, "mlops_http_requests_total", route="/predict", status="404") == 1
    assert metric(text, "mlops_http_requests_total", route="unmatched", status="404") == 1
    # 3 x 2 inline rows + 1 entity row, split by predicted class
    assert metric(text, "mlops_predictions_total", model_version=v) == 7
    assert metric(text, "mlops_predictions_total", model_version=v, label="1") >= 1
    assert metric(text, "mlops_model_inference_seconds_count", model_version=v) == 4
    assert metric(text, "mlops_model_loads_total", result="loaded") == 1
    assert metric(text, "mlops_model_info", name=MODEL, version=v) == 1
    assert metric(text, "mlops_online_store_read_seconds_count", backend="sqlite") == 2
    assert "mlops_request_log_queue_depth" in text


def test_metrics_export_the_monitors_latest_figures_per_model(settings: Settings) -> None:
    """The monitor flow's newest run of each model, from its history in the request
    log's database (Postgres in production; SQLite here, the same table)."""
    assert settings.request_log.url is not None
    engine = history_engine(settings.request_log.url)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    for version, share, accuracy in (("1", 0.1, None), ("2", 0.6, 0.93)):
        record_run(
            engine,
            MonitoringRun(
                model_name=MODEL,
                model_version=version,
                window_start=start,
                window_end=start + timedelta(hours=1),
                n_rows=400,
                drift_share=share,
                drifted_features=["amount", "distance_km"][: int(share * 4)],
                per_feature={},
                live_accuracy=accuracy,
                n_labelled=0 if accuracy is None else 50,
            ),
        )
    record_run(  # another model whose window was too small to judge drift
        engine,
        MonitoringRun("other", "7", start, start, 3, None, [], {}, None, 0),
    )
    engine.dispose()
    with TestClient(create_app(settings)) as client:
        text = client.get("/metrics").text
    assert metric(text, "mlops_monitoring_read_up") == 1
    assert metric(text, "mlops_model_drift_share", model=MODEL, version="2") == 0.6
    assert metric(text, "mlops_model_drift_share", model=MODEL, version="1") == 0  # not newest
    assert metric(text, "mlops_model_drifted_features", model=MODEL, version="2") == 2
    assert metric(text, "mlops_model_live_accuracy", model=MODEL, version="2") == 0.93
    assert metric(text, "mlops_monitoring_window_rows", model="other", version="7") == 3
    assert 'mlops_model_drift_share{model="other"' not in text
    assert metric(text, "mlops_monitoring_last_run_timestamp_seconds", model="other") > 0


def test_online_store_errors_are_counted(tmp_path: Path, registry: Registry) -> None:
    config = RedisOnlineStoreSettings(url=UNREACHABLE_REDIS_URL, socket_timeout_s=0.5)
    settings = make_settings(tmp_path, registry, online_store=config)
    with TestClient(create_app(settings)) as client:
        assert client.post("/predict", json={"entities": ["card_00001"]}).status_code == 503
        text = client.get("/metrics").text
    assert metric(text, "mlops_online_store_errors_total", backend="redis", kind="unavailable") == 1


# --- limits ---------------------------------------------------------------------------------


def test_oversized_body_is_413_declared_or_streamed(tmp_path: Path, registry: Registry) -> None:
    settings = production_settings(tmp_path, registry, max_body_bytes=2048)
    big = {"entities": ["card_00001"], "rows": [INLINE_ROWS[0]] * 100}
    with TestClient(create_app(settings)) as client:
        declared = client.post("/predict", json=big)
        assert declared.status_code == 413
        assert "MAX_BODY_BYTES" in declared.json()["detail"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: chunked
            payload = json.dumps(big).encode()
            for i in range(0, len(payload), 512):
                yield payload[i : i + 512]

        streamed = client.post(
            "/predict", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert streamed.status_code == 413
        small = client.post("/predict", json={"rows": INLINE_ROWS[:1]})
        assert small.status_code == 200


# --- hot reload -------------------------------------------------------------------------------


def test_reload_swaps_refuses_and_rolls_back(tmp_path: Path, registry: Registry) -> None:
    name = f"reloadable_{uuid.uuid4().hex[:8]}"
    v1 = register_version(
        tracking_uri=registry.tracking_uri, experiment_id=registry.experiment_id, name=name
    )
    with TestClient(create_app(production_settings(tmp_path, registry, model_name=name))) as client:
        assert client.get("/ready").json()["model"]["version"] == v1
        assert client.post("/model/reload").status_code == 401

        v2 = register_version(
            tracking_uri=registry.tracking_uri, experiment_id=registry.experiment_id, name=name
        )
        loaded = client.post("/model/reload", headers=bearer())
        assert loaded.status_code == 200, loaded.text
        assert loaded.json()["status"] == "loaded" and loaded.json()["serving"] == v2
        assert client.post("/predict", json={"rows": INLINE_ROWS}).headers["X-Model-Version"] == v2

        bad = register_version(
            tracking_uri=registry.tracking_uri,
            experiment_id=registry.experiment_id,
            name=name,
            sha256="f" * 64,
        )
        refused = client.post("/model/reload", headers=bearer())
        assert refused.status_code == 409
        assert refused.json()["status"] == "refused" and refused.json()["version"] == bad
        assert refused.json()["serving"] == v2 and "f" * 64 in refused.json()["reason"]
        assert client.post("/predict", json={"rows": INLINE_ROWS}).headers["X-Model-Version"] == v2

        # Rollback: promote the previous version again.
        MlflowClient(
            tracking_uri=registry.tracking_uri, registry_uri=registry.tracking_uri
        ).set_registered_model_alias(name, "champion", v1)
        back = client.post("/model/reload", headers=bearer())
        assert back.json()["status"] == "loaded" and back.json()["serving"] == v1

        text = client.get("/metrics").text
        assert metric(text, "mlops_model_loads_total", result="loaded") == 3
        assert metric(text, "mlops_model_loads_total", result="refused") == 1
        assert metric(text, "mlops_model_info", version=v1) == 1
        assert metric(text, "mlops_model_info", version=v2) == 0


# --- the OpenAPI document, fuzzed -------------------------------------------------------------


@pytest.fixture(scope="module")
def api_schema(
    tmp_path_factory: pytest.TempPathFactory, registry: Registry, prefect_api: None
) -> Iterator[schemathesis.BaseSchema]:
    """The running app (model loaded, SQLite store filled, the management routes on a
    real Prefect API) and its OpenAPI document."""
    from prefect.settings import PREFECT_API_URL

    tmp_path = tmp_path_factory.mktemp("fuzz")
    settings = production_settings(tmp_path, registry)
    settings.prefect.api_url = PREFECT_API_URL.value()
    store = build_online_store(settings.online_store)
    write_features(store, ENTITY_FEATURES)
    store.close()
    app = create_app(settings)
    with TestClient(app):
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


SERVING_PATHS = {"/predict", "/feedback", "/model/reload", "/metrics", "/model", "/ready"}


def test_openapi_fuzz_finds_no_server_error(api_schema: schemathesis.BaseSchema) -> None:
    """Whatever the body, path or token, every operation answers 2xx/4xx, never 5xx."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /predict",
        "POST /feedback",
        "POST /model/reload",
        "GET /metrics",
    }
    for operation in operations:

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(
            # The serving routes get the most; the platform's go to Prefect and MLflow.
            max_examples=60 if operation.path in SERVING_PATHS else 15,
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
            database=None,
        )
        def no_server_error(case: schemathesis.Case) -> None:
            for headers in (bearer(), None):
                response = case.call(headers=headers)
                assert response.status_code < 500, (
                    f"{case.method} {case.formatted_path} -> {response.status_code}: "
                    f"{response.text[:500]}\n{case.as_curl_command()}"
                )

        no_server_error()


# --- a Redis server killed and restarted under the app -----------------------------------------


@contextmanager
def own_redis(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A redis-server of the test's own on ``port`` (CI installs redis-server; see .ci/run)."""
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
                break
            time.sleep(0.05)
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_redis_killed_then_restarted_under_the_app(tmp_path: Path, registry: Registry) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = RedisOnlineStoreSettings(url=f"redis://127.0.0.1:{port}/0", socket_timeout_s=0.5)
    settings = make_settings(tmp_path, registry, online_store=config)

    def fill() -> None:
        store = build_online_store(config)
        write_features(store, ENTITY_FEATURES)
        store.close()

    with own_redis(port) as server:
        fill()
        with TestClient(create_app(settings)) as client:
            assert client.post("/predict", json={"entities": ["card_00001"]}).status_code == 200

            server.kill()  # the same app, its server gone
            server.wait(timeout=10)
            down = client.post("/predict", json={"entities": ["card_00001"]})
            assert down.status_code == 503 and "online store (redis)" in down.json()["detail"]
            assert client.post("/predict", json={"rows": INLINE_ROWS}).status_code == 200

            with own_redis(port):  # back (a fresh, empty server): the app reconnects
                fill()
                again = client.post("/predict", json={"entities": ["card_00001"]})
                assert again.status_code == 200, again.text
