"""Concurrent entity lookups share store reads (real SQLite and Redis stores); the small
matrices of concurrent requests share an onnxruntime run (a real exported model)."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from mlops.errors import SchemaError, StoreUnavailableError
from mlops.features.online.base import OnlineRow
from mlops.features.online.redis import RedisOnlineStore
from mlops.features.online.sqlite import SqliteOnlineStore
from mlops.serving.coalesce import CoalescingReader, CoalescingScorer
from mlops.serving.runtime import LoadedModel, ViewRef, _build_session
from tests.integration._registry import FEATURES, VIEW, tiny_onnx_model, write_features

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("MLOPS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CARDS = {f"card_{i:03d}": [float(i), float(2 * i), float(i % 5)] for i in range(40)}


class GatedStore(SqliteOnlineStore):
    """The SQLite store, whose reads wait for a gate: lookups pile up behind one."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.batches: list[dict[str, list[str]]] = []

    def read_many(
        self, requests: Mapping[str, Sequence[str]]
    ) -> dict[str, Mapping[str, OnlineRow | None]]:
        self.batches.append({view: list(keys) for view, keys in requests.items()})
        self.gate.wait(timeout=10)
        return super().read_many(requests)


def test_lookups_waiting_behind_a_read_go_out_together(tmp_path: Path) -> None:
    store = GatedStore(tmp_path / "online.db")
    write_features(store, CARDS)
    reader = CoalescingReader(store)
    keys = [[f"card_{i:03d}", f"card_{(i + 1) % 40:03d}"] for i in range(20)]

    async def run() -> list[dict[str, Mapping[str, OnlineRow | None]]]:
        first = asyncio.create_task(reader.read({VIEW: keys[0]}))
        await asyncio.sleep(0.05)  # the first read is in flight (held at the gate) ...
        rest = [asyncio.create_task(reader.read({VIEW: k})) for k in keys[1:]]
        await asyncio.sleep(0.05)  # ... and the 19 others wait behind it
        store.gate.set()
        return await asyncio.gather(first, *rest)

    try:
        answers = asyncio.run(run())
    finally:
        store.close()

    assert reader.reads == len(store.batches) == 2
    assert store.batches[0] == {VIEW: keys[0]}
    assert sorted(store.batches[1][VIEW]) == sorted({k for pair in keys[1:] for k in pair})
    for pair, answer in zip(keys, answers, strict=True):
        for key in pair:
            row = answer[VIEW][key]
            assert row is not None
            assert [row.values[f] for f in FEATURES] == CARDS[key]


def test_max_keys_splits_the_waiting_lookups(tmp_path: Path) -> None:
    store = GatedStore(tmp_path / "online.db")
    write_features(store, CARDS)
    reader = CoalescingReader(store, max_keys=5)

    async def run() -> None:
        tasks = [asyncio.create_task(reader.read({VIEW: [k, "card_000"]})) for k in CARDS]
        await asyncio.sleep(0.05)
        store.gate.set()
        await asyncio.gather(*tasks)

    try:
        asyncio.run(run())
    finally:
        store.close()
    # 40 lookups of 2 keys (one repeated), 2 per read: 4 keys <= 5 < 6
    assert len(store.batches) == 20
    assert all(len(b[VIEW]) <= 5 for b in store.batches)


def test_a_failed_shared_read_fails_every_waiting_lookup() -> None:
    store = RedisOnlineStore("redis://127.0.0.1:1/0", socket_timeout_s=0.3)
    reader = CoalescingReader(store)

    async def run() -> list[BaseException | object]:
        tasks = [asyncio.create_task(reader.read({VIEW: [f"k{i}"]})) for i in range(5)]
        return await asyncio.gather(*tasks, return_exceptions=True)

    try:
        results = asyncio.run(run())
    finally:
        store.close()
    assert all(isinstance(r, StoreUnavailableError) for r in results)
    assert 1 <= reader.reads <= 2


def test_reads_from_redis_match_a_direct_read() -> None:
    store = RedisOnlineStore(REDIS_URL, key_prefix=f"test-coalesce-{uuid.uuid4().hex}")
    try:
        write_features(store, CARDS)
        reader = CoalescingReader(store)

        async def run() -> list[dict[str, Mapping[str, OnlineRow | None]]]:
            return await asyncio.gather(*(reader.read({VIEW: [k, "nope"]}) for k in CARDS))

        answers = asyncio.run(run())
        direct = store.read_many({VIEW: list(CARDS)})
        for key, answer in zip(CARDS, answers, strict=True):
            assert answer[VIEW][key] == direct[VIEW][key]
            assert answer[VIEW]["nope"] is None
    finally:
        store.teardown(VIEW)
        store.close()


def test_redis_is_read_on_the_loop_in_each_event_loop_it_meets() -> None:
    """The asyncio client belongs to the loop it was made on: a second loop (a second
    app in one process, as in tests) gets its own, and both read what the sync client
    reads."""
    store = RedisOnlineStore(REDIS_URL, key_prefix=f"test-coalesce-{uuid.uuid4().hex}")
    try:
        write_features(store, CARDS)
        direct = store.read_many({VIEW: list(CARDS)})

        async def run() -> dict[str, Mapping[str, OnlineRow | None]]:
            reader = CoalescingReader(store)
            rows = await reader.read({VIEW: list(CARDS)})
            await store.aclose()
            return rows

        for _ in range(2):
            assert asyncio.run(run())[VIEW] == direct[VIEW]
    finally:
        store.teardown(VIEW)
        store.close()


