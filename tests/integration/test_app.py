"""The serving app end to end: a real MLflow registry, a real ONNX model, real stores.

The registry (SQLite + local artifacts) is built once per module with the models:

- ``fraud_detector`` v1, alias ``champion``, tagged like the training flow does;
- ``tampered`` v1, alias ``champion``, whose ``onnx_sha256`` tag is wrong.

Each test gets its own home folder and SQLite online store; the Redis tests use the
server at ``MLOPS_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) under a unique
key prefix, and ``redis://127.0.0.1:1/0`` as the unreachable one.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from app.main import create_app
from mlops.errors import IntegrityError, NoChampionError
from mlops.features.online import build_online_store
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
