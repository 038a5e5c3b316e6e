"""The serving request log on a real SQLite file and a real Postgres server.

Database outages are real: a TCP proxy (``_tcp_proxy.py``) between the log and the
Postgres server is killed and restarted. Postgres is ``MLOPS_TEST_POSTGRES_URL``; each
test gets a fresh database, dropped afterwards.
"""

from __future__ import annotations

import logging
import math
import shutil
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import sqlalchemy as sa

from mlops.serving.request_log import (
    VERSION_TABLE,
    FeedbackRecord,
    PredictionRecord,
    RequestLog,
    upgrade_schema,
)
from mlops.settings import RequestLogSettings
from mlops.sqldb import create_engine
from tests.conftest import PG_SERVER
from tests.integration._tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
LOGGER = "mlops.serving.request_log"


def prediction(i: int = 0, **overrides: Any) -> PredictionRecord:
    values: dict[str, Any] = {
        "request_id": uuid.uuid4().hex,
        "received_at": T0 + timedelta(seconds=i),
        "model_name": "fraud_detector",
        "model_version": "3",
        "inputs": {"rows": [{"amount": 12.5 + i, "merchant": "m-7", "ok": True, "n": None}]},
        "outputs": [{"label": i % 2, "probabilities": [0.75 - i / 1000, 0.25 + i / 1000]}],
        "latency_ms": 1.234567 + i,
        "n_rows": 1,
        "features": np.array([[12.5 + i, -1.0, 3e38]], dtype="<f4").tobytes(),
    }
    return PredictionRecord(**(values | overrides))


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def count(url: str, table: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'nested' / 'requests.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def open_log(tmp_path: Path) -> Iterator[Callable[..., RequestLog]]:
    """Build (and start) request logs with short intervals; all closed afterwards."""
    logs: list[RequestLog] = []

    def build(url: str, *, start: bool = True, **overrides: Any) -> RequestLog:
        values: dict[str, Any] = {
            "url": url,
            "spool_dir": tmp_path / "spool",
            "flush_interval_s": 0.05,
            "retry_interval_s": 0.1,
        }
        log = RequestLog(RequestLogSettings(**(values | overrides)))
        logs.append(log)
        if start:
            log.start()
        return log

    yield build
    for log in logs:
        log.close(timeout_s=5)


@pytest.fixture
def pg_proxy(postgres_url: str) -> Iterator[tuple[TcpProxy, str]]:
    """A started proxy to the Postgres server, and the fresh database's URL through it."""
    server = sa.make_url(PG_SERVER)
    proxy = TcpProxy((server.host or "127.0.0.1", server.port or 5432)).start()
    url = sa.make_url(postgres_url).set(host="127.0.0.1", port=proxy.port)
    yield proxy, url.render_as_string(hide_password=False)
    proxy.stop()


def spool_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "spool").glob("*.jsonl"))


# --- writing and reading back ------------------------------------------------------------


def test_records_are_written_in_batches_and_read_back_equal(
    db_url: str, open_log: Callable[..., RequestLog], caplog: pytest.LogCaptureFixture
) -> None:
    log = open_log(db_url, batch_size=10, flush_interval_s=30)  # wakes on 10 records or flush
    wait_until(lambda: log.database_ok)

    first = [prediction(i) for i in range(5)]
    for record in first:
        log.log_prediction(record)
    time.sleep(0.1)
    assert (log.queue_depth, log.written) == (5, 0)  # under a batch: waiting, not written

    plus_two = timezone(timedelta(hours=2))
    later = [prediction(i, received_at=T0.astimezone(plus_two)) for i in range(20)]
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        for record in later:
            log.log_prediction(record)
        assert log.flush()
    assert (log.queue_depth, log.written) == (0, 25)
    batches = [r.args[0] for r in caplog.records if "committed" in r.getMessage()]
    assert sum(batches) == 25 and max(batches) <= 10  # type: ignore[type-var]

    records = first + later
    ids = [r.request_id for r in records]
    got = log.predictions([*ids, "unknown"])
    assert got == records  # inputs, outputs, times (as instants), latency, route
    assert all(r.received_at.tzinfo == UTC for r in got)
    assert count(db_url, "prediction_log") == 25


