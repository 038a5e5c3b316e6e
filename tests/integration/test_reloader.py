"""The reloader follows the champion alias of a real MLflow registry, checked against real
online stores (SQLite, and Redis at ``MLOPS_TEST_REDIS_URL``) and, for the event
listener, the session's real Prefect API (``prefect_test_harness``).

The registry is built once per module with four versions of ``reload_target``, none
aliased: v1 and v2 (good), v3 (its ``onnx_sha256`` tag is wrong) and v4 (trained on
another version of the feature view). Each test starts with no ``champion`` alias and
moves it as the flows would, with ``MlflowClient.set_registered_model_alias``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import redis
from mlflow import MlflowClient

from mlops import events
from mlops.features.online import OnlineStore, build_online_store
from mlops.serving import LoadedModel
from mlops.serving.reloader import ModelSlot, Reloader, ReloadOutcome, model_cache_dir
from mlops.settings import (
    MlflowSettings,
    PrefectSettings,
    RedisOnlineStoreSettings,
    ServingSettings,
    Settings,
    SqliteOnlineStoreSettings,
)
from tests.integration._registry import (
    VIEW,
    VIEW_VERSION,
    model_bytes,
    new_registry,
    register_version,
    write_features,
)

pytestmark = pytest.mark.integration

MODEL = "reload_target"
OTHER_VIEW_VERSION = "0ther0ther00"
UNREACHABLE_REDIS_URL = "redis://127.0.0.1:1/0"
CARDS = {"card_00001": [12.5, 30.0, 1.0], "card_00002": [400.0, 20.0, 6.0]}
X = np.array([[12.5, 30.0, 1.0], [400.0, 20.0, 6.0], [75.0, 75.0, 0.0]], dtype=np.float32)


@dataclass(frozen=True)
class Registry:
    tracking_uri: str
    good: tuple[str, str]
    tampered: str
    other_view: str
    expected: np.ndarray  # what every version predicts for X (they share the graph)

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def promote(self, version: str) -> None:
        self.client().set_registered_model_alias(MODEL, "champion", version)

    def demote(self) -> None:
        self.client().delete_registered_model_alias(MODEL, "champion")


@dataclass
class Calls:
    loaded: list[LoadedModel] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)

    def on_loaded(self, model: LoadedModel) -> None:
        self.loaded.append(model)

    def on_refused(self, version: str, reason: str) -> None:
        self.refused.append((version, reason))


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    uri, experiment_id = new_registry(tmp_path_factory.mktemp("registry"))

    def register(*, sha256: str | None = None, views: list[str] | None = None) -> str:
        return register_version(
            tracking_uri=uri,
            experiment_id=experiment_id,
            name=MODEL,
            alias=None,
            sha256=sha256,
            views=views,
        )

    v1, v2 = register(), register()
    tampered = register(sha256="0" * 64)
    other_view = register(views=[f"{VIEW}@{OTHER_VIEW_VERSION}"])
    session = ort.InferenceSession(
        model_bytes(tracking_uri=uri, name=MODEL, version=v1), providers=["CPUExecutionProvider"]
    )
    (expected,) = session.run(["probabilities"], {"features": X})
    return Registry(uri, (v1, v2), tampered, other_view, np.asarray(expected))


@pytest.fixture
def no_champion(registry: Registry) -> Registry:
    """The registry with no ``champion`` alias, as each test starts."""
    if registry.client().get_registered_model(MODEL).aliases.get("champion"):
        registry.demote()
    return registry


def make_settings(
    tmp_path: Path,
    registry: Registry,
    *,
    poll_s: float = 5.0,
    prefect_url: str | None = None,
    online_store: SqliteOnlineStoreSettings | RedisOnlineStoreSettings | None = None,
) -> Settings:
    return Settings(
        home=tmp_path / "home",
        prefect=PrefectSettings(api_url=prefect_url),
        mlflow=MlflowSettings(tracking_uri=registry.tracking_uri),
        online_store=online_store or SqliteOnlineStoreSettings(path=tmp_path / "online.db"),
        serving=ServingSettings(
            model_name=MODEL, reload_poll_s=poll_s, listen_events=prefect_url is not None
        ),
    )


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[OnlineStore]:
    """An SQLite online store holding the cards at the view version v1 and v2 were trained on."""
    store = build_online_store(SqliteOnlineStoreSettings(path=tmp_path / "online.db"))
    write_features(store, CARDS)
    yield store
    store.close()


@pytest.fixture
def redis_store(redis_url: str) -> Iterator[OnlineStore]:
    """The same on the real Redis server, under a key prefix of its own."""
    prefix = f"test-{uuid.uuid4().hex}"
    store = build_online_store(RedisOnlineStoreSettings(url=redis_url, key_prefix=prefix))
    write_features(store, CARDS)
    yield store
    store.close()
    client = redis.Redis.from_url(redis_url)
    leftover = list(client.scan_iter(match=f"{prefix}:*"))
    if leftover:
        client.delete(*leftover)
    client.close()


@pytest.fixture(params=["sqlite", "redis"])
def any_store(request: pytest.FixtureRequest) -> OnlineStore:
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture
def running() -> Iterator[list[Reloader]]:
    """Reloaders a test starts, stopped at its end whatever happens."""
    started: list[Reloader] = []
    yield started
    for reloader in started:
        reloader.stop()


def reloader_for(
    settings: Settings,
    registry: Registry,
    store: OnlineStore,
    slot: ModelSlot | None = None,
    calls: Calls | None = None,
) -> Reloader:
    return Reloader(
        settings=settings,
        client=registry.client(),
        store=store,
        slot=slot or ModelSlot(),
        on_loaded=calls.on_loaded if calls else None,
        on_refused=calls.on_refused if calls else None,
    )


def wait_until(condition: Callable[[], bool], *, timeout: float) -> float:
    """Seconds until ``condition()`` held; fails after ``timeout``."""
    started = time.perf_counter()
    while not condition():
        if time.perf_counter() - started > timeout:
            pytest.fail(f"not within {timeout}s")
        time.sleep(0.01)
    return time.perf_counter() - started


def serving(slot: ModelSlot) -> str | None:
    model = slot.model
    return None if model is None else model.version


def reloader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("reloader-")]


# --- checks -------------------------------------------------------------------------


def test_no_champion_then_the_alias_is_set(
    tmp_path: Path,
    no_champion: Registry,
    sqlite_store: OnlineStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry, slot, calls = no_champion, ModelSlot(), Calls()
    reloader = reloader_for(make_settings(tmp_path, registry), registry, sqlite_store, slot, calls)

    first = reloader.check()

    assert first.status == "no_champion" and first.version is None and first.serving is None
    assert first.reason is not None and "champion" in first.reason
    assert slot.model is None and slot.error is not None and first.reason in slot.error
    assert reloader.last_error == first.reason and reloader.last_check is not None

    v1 = registry.good[0]
    registry.promote(v1)
    loaded = reloader.check()

    assert loaded == ReloadOutcome("loaded", version=v1, serving=v1)
    assert serving(slot) == v1 and slot.error is None
    assert calls.loaded == [slot.model] and reloader.loads == 1
    assert reloader.last_error is None
    assert reloader.check() == ReloadOutcome("unchanged", version=v1, serving=v1)

    registry.demote()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mlops.serving.reloader"):
        gone = [reloader.check(), reloader.check()]

    assert [o.status for o in gone] == ["no_champion", "no_champion"]
    assert all(o.serving == v1 for o in gone)
    assert serving(slot) == v1 and slot.error is None  # the current model keeps serving
    warnings = [r for r in caplog.records if "has alias 'champion'" in r.getMessage()]
    assert len(warnings) == 1 and f"still serving v{v1}" in warnings[0].getMessage()


def test_alias_moves_then_rolls_back_from_the_download_cache(
    tmp_path: Path, no_champion: Registry, sqlite_store: OnlineStore
) -> None:
    registry, slot = no_champion, ModelSlot()
    settings = make_settings(tmp_path, registry)
    reloader = reloader_for(settings, registry, sqlite_store, slot)
    v1, v2 = registry.good
    registry.promote(v1)
    assert reloader.check().status == "loaded"
    first = slot.model
    cached = model_cache_dir(settings) / MODEL / v1 / "model.onnx"
    before = cached.stat()

    registry.promote(v2)
    moved = reloader.check()

    assert moved == ReloadOutcome("loaded", version=v2, serving=v2)
    assert serving(slot) == v2

    registry.promote(v1)  # rollback: promote the previous version
    back = reloader.check()

    assert back == ReloadOutcome("loaded", version=v1, serving=v1)
    assert slot.model is not first and serving(slot) == v1
    after = cached.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert reloader.loads == 3 and reloader.refusals == 0


def test_a_forced_check_reloads_the_served_version(
    tmp_path: Path, no_champion: Registry, sqlite_store: OnlineStore
) -> None:
    registry, slot = no_champion, ModelSlot()
    reloader = reloader_for(make_settings(tmp_path, registry), registry, sqlite_store, slot)
    v1 = registry.good[0]
    registry.promote(v1)
    reloader.check()
    first = slot.model

    forced = reloader.check(force=True)

    assert forced == ReloadOutcome("loaded", version=v1, serving=v1)
    assert slot.model is not first and reloader.loads == 2


def test_a_wrong_sha256_is_refused_remembered_and_retried_when_forced(
    tmp_path: Path, no_champion: Registry, sqlite_store: OnlineStore
) -> None:
    registry, slot, calls = no_champion, ModelSlot(), Calls()
    settings = make_settings(tmp_path, registry)
    reloader = reloader_for(settings, registry, sqlite_store, slot, calls)
    v1, v2 = registry.good
    registry.promote(v1)
    reloader.check()
    served = slot.model

    registry.promote(registry.tampered)
    refused = reloader.check()

    assert refused.status == "refused"
    assert (refused.version, refused.serving) == (registry.tampered, v1)
    assert refused.reason is not None and "sha256" in refused.reason
    assert refused.reason.startswith("IntegrityError: ")
    assert slot.model is served and slot.error is None
    assert reloader.refusals == 1 and calls.refused == [(registry.tampered, refused.reason)]
    assert reloader.last_error == refused.reason
    # The refused download stays in the cache: a new attempt would replace it.
    cached = model_cache_dir(settings) / MODEL / registry.tampered / "model.onnx"
    inode = cached.stat().st_ino

    again = reloader.check()

    assert again == refused
    assert cached.stat().st_ino == inode  # not tried again
    assert reloader.refusals == 1 and len(calls.refused) == 1

    forced = reloader.check(force=True)

    assert forced.status == "refused" and forced.reason == refused.reason
    assert cached.stat().st_ino != inode  # downloaded and checked again
    assert reloader.refusals == 2 and len(calls.refused) == 2
    assert slot.model is served

    registry.promote(v2)  # a new version is tried at once
    assert reloader.check() == ReloadOutcome("loaded", version=v2, serving=v2)


def test_a_wrong_sha256_with_nothing_served_says_why(
    tmp_path: Path, no_champion: Registry, sqlite_store: OnlineStore
) -> None:
    registry, slot = no_champion, ModelSlot()
    reloader = reloader_for(make_settings(tmp_path, registry), registry, sqlite_store, slot)
    registry.promote(registry.tampered)

    refused = reloader.check()

    assert refused.status == "refused" and refused.serving is None
    assert slot.model is None
    assert slot.error is not None and "sha256" in slot.error and registry.tampered in slot.error


def test_another_feature_view_version_is_refused_until_the_store_holds_it(
    tmp_path: Path, no_champion: Registry, any_store: OnlineStore
) -> None:
    registry, slot, calls = no_champion, ModelSlot(), Calls()
    reloader = reloader_for(make_settings(tmp_path, registry), registry, any_store, slot, calls)
    v1 = registry.good[0]
    registry.promote(v1)
    reloader.check()
    served = slot.model

    registry.promote(registry.other_view)
    refused = reloader.check()

    assert refused.status == "refused" and refused.version == registry.other_view
    assert refused.reason is not None
    assert VIEW in refused.reason
    assert f"holds feature view {VIEW!r} at version {VIEW_VERSION}" in refused.reason
    assert f"trained on version {OTHER_VIEW_VERSION}" in refused.reason
    assert slot.model is served and reloader.refusals == 1
    # Still refused while the store has not changed, and counted once.
    assert reloader.check() == refused and reloader.refusals == 1 and len(calls.refused) == 1

    write_features(any_store, CARDS, version=OTHER_VIEW_VERSION)  # rematerialized
    loaded = reloader.check()

    assert loaded == ReloadOutcome(
        "loaded", version=registry.other_view, serving=registry.other_view
    )
    assert serving(slot) == registry.other_view and reloader.last_error is None


def test_a_view_with_nothing_written_does_not_refuse(tmp_path: Path, no_champion: Registry) -> None:
    registry, slot = no_champion, ModelSlot()
    empty = build_online_store(SqliteOnlineStoreSettings(path=tmp_path / "empty.db"))
    reloader = reloader_for(make_settings(tmp_path, registry), registry, empty, slot)
    registry.promote(registry.other_view)

    assert reloader.check().status == "loaded"
    empty.close()


def test_an_unreachable_online_store_refuses_and_the_old_model_stays(
    tmp_path: Path, no_champion: Registry, sqlite_store: OnlineStore
) -> None:
    registry, slot = no_champion, ModelSlot()
    settings = make_settings(tmp_path, registry)
    v1, v2 = registry.good
    registry.promote(v1)
    reloader_for(settings, registry, sqlite_store, slot).check()
    served = slot.model
    unreachable = build_online_store(
        RedisOnlineStoreSettings(url=UNREACHABLE_REDIS_URL, socket_timeout_s=0.5)
    )
    calls = Calls()
    reloader = reloader_for(settings, registry, unreachable, slot, calls)

    registry.promote(v2)
    refused = reloader.check()

    assert refused.status == "refused" and (refused.version, refused.serving) == (v2, v1)
    assert refused.reason is not None and "unreachable" in refused.reason
    assert UNREACHABLE_REDIS_URL in refused.reason
    assert slot.model is served
    # Tried again at the next check (the store may be back), counted once while it is not.
    assert reloader.check() == refused
    assert reloader.refusals == 1 and len(calls.refused) == 1

    unreachable.close()


def test_with_nothing_served_an_unreachable_store_does_not_block_the_first_load(
    tmp_path: Path, no_champion: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    """Inline-feature requests go on while the store is down (the serving contract)."""
    registry, slot = no_champion, ModelSlot()
    unreachable = build_online_store(
        RedisOnlineStoreSettings(url=UNREACHABLE_REDIS_URL, socket_timeout_s=0.5)
    )
    reloader = reloader_for(make_settings(tmp_path, registry), registry, unreachable, slot)
    v1 = registry.good[0]
    registry.promote(v1)

    with caplog.at_level(logging.WARNING, logger="mlops.serving.reloader"):
        first = reloader.check()

    assert first == ReloadOutcome("loaded", version=v1, serving=v1)
    assert serving(slot) == v1 and reloader.refusals == 0
    assert any("unchecked" in r.getMessage() for r in caplog.records)
    unreachable.close()


def test_a_failing_callback_does_not_undo_the_swap(
    tmp_path: Path, no_champion: Registry, sqlite_store: OnlineStore
) -> None:
    registry, slot = no_champion, ModelSlot()

    def broken(model: LoadedModel) -> None:
        raise RuntimeError("metrics are down")

    reloader = Reloader(
        settings=make_settings(tmp_path, registry),
        client=registry.client(),
        store=sqlite_store,
        slot=slot,
        on_loaded=broken,
    )
    registry.promote(registry.good[0])

    assert reloader.check().status == "loaded"
    assert serving(slot) == registry.good[0]


# --- following ----------------------------------------------------------------------


def test_the_poller_notices_an_alias_move_within_the_interval(
    tmp_path: Path, no_champion: Registry, sqlite_store: OnlineStore, running: list[Reloader]
) -> None:
    registry, slot = no_champion, ModelSlot()
    reloader = reloader_for(
        make_settings(tmp_path, registry, poll_s=0.2), registry, sqlite_store, slot
    )
    v1, v2 = registry.good
    registry.promote(v1)
    reloader.start()
    running.append(reloader)
    wait_until(lambda: serving(slot) == v1, timeout=10)

    registry.promote(v2)
    took = wait_until(lambda: serving(slot) == v2, timeout=5)

    assert took < 0.2 + 1.5  # one interval, and the load
    reloader.stop()
    assert not reloader_threads()


def test_wake_checks_at_once(
    tmp_path: Path, no_champion: Registry, sqlite_store: OnlineStore, running: list[Reloader]
) -> None:
    registry, slot = no_champion, ModelSlot()
    settings = make_settings(tmp_path, registry, poll_s=60)
    reloader = reloader_for(settings, registry, sqlite_store, slot)
    v1, v2 = registry.good
    registry.promote(v1)
    reloader.start()
    running.append(reloader)
    wait_until(lambda: serving(slot) == v1, timeout=10)

    registry.promote(v2)
    reloader.wake()

    assert wait_until(lambda: serving(slot) == v2, timeout=5) < 1.5
    started = time.perf_counter()
    reloader.stop()
    assert time.perf_counter() - started < 1.0 and not reloader_threads()


def test_no_prediction_fails_during_swaps(
    tmp_path: Path, no_champion: Registry, sqlite_store: OnlineStore
) -> None:
    """One thread predicts in a tight loop, as requests do, while the champion moves."""
    registry, slot = no_champion, ModelSlot()
    reloader = reloader_for(make_settings(tmp_path, registry), registry, sqlite_store, slot)
    v1, v2 = registry.good
    registry.promote(v1)
    reloader.check()
    done = threading.Event()
    failures: list[BaseException] = []
    seen: dict[str, int] = {}

    def predict() -> None:
        while not done.is_set():
            try:
                model = slot.model  # read once, as a request does
                assert model is not None
                out = model.predict(X)
                np.testing.assert_allclose(out, registry.expected, rtol=1e-6, atol=1e-6)
                seen[model.version] = seen.get(model.version, 0) + 1
            except BaseException as exc:
                failures.append(exc)
                return

    predictor = threading.Thread(target=predict)
    predictor.start()
    started = time.perf_counter()
    moves = 0
    try:
        while time.perf_counter() - started < 1.0 or moves < 6:
            registry.promote(registry.good[(moves + 1) % 2])  # v2, v1, v2, ...
            outcome = reloader.check(force=moves % 3 == 2)
            assert outcome.status == "loaded"
            moves += 1
    finally:
        done.set()
        predictor.join(timeout=10)

    assert not failures, failures
    assert set(seen) == {v1, v2} and sum(seen.values()) > moves
    assert reloader.loads == moves + 1


def test_a_promoted_event_wakes_the_poller_at_once(
    tmp_path: Path,
    no_champion: Registry,
    sqlite_store: OnlineStore,
    prefect_api: None,
    running: list[Reloader],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from prefect.settings import PREFECT_API_URL

    registry, slot = no_champion, ModelSlot()
    url = PREFECT_API_URL.value()
    assert url, "the Prefect test harness sets the API URL"
    settings = make_settings(tmp_path, registry, poll_s=60, prefect_url=url)
    reloader = reloader_for(settings, registry, sqlite_store, slot)
    v1, v2 = registry.good
    registry.promote(v1)
    with caplog.at_level(logging.INFO, logger="mlops.serving.reloader"):
        reloader.start()
        running.append(reloader)
        wait_until(lambda: serving(slot) == v1, timeout=10)
        wait_until(
            lambda: any("listening for" in r.getMessage() for r in caplog.records), timeout=30
        )

        registry.promote(v2)
        events.emit(events.MODEL_PROMOTED, events.model_resource(MODEL), {"version": v2})
        took = wait_until(lambda: serving(slot) == v2, timeout=10)

    assert took < 2.0  # the poll interval is a minute
    assert any(events.MODEL_PROMOTED in r.getMessage() for r in caplog.records)
    started = time.perf_counter()
    reloader.stop()
    assert time.perf_counter() - started < 2.0 and not reloader_threads()


def test_an_unreachable_prefect_server_leaves_polling_on(
    tmp_path: Path, no_champion: Registry, sqlite_store: OnlineStore, running: list[Reloader]
) -> None:
    registry, slot = no_champion, ModelSlot()
    settings = make_settings(tmp_path, registry, poll_s=0.2, prefect_url="http://127.0.0.1:1/api")
    reloader = reloader_for(settings, registry, sqlite_store, slot)
    v1, v2 = registry.good
    registry.promote(v1)
    reloader.start()
    running.append(reloader)
    assert {t.name for t in reloader_threads()} == {
        f"reloader-poll-{MODEL}",
        f"reloader-events-{MODEL}",
    }
    wait_until(lambda: serving(slot) == v1, timeout=10)

    registry.promote(v2)
    wait_until(lambda: serving(slot) == v2, timeout=5)

    started = time.perf_counter()
    reloader.stop()  # the listener is waiting to reconnect: cancelled at once
    assert time.perf_counter() - started < 2.0 and not reloader_threads()