def test_a_silent_redis_fails_the_lookups_after_the_socket_timeout() -> None:
    """A server that accepts connections and never answers: the asyncio read gives up
    after the socket timeout (and its one retry) like the sync one, naming the store."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        store = RedisOnlineStore(url, socket_timeout_s=0.2)
        reader = CoalescingReader(store)

        async def run() -> list[BaseException | object]:
            tasks = [asyncio.create_task(reader.read({VIEW: [f"k{i}"]})) for i in range(3)]
            return await asyncio.gather(*tasks, return_exceptions=True)

        started = time.perf_counter()
        results = asyncio.run(run())
        assert time.perf_counter() - started < 2.0
        store.close()
    assert all(isinstance(r, StoreUnavailableError) for r in results), results
    assert url in str(results[0])


def test_max_in_flight_lets_that_many_reads_overlap(tmp_path: Path) -> None:
    store = GatedStore(tmp_path / "online.db")
    write_features(store, CARDS)
    # one lookup per read: otherwise the first read takes every waiting lookup
    reader = CoalescingReader(store, max_keys=1, max_in_flight=2)

    async def run() -> list[dict[str, Mapping[str, OnlineRow | None]]]:
        tasks = [asyncio.create_task(reader.read({VIEW: [k]})) for k in list(CARDS)[:6]]
        await asyncio.sleep(0.1)  # two reads at the gate, four lookups waiting behind
        in_flight = len(store.batches)
        store.gate.set()
        answers = await asyncio.gather(*tasks)
        assert in_flight == 2
        return answers

    try:
        answers = asyncio.run(run())
    finally:
        store.close()
    assert [list(a[VIEW]) for a in answers] == [[k] for k in list(CARDS)[:6]]
    assert [len(b[VIEW]) for b in store.batches] == [1] * 6


# --- scoring: the small matrices of concurrent requests, one run ---------------------


def loaded(version: str = "1") -> LoadedModel:
    """The tiny fraud model (3 features) as the app holds a verified champion."""
    proto = tiny_onnx_model()
    return LoadedModel(
        name="fraud",
        version=version,
        alias="champion",
        feature_names=tuple(FEATURES),
        feature_views=(ViewRef(VIEW, "v1"),),
        entity_key="card_id",
        onnx_sha256="0" * 64,
        signature={},
        session=_build_session(proto.SerializeToString(), intra_op_threads=1),
        loaded_at=datetime.now(UTC),
    )


def matrices(n: int, rows: int = 1, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.random((rows, len(FEATURES))) * 100).astype(np.float32) for _ in range(n)]


async def score_together(
    scorer: CoalescingScorer, calls: Sequence[tuple[LoadedModel, np.ndarray]]
) -> list[np.ndarray | BaseException]:
    """``calls`` made in one turn of the loop (as requests that arrived together)."""
    return await asyncio.gather(
        *(scorer.score(model, matrix) for model, matrix in calls), return_exceptions=True
    )


def test_matrices_handed_in_together_are_scored_in_one_run() -> None:
    model = loaded()
    seen: list[tuple[str, float]] = []
    scorer = CoalescingScorer(observe=lambda m, seconds: seen.append((m.version, seconds)))
    batch = matrices(12) + matrices(2, rows=3, seed=1)

    answers = asyncio.run(score_together(scorer, [(model, m) for m in batch]))

    assert scorer.runs == 1 and len(seen) == 1 and seen[0][0] == "1" and seen[0][1] > 0
    for matrix, answer in zip(batch, answers, strict=True):
        assert isinstance(answer, np.ndarray) and answer.shape == (len(matrix), 2)
        np.testing.assert_allclose(answer, model.predict(matrix), rtol=1e-6)  # its own rows


def test_runs_hold_at_most_max_rows_and_one_model_each() -> None:
    old, new = loaded("1"), loaded("2")
    scorer = CoalescingScorer(max_rows=4)
    calls = [(old, m) for m in matrices(6)] + [(new, m) for m in matrices(2, seed=3)]

    answers = asyncio.run(score_together(scorer, calls))

    assert scorer.runs == 3  # old: 4 + 2 rows; new: 2 rows (a swap between requests)
    for (model, matrix), answer in zip(calls, answers, strict=True):
        np.testing.assert_allclose(answer, model.predict(matrix), rtol=1e-6)  # type: ignore[arg-type]


def test_a_matrix_that_fails_fails_only_its_own_request() -> None:
    model = loaded()
    scorer = CoalescingScorer()
    good = matrices(3)
    bad = np.zeros((1, len(FEATURES) + 2), dtype=np.float32)  # not the model's width

    calls = [(model, good[0]), (model, bad), *[(model, m) for m in good[1:]]]
    answers = asyncio.run(score_together(scorer, calls))

    assert isinstance(answers[1], SchemaError) and "[N, 3]" in str(answers[1])
    for matrix, answer in zip(good, [answers[0], *answers[2:]], strict=True):
        np.testing.assert_allclose(answer, model.predict(matrix), rtol=1e-6)  # type: ignore[arg-type]


def test_a_request_alone_is_scored_at_once() -> None:
    model = loaded()
    scorer = CoalescingScorer()

    async def one_by_one() -> list[np.ndarray]:
        return [await scorer.score(model, m) for m in matrices(3)]

    answers = asyncio.run(one_by_one())
    assert scorer.runs == 3 and all(a.shape == (1, 2) for a in answers)