def test_a_partial_batch_waits_for_the_interval_while_full_batches_go_at_once(
    tmp_path: Path, open_log: Callable[..., RequestLog]
) -> None:
    # Under load the writer does not chase the records that arrive while it writes with
    # many small transactions: a partial batch goes at the flush interval, or on flush().
    log = open_log(f"sqlite:///{tmp_path / 'requests.db'}", batch_size=10, flush_interval_s=30)
    wait_until(lambda: log.database_ok)
    for i in range(25):
        log.log_prediction(prediction(i))
    wait_until(lambda: log.written == 20)
    time.sleep(0.2)
    assert (log.written, log.queue_depth) == (20, 5)  # two full batches; 5 wait
    assert log.flush()
    assert (log.written, log.queue_depth) == (25, 0)

    quick = open_log(f"sqlite:///{tmp_path / 'quick.db'}", batch_size=10, flush_interval_s=0.2)
    wait_until(lambda: quick.database_ok)
    for i in range(13):
        quick.log_prediction(prediction(i))
    wait_until(lambda: quick.written == 13)  # the 3 left over go at the interval, unasked


def test_a_request_logged_twice_is_one_row(
    db_url: str, open_log: Callable[..., RequestLog]
) -> None:
    log = open_log(db_url)
    record = prediction()
    log.log_prediction(record)
    log.log_prediction(record)  # same batch
    assert log.flush()
    log.log_prediction(record)  # another batch
    assert log.flush()
    assert log.written == 3
    assert count(db_url, "prediction_log") == 1
    assert log.predictions([record.request_id]) == [record]


def test_feedback_is_upserted_and_joined_to_its_predictions(
    db_url: str, open_log: Callable[..., RequestLog]
) -> None:
    log = open_log(db_url)
    one, two, unlabelled = prediction(0), prediction(1), prediction(2)
    two = PredictionRecord(
        **{**_fields(two), "outputs": two.outputs * 2, "n_rows": 2}
    )  # a two-row request
    for record in (one, two, unlabelled):
        log.log_prediction(record)
    later = T0 + timedelta(hours=1)
    log.log_feedback(
        [
            FeedbackRecord(one.request_id, 0, 1, later),
            FeedbackRecord(two.request_id, 1, 0, later),
            FeedbackRecord(two.request_id, 0, 1, later),
        ]
    )
    assert log.flush()
    log.log_feedback([FeedbackRecord(one.request_id, 0, 0, later + timedelta(minutes=1))])
    log.log_feedback([FeedbackRecord(two.request_id, 1, 1, later - timedelta(minutes=1))])
    assert log.flush()

    assert log.feedback([two.request_id, one.request_id]) == [
        FeedbackRecord(two.request_id, 0, 1, later),
        FeedbackRecord(two.request_id, 1, 0, later),  # an older label does not overwrite
        FeedbackRecord(one.request_id, 0, 0, later + timedelta(minutes=1)),  # a newer one does
    ]
    assert count(db_url, "prediction_feedback") == 3

    pairs = log.labelled_predictions()
    assert [(p.request_id, f.index, f.label) for p, f in pairs] == [
        (two.request_id, 0, 1),  # newest prediction first
        (two.request_id, 1, 0),
        (one.request_id, 0, 0),
    ]
    assert pairs[0][0] == two and pairs[2][0] == one
    assert [p.request_id for p, _ in log.labelled_predictions(since=two.received_at)] == [
        two.request_id,
        two.request_id,
    ]
    assert len(log.labelled_predictions(limit=1)) == 1


def _fields(record: PredictionRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in PredictionRecord.__dataclass_fields__}


def test_migrations_run_once_with_their_own_version_table(
    db_url: str, open_log: Callable[..., RequestLog], caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_engine(db_url)  # (the SQLite file's folder created)
    with engine.begin() as conn:  # another Alembic history in the same database (MLflow's)
        conn.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        conn.execute(sa.text("INSERT INTO alembic_version VALUES ('mlflow_head')"))

    with caplog.at_level(logging.INFO, logger="alembic"):
        first = open_log(db_url)
        record = prediction()
        first.log_prediction(record)
        assert first.flush()
        first.close()
        assert sum("Running upgrade" in r.getMessage() for r in caplog.records) == 3
        caplog.clear()

        second = open_log(db_url)  # same URL: the schema is there, nothing runs
        wait_until(lambda: second.database_ok)
        assert second.predictions([record.request_id]) == [record]
        upgrade_schema(engine)
        assert not any("Running upgrade" in r.getMessage() for r in caplog.records)

    try:
        tables = set(sa.inspect(engine).get_table_names())
        assert tables == {
            "prediction_log",
            "prediction_feedback",
            "monitoring_runs",
            VERSION_TABLE,
            "alembic_version",
        }
        indexes = {i["name"] for i in sa.inspect(engine).get_indexes("prediction_log")}
        assert {"ix_prediction_log_received_at", "ix_prediction_log_model"} <= indexes
        with engine.connect() as conn:
            assert conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).all() == [
                ("0003",)
            ]
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).all() == [
                ("mlflow_head",)
            ]
    finally:
        engine.dispose()


def test_features_round_trip_and_rows_from_before_revision_0002_stay(
    db_url: str, open_log: Callable[..., RequestLog]
) -> None:
    engine = create_engine(db_url)
    try:
        upgrade_schema(engine, "0001")  # a log written before the features column
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO prediction_log (request_id, received_at, model_name, "
                    "model_version, route, inputs, outputs, latency_ms, n_rows) VALUES "
                    "('old', :t, 'fraud_detector', '1', '/predict', '{}', '[]', 1.0, 1)"
                ),
                {"t": T0},
            )
    finally:
        engine.dispose()

    log = open_log(db_url)  # upgrades to 0002
    record = prediction(features=np.arange(6, dtype="<f4").tobytes(), n_rows=2)
    log.log_prediction(record)
    assert log.flush()
    old, new = log.predictions(["old", record.request_id])
    assert old.features is None and old.feature_matrix(3) is None
    assert new == record
    np.testing.assert_array_equal(new.feature_matrix(3), [[0, 1, 2], [3, 4, 5]])
    with pytest.raises(ValueError, match="6 logged feature values are not rows of 4"):
        new.feature_matrix(4)


def test_spooled_features_survive_and_old_spool_lines_still_replay(
    pg_proxy: tuple[TcpProxy, str], open_log: Callable[..., RequestLog], tmp_path: Path
) -> None:
    proxy, url = pg_proxy
    proxy.stop()
    first = open_log(url)
    with_features = prediction(0)
    first.log_prediction(with_features)
    first.close()
    (segment,) = spool_files(tmp_path)
    # A line spooled by a version without the features column (no "features" key).
    legacy = prediction(1, features=None)
    line = orjson.loads(segment.read_bytes().splitlines()[0])
    line.update(request_id=legacy.request_id, received_at=legacy.received_at.isoformat())
    del line["features"]
    with segment.open("ab") as out:
        out.write(orjson.dumps(line) + b"\n")

    proxy.start()
    second = open_log(url)
    wait_until(lambda: second.written == 2 and second.spool_records == 0)
    got = second.predictions([with_features.request_id, legacy.request_id])
    assert got[0] == with_features
    assert got[1].features is None and got[1].inputs == with_features.inputs


# --- the database going away -------------------------------------------------------------


def test_an_outage_spools_and_everything_is_written_once_when_it_ends(
    pg_proxy: tuple[TcpProxy, str], open_log: Callable[..., RequestLog], tmp_path: Path
) -> None:
    proxy, url = pg_proxy
    log = open_log(url)
    before = [prediction(i) for i in range(10)]
    for record in before:
        log.log_prediction(record)
    assert log.flush() and log.written == 10 and log.database_ok

    proxy.stop()
    during = [prediction(i) for i in range(200)]
    feedback = [FeedbackRecord(r.request_id, 0, 1, T0) for r in before[:5]]
    took = []
    for record in during:
        start = time.perf_counter()
        log.log_prediction(record)
        took.append(time.perf_counter() - start)
    log.log_feedback(feedback)
    assert statistics.median(took) < 50e-6 and max(took) < 0.05  # an append, even when down
    assert log.flush()  # into the spool
    assert not log.database_ok
    assert log.spool_records == 205 and log.spool_bytes > 0 and spool_files(tmp_path)
    assert log.queue_depth == 0 and log.dropped == 0

    proxy.start()
    wait_until(lambda: log.spool_records == 0)
    assert log.database_ok and log.spool_bytes == 0 and not spool_files(tmp_path)
    assert log.written >= 215
    assert count(url, "prediction_log") == 210 and count(url, "prediction_feedback") == 5
    assert log.predictions([r.request_id for r in before + during]) == before + during


def test_a_full_spool_drops_the_oldest_records_and_counts_them(
    pg_proxy: tuple[TcpProxy, str], open_log: Callable[..., RequestLog], tmp_path: Path
) -> None:
    proxy, url = pg_proxy
    proxy.stop()  # down from the start
    log = open_log(url, spool_max_bytes=1024)
    records = [prediction(i) for i in range(10)]  # ~300 bytes each as JSON
    for record in records:
        log.log_prediction(record)
        assert log.flush()
        assert log.spool_bytes <= 1024
    assert 0 < log.dropped < 10
    assert log.dropped + log.spool_records == 10

    kept = records[log.dropped :]
    proxy.start()
    wait_until(lambda: log.spool_records == 0)
    assert count(url, "prediction_log") == len(kept)
    assert log.predictions([r.request_id for r in records]) == kept  # the newest ones
    assert not spool_files(tmp_path)


def test_a_spool_left_at_close_is_replayed_by_the_next_log_exactly_once(
    pg_proxy: tuple[TcpProxy, str], open_log: Callable[..., RequestLog], tmp_path: Path
) -> None:
    proxy, url = pg_proxy
    proxy.stop()
    records = [prediction(i) for i in range(5)]
    first = open_log(url)
    for record in records:
        first.log_prediction(record)
    first.log_feedback([FeedbackRecord(records[0].request_id, 0, 1, T0)])
    first.close()
    left = spool_files(tmp_path)
    assert left and first.spool_records == 6
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in left:
        shutil.copy(path, copy)

    proxy.start()
    second = open_log(url)
    wait_until(lambda: second.written == 6 and second.spool_records == 0)
    assert second.predictions([r.request_id for r in records]) == records
    assert not spool_files(tmp_path)
    second.close()

    for path in copy.iterdir():  # the same spool once more (a crash mid-replay, say)
        shutil.copy(path, tmp_path / "spool")
    third = open_log(url)
    wait_until(lambda: third.written == 6 and third.spool_records == 0)
    assert count(url, "prediction_log") == 5 and count(url, "prediction_feedback") == 1


def test_records_beyond_queue_max_go_through_the_spool(
    tmp_path: Path, open_log: Callable[..., RequestLog]
) -> None:
    log = open_log(f"sqlite:///{tmp_path / 'requests.db'}", start=False, queue_max=5)
    records = [prediction(i) for i in range(20)]
    for record in records:
        log.log_prediction(record)  # no writer yet: memory holds 2 × queue_max, then drops
    assert (log.queue_depth, log.dropped) == (10, 10)

    log.start()  # 5 spilled to the spool, 5 written, then the spool replayed
    wait_until(lambda: log.written == 10 and log.spool_records == 0)
    assert log.predictions([r.request_id for r in records]) == records[:10]


# --- the hot path never fails --------------------------------------------------------------


class Opaque:
    def __str__(self) -> str:
        return "opaque"


def test_log_prediction_never_raises(tmp_path: Path, open_log: Callable[..., RequestLog]) -> None:
    log = open_log(f"sqlite:///{tmp_path / 'requests.db'}")
    odd = prediction(
        inputs={"obj": Opaque(), "nan": math.nan, "pair": (1, 2), "array": np.arange(3), 7: "k"},
        outputs=[{"label": np.int64(1), "probabilities": np.array([0.25, 0.75], np.float32)}],
    )
    log.log_prediction(odd)
    log.log_prediction(None)  # type: ignore[arg-type]  # not a record: dropped, counted
    log.log_feedback([FeedbackRecord(odd.request_id, 0, 1, T0), "junk"])  # type: ignore[list-item]
    assert log.flush()
    assert log.dropped == 2 and log.written == 2

    (stored,) = log.predictions([odd.request_id])
    assert stored.inputs == {
        "obj": "opaque",
        "nan": None,
        "pair": [1, 2],
        "array": [0, 1, 2],
        "7": "k",
    }
    assert stored.outputs == [{"label": 1, "probabilities": [0.25, 0.75]}]
    assert log.feedback([odd.request_id]) == [FeedbackRecord(odd.request_id, 0, 1, T0)]

    log.close()
    log.log_prediction(prediction())  # after close: dropped, counted
    log.log_feedback([FeedbackRecord(odd.request_id, 0, 1, T0)])
    assert log.dropped == 4 and log.queue_depth == 0


def test_a_record_the_database_refuses_is_dropped_alone(
    postgres_url: str, open_log: Callable[..., RequestLog]
) -> None:
    log = open_log(postgres_url)
    good = [prediction(0), prediction(1)]
    bad = prediction(2, model_name="nul\x00byte")  # Postgres text cannot hold NUL
    for record in (good[0], bad, good[1]):
        log.log_prediction(record)
    assert log.flush()
    assert (log.written, log.dropped, log.database_ok) == (2, 1, True)
    assert log.predictions([r.request_id for r in (*good, bad)]) == good


def test_closing_a_log_that_only_read_closes_its_database_connections(
    postgres_url: str, postgres_admin: sa.Engine, open_log: Callable[..., RequestLog]
) -> None:
    database = sa.make_url(postgres_url).database

    def connections() -> int:
        with postgres_admin.connect() as conn:
            return conn.execute(
                sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :db"),
                {"db": database},
            ).scalar_one()

    writer = open_log(postgres_url)
    writer.log_prediction(record := prediction())
    assert writer.flush()
    writer.close()

    reader = open_log(postgres_url, start=False)  # as the monitor flow builds it
    assert [r.request_id for r in reader.predictions([record.request_id])] == [record.request_id]
    assert connections() >= 1  # the read's connection went back to the pool, still open
    reader.close()
    wait_until(lambda: connections() == 0, timeout_s=5)

    # reading again after close opens a connection again, and closing again closes it
    assert reader.predictions([record.request_id])
    assert connections() >= 1
    reader.close()
    wait_until(lambda: connections() == 0, timeout_s=5)
