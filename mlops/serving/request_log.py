"""The request log: every prediction and every feedback label, written off the hot path.

::

    log_prediction / log_feedback ──append──▶ deque ──writer thread──▶ batches ──▶ database
                                                              │  (down)             ▲
                                                              └──▶ spool on disk ───┘ replay

- **Hot path.** ``log_prediction`` and ``log_feedback`` only append to an in-memory
  queue (a :class:`collections.deque`): no lock, no I/O, never an exception. Beyond
  ``2 × queue_max`` queued records (a writer stuck for a long time) they drop and count.
- **Writer.** One daemon thread wakes every ``flush_interval_s`` (or as soon as
  ``batch_size`` records wait), takes batches and writes each in one transaction: one
  ``INSERT`` per table, executed for all the batch's rows at once (``executemany``:
  psycopg 3 pipelines it in one round trip; five times faster than a multi-row
  ``VALUES`` that SQLAlchemy compiles anew for every batch). Records beyond
  ``queue_max`` in memory go to the spool instead, so memory stays bounded when the
  database is slower than the traffic.
- **Database down.** A batch that cannot be written goes to the spool: append-only
  JSON-lines segment files in ``spool_dir``, flushed and fsynced per batch. The writer
  tries the database again every ``retry_interval_s`` and, once it answers, replays the
  segments oldest first, deleting each only after its rows are committed. The spool is
  bounded by ``spool_max_bytes``: when full, the oldest segment is deleted and its records
  counted in :attr:`RequestLog.dropped`. A spool left by an earlier process is replayed
  at start; a segment another live process is writing is locked (``flock``) and skipped.
- **Exactly once.** Inserts are idempotent: predictions ``ON CONFLICT (request_id) DO
  NOTHING``; feedback ``ON CONFLICT (request_id, "index") DO UPDATE`` keeping the label
  received last (by ``received_at``, whatever order the rows arrive in). A batch written
  twice (a crash mid-replay, a spool replayed again) leaves one row per record.
- **Schema.** Alembic migrations in ``mlops/serving/migrations/``, run programmatically on
  the first successful connection, with their own version table
  (``mlops_request_log_version``): the same Postgres database may hold MLflow's
  ``alembic_version``.

Inputs and outputs are stored as JSON (JSONB on Postgres); a value JSON cannot hold is
converted, never dropped: NaN and infinities become ``null``, numpy values plain numbers
and lists, any other object its ``str``. ``features`` (revision 0002) holds the matrix the
model scored as float32 bytes (see :attr:`PredictionRecord.features`): entity lookups'
features too, which the inputs (entity keys) do not carry. Times are stored and
returned as UTC.
"""

from __future__ import annotations

import base64
import fcntl
import logging
import numbers
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache, partial
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.dialects import postgresql, sqlite

from mlops.errors import ConfigurationError
from mlops.settings import RequestLogSettings
from mlops.sqldb import as_utc, create_engine

logger = logging.getLogger(__name__)

VERSION_TABLE = "mlops_request_log_version"
MIGRATIONS = Path(__file__).parent / "migrations"

# Postgres: a server that stops answering must not hang the writer (libpq keywords).
_PG_TIMEOUTS = {"connect_timeout": "2", "tcp_user_timeout": "10000"}
_PG_MIGRATION_LOCK = 0x6D6C6F70735F726C  # pg_advisory_xact_lock key: one migrator at a time
_IDS_PER_QUERY = 1_000  # request ids per ``IN (...)`` when reading back
_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

# Alembic's ``op`` and ``context`` are process-wide proxies: migrations run one at a time.
_migration_lock = threading.Lock()

metadata = sa.MetaData()

prediction_log = sa.Table(
    "prediction_log",
    metadata,
    sa.Column("request_id", sa.Text, primary_key=True),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("model_name", sa.Text, nullable=False),
    sa.Column("model_version", sa.Text, nullable=False),
    sa.Column("route", sa.Text, nullable=False),
    sa.Column("inputs", _JSON, nullable=False),
    sa.Column("outputs", _JSON, nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("n_rows", sa.Integer, nullable=False),
    sa.Column("features", sa.LargeBinary, nullable=True),
    sa.Index("ix_prediction_log_model", "model_name", "model_version"),
)

prediction_feedback = sa.Table(
    "prediction_feedback",
    metadata,
    sa.Column("request_id", sa.Text, primary_key=True),
    sa.Column("index", sa.Integer, primary_key=True),
    sa.Column("label", sa.Integer, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    """One prediction request: ``outputs`` holds one ``{"label", "probabilities"}`` per row.

    ``inputs`` and ``outputs`` may be given as JSON text (bytes or str) already: the app
    passes the request body it parsed and the predictions it encoded for its answer, so
    the log encodes nothing again. They are read back as JSON values.
    """

    request_id: str
    received_at: datetime
    model_name: str
    model_version: str
    inputs: dict[str, Any] | bytes | str
    outputs: list[dict[str, Any]] | bytes | str
    latency_ms: float
    route: str = "/predict"
    n_rows: int | None = None
    """Rows scored; ``len(outputs)`` when None (give it when ``outputs`` is JSON text)."""
    features: bytes | None = None
    """The matrix the model scored: float32 little-endian, row-major ``[n_rows,
    n_features]``, columns in the model version's ``feature_names`` order (entity
    lookups included: what monitoring compares with the training data)."""

    def feature_matrix(self, n_features: int) -> np.ndarray | None:
        """``features`` as a float32 ``[n_rows, n_features]`` array (None when not logged).

        Raises ``ValueError`` when the bytes do not hold whole rows of ``n_features``.
        """
        if self.features is None:
            return None
        flat = np.frombuffer(self.features, dtype="<f4")
        if n_features <= 0 or flat.size % n_features:
            raise ValueError(
                f"request {self.request_id}: {flat.size} logged feature values are not rows "
                f"of {n_features} features"
            )
        return flat.reshape(-1, n_features)


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    """The true label of row ``index`` of a logged request (0 for a single-row request)."""

    request_id: str
    index: int
    label: int
    received_at: datetime


def upgrade_schema(engine: sa.Engine, revision: str = "head") -> None:
    """Bring the request log's tables to ``revision``, by default the newest (a no-op
    when they are there).

    Runs in one transaction; on Postgres an advisory lock makes concurrent processes
    (several app workers) wait for each other instead of racing to create the tables.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    with _migration_lock, engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


# --- rows: what the writer inserts and spools -----------------------------------------


def _json_text(value: Any) -> str:
    """``value`` as JSON text (orjson: numpy values, NaN and infinities as ``null``, other
    objects as their ``str``, dict keys of any type as text)."""
    return orjson.dumps(value, default=_fallback, option=_ORJSON_OPTIONS).decode()


_ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def _fallback(value: Any) -> Any:
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _json_column(value: Any) -> str:
    """A JSON column's text: ``value`` as is when it is already JSON text (bytes or str,
    e.g. the request body the app parsed), else encoded by :func:`_json_text`."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, str):
        return value
    return _json_text(value)


def _prediction_row(record: PredictionRecord) -> dict[str, Any]:
    """A row of ``prediction_log``, its JSON columns already as text (see
    :func:`_idempotent_inserts`: the writer's CPU goes into orjson, not a JSON type)."""
    return {
        "request_id": str(record.request_id),
        "received_at": as_utc(record.received_at),
        "model_name": str(record.model_name),
        "model_version": str(record.model_version),
        "route": str(record.route),
        "inputs": _json_column(record.inputs),
        "outputs": _json_column(record.outputs),
        "latency_ms": float(record.latency_ms),
        "n_rows": int(record.n_rows) if record.n_rows is not None else len(record.outputs),
        "features": None if record.features is None else bytes(record.features),
    }


def _feedback_row(record: FeedbackRecord) -> dict[str, Any]:
    return {
        "request_id": str(record.request_id),
        "index": int(record.index),
        "label": int(record.label),
        "received_at": as_utc(record.received_at),
    }


_COLUMNS = {
    "prediction": frozenset(prediction_log.c.keys()),
    "feedback": frozenset(prediction_feedback.c.keys()),
}


@dataclass
class _Rows:
    """A batch as table rows; what one transaction writes or one spool append holds."""

    predictions: list[dict[str, Any]] = field(default_factory=list)
    feedback: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.predictions) + len(self.feedback)

    def chunks(self, size: int) -> Iterator[_Rows]:
        for start in range(0, len(self.predictions), size):
            yield _Rows(predictions=self.predictions[start : start + size])
        for start in range(0, len(self.feedback), size):
            yield _Rows(feedback=self.feedback[start : start + size])

    def lines(self) -> list[bytes]:
        """One JSON line per row, with its ``kind``."""
        out = []
        for kind, rows in (("prediction", self.predictions), ("feedback", self.feedback)):
            for row in rows:
                line = {"kind": kind, **row, "received_at": row["received_at"].isoformat()}
                if kind == "prediction" and row["features"] is not None:
                    line["features"] = base64.b64encode(row["features"]).decode("ascii")
                out.append(orjson.dumps(line) + b"\n")
        return out

    @classmethod
    def parse(cls, data: bytes) -> tuple[_Rows, int]:
        """The rows of a spool segment, and how many lines could not be read (a torn write)."""
        rows, bad = cls(), 0
        targets = {"prediction": rows.predictions, "feedback": rows.feedback}
        for line in data.splitlines():
            try:
                row = orjson.loads(line)
                kind = row.pop("kind")
                if kind == "prediction":  # spooled before revision 0002: no features
                    features = row.setdefault("features", None)
                    if features is not None:
                        row["features"] = base64.b64decode(features, validate=True)
                if row.keys() != _COLUMNS[kind]:
                    raise KeyError(kind)
                row["received_at"] = datetime.fromisoformat(row["received_at"])
            except (ValueError, KeyError, TypeError, AttributeError):  # binascii.Error too
                bad += 1
                continue
            targets[kind].append(row)
        return rows, bad


@lru_cache(maxsize=4)  # built once per dialect: SQLAlchemy's upsert is slow to build
def _idempotent_inserts(dialect: str) -> tuple[Callable[[int], str], sa.Executable]:
    """The INSERTs of a batch: predictions by the statement for ``n`` rows, feedback run
    with a list of rows (executemany).

    Predictions: one multi-row ``INSERT ... ON CONFLICT (request_id) DO NOTHING`` per up
    to :data:`_ROWS_PER_STATEMENT` rows, the JSON columns bound as the text
    :func:`_json_text` made (cast to JSONB on Postgres), so that no JSON type encodes
    them again. One statement, not an executemany: the driver then crosses into the
    database (and releases the GIL) once per batch, not once per row, each time waiting
    for the busy event loop to hand the GIL back. Feedback: ``ON CONFLICT (request_id,
    "index") DO UPDATE`` unless the stored label was received later, so the newest label
    wins whatever order the rows are written in (a replayed spool included).
    """
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    feedback = insert(prediction_feedback)
    return partial(_prediction_insert, dialect), feedback.on_conflict_do_update(
        index_elements=["request_id", "index"],
        set_={"label": feedback.excluded.label, "received_at": feedback.excluded.received_at},
        where=prediction_feedback.c.received_at <= feedback.excluded.received_at,
    )


_PREDICTION_COLUMNS = tuple(prediction_log.c.keys())
_ROWS_PER_STATEMENT = 1_000  # x 10 parameters: within SQLite's and Postgres' limits


@lru_cache(maxsize=64)
def _prediction_insert(dialect: str, n: int) -> str:
    """The driver-level SQL of a multi-row insert of ``n`` predictions (positional
    parameters: no per-parameter work in SQLAlchemy)."""
    mark = "%s" if dialect == "postgresql" else "?"
    json_value = f"CAST({mark} AS JSONB)" if dialect == "postgresql" else mark
    row = ", ".join(json_value if c in ("inputs", "outputs") else mark for c in _PREDICTION_COLUMNS)
    values = ", ".join([f"({row})"] * n)
    return (
        f"INSERT INTO prediction_log ({', '.join(_PREDICTION_COLUMNS)}) VALUES {values} "
        "ON CONFLICT (request_id) DO NOTHING"
    )


def _flat_params(dialect: str, rows: list[dict[str, Any]]) -> tuple[Any, ...]:
    if dialect == "sqlite":  # as SQLAlchemy's DateTime stores it there: naive UTC text
        return tuple(
            _sqlite_time(row[c]) if c == "received_at" else row[c]
            for row in rows
            for c in _PREDICTION_COLUMNS
        )
    return tuple(row[c] for row in rows for c in _PREDICTION_COLUMNS)


def _sqlite_time(value: datetime) -> str:
    return as_utc(value).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


# --- the spool --------------------------------------------------------------------------


@dataclass
class _Segment:
    path: Path
    size: int
    records: int


class _Spool:
    """Append-only JSON-lines segments in one folder; only the writer thread calls it.

    A segment is written until it reaches 1/16 of the bound, then a new one is started;
    names sort by creation time. The segment being written is held under ``flock`` so
    that another process sharing the folder neither replays nor deletes it.
    """

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.segment_bytes = max(1, max_bytes // 16)
        self.closed: list[_Segment] = []  # oldest first
        self.current: _Segment | None = None
        self._file: IO[bytes] | None = None
        self.bytes = 0
        self.records = 0
        self._seq = 0

    def adopt(self) -> None:
        """Count the segments already in the folder (left by an earlier process)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.folder.glob("*.jsonl")):
            try:
                with path.open("rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    records = sum(
                        chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b"")
                    )
            except FileNotFoundError:
                continue
            self.closed.append(_Segment(path, size, records))
            self.bytes += size
            self.records += records

    def append(self, lines: list[bytes]) -> int:
        """Write ``lines`` durably; the number of records dropped to stay under the bound."""
        size = sum(len(line) for line in lines)
        dropped = 0
        while dropped < len(lines) and size > self.max_bytes:  # a batch larger than the bound
            size -= len(lines[dropped])
            dropped += 1
        lines = lines[dropped:]
        dropped += self._make_room(size)
        if not lines:
            return dropped
        if self.current is None or self.current.size >= self.segment_bytes:
            self._open_segment()
        assert self._file is not None and self.current is not None
        self._file.write(b"".join(lines))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.current.size += size
        self.current.records += len(lines)
        self.bytes += size
        self.records += len(lines)
        return dropped

    def _make_room(self, size: int) -> int:
        dropped = 0
        while self.bytes + size > self.max_bytes:
            for segment in list(self.closed):  # oldest first
                handle = self.claim(segment)
                if handle is not None:
                    with handle:
                        self.remove(segment)
                    dropped += segment.records
                    break
            else:  # nothing closed that can go: close the one being written, or give up
                if self.current is None:
                    break
                self.rotate()
        return dropped

    def _open_segment(self) -> None:
        self.rotate()
        self._seq += 1
        path = self.folder / f"{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}.jsonl"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._file = path.open("ab")
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
        self.current = _Segment(path, 0, 0)

    def rotate(self) -> None:
        """Close the segment being written: from now on it can be replayed."""
        if self._file is not None:
            self._file.close()  # releases the lock
            self._file = None
        if self.current is not None:
            self.closed.append(self.current)
            self.current = None

    def claim(self, segment: _Segment) -> IO[bytes] | None:
        """The segment opened and locked, or None (another process holds it, or it is gone)."""
        try:
            handle = segment.path.open("rb")
        except FileNotFoundError:
            self._forget(segment)
            return None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        if not segment.path.exists():  # replayed and deleted by another process meanwhile
            handle.close()
            self._forget(segment)
            return None
        return handle

    def remove(self, segment: _Segment) -> None:
        """Delete a claimed segment (its rows are committed, or it is dropped)."""
        segment.path.unlink(missing_ok=True)
        self._forget(segment)

    def _forget(self, segment: _Segment) -> None:
        if segment in self.closed:
            self.closed.remove(segment)
            self.bytes -= segment.size
            self.records -= segment.records


# --- the log ----------------------------------------------------------------------------


class RequestLog:
    """Predictions and feedback, batched by a background writer into a SQL database.

    Build it at application start-up, call :meth:`start`, pass it to the routes, and
    :meth:`close` it at shutdown. Every property is cheap and safe from any thread.
    """

    def __init__(self, settings: RequestLogSettings) -> None:
        if settings.url is None or settings.spool_dir is None:
            raise ConfigurationError(
                "request log settings lack url or spool_dir: build them through "
                "mlops.settings.Settings (which fills the defaults) or set both"
            )
        try:
            url = sa.make_url(settings.url)
        except sa.exc.ArgumentError as exc:
            raise ConfigurationError(f"request log url is not a SQLAlchemy URL: {exc}") from exc
        if url.get_backend_name() not in ("postgresql", "sqlite"):
            raise ConfigurationError(
                f"request log url must be postgresql or sqlite, not {url.get_backend_name()!r}"
            )
        self._shown_url = url.render_as_string(hide_password=True)  # for log messages
        if url.get_backend_name() == "postgresql":
            url = url.update_query_dict(
                {k: v for k, v in _PG_TIMEOUTS.items() if k not in url.query}
            )
        self._url = url
        self._settings = settings
        self._batch_size = settings.batch_size
        self._queue_max = settings.queue_max
        self._hard_max = 2 * settings.queue_max
        self._queue: deque[PredictionRecord | FeedbackRecord] = deque()
        self._accepting = True
        self._spool = _Spool(settings.spool_dir, settings.spool_max_bytes)

        self._engine: sa.Engine | None = None
        self._engine_lock = threading.Lock()
        self._schema_ready = False
        self._db_ok = False
        self._next_try = 0.0

        self._cond = threading.Condition()  # guards _taken and _done (flush waits on it)
        self._taken = 0  # records taken from the queue by the writer
        self._done = 0  # of those, written or spooled (or dropped)
        self._flushing = 0  # flush() calls waiting: the writer drains everything for them
        self._drained_at = time.monotonic()  # the writer's last partial batch (or empty queue)
        self._counts_lock = threading.Lock()
        self._written = 0
        self._dropped = 0
        self._warned: set[str] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the hot path ------------------------------------------------------------------
    def log_prediction(self, record: PredictionRecord) -> None:
        """Queue one prediction for the writer: an append; never blocks, never raises."""
        try:
            queue = self._queue
            if self._accepting and len(queue) < self._hard_max:
                queue.append(record)
                if len(queue) >= self._batch_size and not self._wake.is_set():
                    self._wake.set()
            else:
                self._refuse(1)
        except Exception:  # a prediction never fails because of its log
            logger.exception("request log: could not queue a prediction")

    def log_feedback(self, records: Sequence[FeedbackRecord]) -> None:
        """Queue feedback labels for the writer: never blocks, never raises."""
        try:
            queue = self._queue
            if self._accepting and len(queue) < self._hard_max:
                queue.extend(records)
                if len(queue) >= self._batch_size and not self._wake.is_set():
                    self._wake.set()
            else:
                self._refuse(len(records))
        except Exception:
            logger.exception("request log: could not queue feedback")

    def _refuse(self, n: int) -> None:
        reason = "closed" if not self._accepting else "full"
        self._add_dropped(n)
        if reason not in self._warned:
            self._warned.add(reason)
            if reason == "closed":
                logger.warning("request log is closed: records logged now are dropped")
            else:
                logger.warning(
                    "request log queue holds %d records (the writer is stuck?): "
                    "dropping new records until it drains",
                    self._hard_max,
                )

    # --- life cycle --------------------------------------------------------------------
    def start(self) -> None:
        """Start the writer thread (a daemon); migrations and spool replay run in it."""
        if not self._accepting:
            logger.warning("request log is closed: not starting it again (build a new one)")
            return
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="request-log-writer", daemon=True)
        self._thread.start()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every record logged before this call is written or spooled.

        False when ``timeout_s`` passed first (or the writer is not running).
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            target = self._taken + len(self._queue)
            self._flushing += 1
            try:
                self._wake.set()
                while self._done < target:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.wait(min(remaining, 0.1))
                    self._wake.set()
            finally:
                self._flushing -= 1
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop taking records, flush them (to the database or the spool), stop the writer,
        and close the database connections (reads open them too, started or not).

        What is spooled stays on disk: the next :class:`RequestLog` on the same
        ``spool_dir`` replays it. Records logged after this are dropped and counted.
        """
        self._accepting = False
        thread = self._thread
        if thread is None:
            if self._queue:
                logger.warning("request log closed before start: %d records lost", len(self._queue))
                self._add_dropped(len(self._queue))
                self._queue.clear()
            self._dispose_engine()  # a log built only to read (the monitor flow) has no writer
            return
        deadline = time.monotonic() + timeout_s
        self._stop.set()
        self._wake.set()
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            logger.warning(
                "request log writer did not stop within %.1f s (%d records still queued)",
                timeout_s,
                len(self._queue),
            )
        else:
            self._thread = None
            self._dispose_engine()  # reads since the writer's own dispose reopened some

    # --- what /metrics and /ready read -------------------------------------------------
    @property
    def queue_depth(self) -> int:
        """Records in memory, waiting for the writer."""
        return len(self._queue)

    @property
    def spool_bytes(self) -> int:
        return self._spool.bytes

    @property
    def spool_records(self) -> int:
        return self._spool.records

    @property
    def dropped(self) -> int:
        """Records lost: the spool was full (or unwritable), the log was closed, or a record
        could not be stored at all (each logged)."""
        return self._dropped

    @property
    def written(self) -> int:
        """Records committed to the database (a duplicate request id counts: it is there)."""
        return self._written

    @property
    def database_ok(self) -> bool:
        """The last write or probe of the database succeeded (and its schema is current)."""
        return self._db_ok

    def _add_dropped(self, n: int) -> None:
        with self._counts_lock:
            self._dropped += n

    # --- reading back ------------------------------------------------------------------
    def predictions(self, request_ids: Sequence[str]) -> list[PredictionRecord]:
        """The logged predictions of these request ids, in that order (unknown ids skipped).

        Reads raise SQLAlchemy's errors when the database is unreachable.
        """
        ids = list(dict.fromkeys(request_ids))
        found: dict[str, PredictionRecord] = {}
        with self._ready_engine().connect() as conn:
            for start in range(0, len(ids), _IDS_PER_QUERY):
                chunk = ids[start : start + _IDS_PER_QUERY]
                query = sa.select(prediction_log).where(prediction_log.c.request_id.in_(chunk))
                found.update((r.request_id, _prediction(r)) for r in conn.execute(query))
        return [found[i] for i in ids if i in found]

    def feedback(self, request_ids: Sequence[str]) -> list[FeedbackRecord]:
        """The labels of these request ids, by request (in that order) then row index."""
        ids = list(dict.fromkeys(request_ids))
        found: dict[str, list[FeedbackRecord]] = {}
        with self._ready_engine().connect() as conn:
            for start in range(0, len(ids), _IDS_PER_QUERY):
                chunk = ids[start : start + _IDS_PER_QUERY]
                query = (
                    sa.select(prediction_feedback)
                    .where(prediction_feedback.c.request_id.in_(chunk))
                    .order_by(prediction_feedback.c.index)
                )
                for row in conn.execute(query):
                    found.setdefault(row.request_id, []).append(_feedback(row))
        return [record for i in ids for record in found.get(i, [])]

    def labelled_predictions(
        self, *, since: datetime | None = None, limit: int = 10_000
    ) -> list[tuple[PredictionRecord, FeedbackRecord]]:
        """Predictions that have a label, newest prediction first: one pair per labelled row.

        ``since`` bounds the prediction's ``received_at`` (naive times are taken as UTC).
        """
        p, f = prediction_log, prediction_feedback
        query = (
            sa.select(p, f.c.index, f.c.label, f.c.received_at.label("feedback_at"))
            .join(f, f.c.request_id == p.c.request_id)
            .order_by(p.c.received_at.desc(), p.c.request_id, f.c.index)
            .limit(limit)
        )
        if since is not None:
            query = query.where(p.c.received_at >= as_utc(since))
        pairs = []
        with self._ready_engine().connect() as conn:
            for row in conn.execute(query):
                m = row._mapping  # ``row.index`` would be the tuple method
                label = FeedbackRecord(
                    request_id=m["request_id"],
                    index=m["index"],
                    label=m["label"],
                    received_at=as_utc(m["feedback_at"]),
                )
                pairs.append((_prediction(row), label))
        return pairs

    def predictions_between(
        self,
        model_name: str,
        since: datetime,
        until: datetime,
        *,
        model_version: str | None = None,
        limit: int | None = None,
    ) -> list[PredictionRecord]:
        """The predictions of ``model_name`` received in ``[since, until)``, oldest first
        (the monitor's window); only ``model_version``'s when given.

        ``limit`` keeps the newest ``limit`` requests of the window (still returned oldest
        first). Naive times are taken as UTC.
        """
        p = prediction_log
        query = sa.select(p).where(
            p.c.model_name == model_name,
            p.c.received_at >= as_utc(since),
            p.c.received_at < as_utc(until),
        )
        if model_version is not None:
            query = query.where(p.c.model_version == str(model_version))
        if limit is not None:
            query = query.order_by(p.c.received_at.desc(), p.c.request_id.desc()).limit(limit)
        else:
            query = query.order_by(p.c.received_at, p.c.request_id)
        with self._ready_engine().connect() as conn:
            records = [_prediction(row) for row in conn.execute(query)]
        if limit is not None:
            records.reverse()
        return records

    # --- the database ------------------------------------------------------------------
    def _get_engine(self) -> sa.Engine:
        with self._engine_lock:
            if self._engine is None:
                self._engine = create_engine(
                    self._url.render_as_string(hide_password=False), write_ahead_log=True
                )
            return self._engine

    def _dispose_engine(self) -> None:
        """Close the engine's pooled connections; a later read opens new ones."""
        with self._engine_lock:
            engine = self._engine
        if engine is not None:
            engine.dispose()

    @property
    def engine(self) -> sa.Engine:
        """The log's database (schema migrated), for readers of its other tables."""
        return self._ready_engine()

    def _ready_engine(self) -> sa.Engine:
        """The engine, the schema migrated first (once per process and log)."""
        engine = self._get_engine()
        if not self._schema_ready:
            upgrade_schema(engine)
            self._schema_ready = True
        return engine

    def _insert(self, rows: _Rows) -> None:
        """Write rows in one transaction; once more on a fresh connection if the pooled one
        was dead (a database restarted since the last batch)."""
        engine = self._ready_engine()
        predictions, feedback = _idempotent_inserts(engine.dialect.name)
        for attempt in (1, 2):
            try:
                with engine.begin() as conn:
                    dialect = engine.dialect.name
                    for start in range(0, len(rows.predictions), _ROWS_PER_STATEMENT):
                        batch = rows.predictions[start : start + _ROWS_PER_STATEMENT]
                        conn.exec_driver_sql(predictions(len(batch)), _flat_params(dialect, batch))
                    if rows.feedback:
                        conn.execute(feedback, rows.feedback)
                return
            except sa.exc.DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise

    def _commit(self, rows: _Rows) -> bool:
        """Write rows; False (and the log marked down) when the database cannot be reached.

        Rows the database refuses as data (a DataError, say a NUL character in a text) are
        written one at a time so that only the bad ones are dropped, each logged.
        """
        if not rows:
            return True
        refused: Exception
        try:
            self._insert(rows)
        except (sa.exc.DataError, sa.exc.IntegrityError) as exc:
            refused = exc
        except sa.exc.DBAPIError as exc:  # unreachable, timed out, ...: spool, retry
            self._went_down(exc)
            return False
        except sa.exc.StatementError as exc:  # a value the driver cannot bind
            refused = exc
        except Exception as exc:  # no engine, no schema: spool, retry
            self._went_down(exc)
            return False
        else:
            with self._counts_lock:
                self._written += len(rows)
            logger.debug(
                "request log: committed %d predictions and %d feedback rows",
                len(rows.predictions),
                len(rows.feedback),
            )
            return True
        if len(rows) > 1:
            return all(self._commit(single) for single in rows.chunks(1))
        logger.error("request log: the database refused a record, dropped: %s", refused)
        self._add_dropped(1)
        return True

    def _went_down(self, exc: Exception) -> None:
        if self._db_ok:
            logger.warning(
                "request log database %s failed (%s): spooling to %s, retrying every %.1f s",
                self._shown_url,
                _first_line(exc),
                self._spool.folder,
                self._settings.retry_interval_s,
            )
        self._db_ok = False
        self._next_try = time.monotonic() + self._settings.retry_interval_s
        if self._engine is not None:
            self._engine.dispose()

    def _probe(self) -> None:
        """Connect (migrating the schema the first time); the log is up when it answers."""
        first = self._next_try == 0.0
        try:
            engine = self._ready_engine()
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except Exception as exc:
            self._next_try = time.monotonic() + self._settings.retry_interval_s
            if self._engine is not None:
                self._engine.dispose()
            if first:
                logger.warning(
                    "request log database %s unreachable (%s): spooling to %s, retrying "
                    "every %.1f s",
                    self._shown_url,
                    _first_line(exc),
                    self._spool.folder,
                    self._settings.retry_interval_s,
                )
            return
        if not first:
            logger.info(
                "request log database is back: replaying %d spooled records", self._spool.records
            )
        self._db_ok = True

    # --- the writer thread -------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._spool.adopt()
        except OSError as exc:
            logger.error("request log spool %s unusable: %s", self._spool.folder, exc)
        if self._spool.records:
            logger.info(
                "request log: %d records spooled by an earlier run in %s, replayed once the "
                "database answers",
                self._spool.records,
                self._spool.folder,
            )
        while True:
            stopping = self._stop.is_set()
            busy = False
            try:
                busy = self._cycle(stopping=stopping)
            except Exception:
                logger.exception("request log writer: unexpected error, going on")
            if stopping:
                break
            if not busy:
                self._wake.wait(self._idle_wait())
            self._wake.clear()
        self._spool.rotate()
        if self._engine is not None:
            self._engine.dispose()

    def _idle_wait(self) -> float:
        interval = self._settings.flush_interval_s
        now = time.monotonic()
        if self._queue:  # a partial batch is due flush_interval_s after the last drain
            interval = max(0.0, min(interval, self._drained_at + interval - now))
        if self._db_ok:
            return interval
        return max(0.0, min(interval, self._next_try - now))

    def _cycle(self, *, stopping: bool) -> bool:
        """One pass: probe if due, spill, drain the queue, replay. True if work is left."""
        never_tried = self._next_try == 0.0  # closed at once: one try before spooling all
        if not self._db_ok and (never_tried or not stopping) and time.monotonic() >= self._next_try:
            self._probe()
        excess = len(self._queue) - self._queue_max
        if excess > 0:
            self._process(self._take(excess), spill=True)
        self._drain(everything=stopping)
        if stopping or not self._db_ok or not (self._spool.closed or self._spool.current):
            return False
        return self._replay()

    def _drain(self, *, everything: bool) -> None:
        """Write the queue's full batches; a partial one only when it is due: for a flush,
        at close (``everything``), or ``flush_interval_s`` after the last drain.

        Under load, records arrive while a batch is written: taking them at once would
        write many small batches, each a transaction, where one full batch a little later
        costs a fraction of them (on SQLite, a 500-record batch costs several times less
        per record than batches of tens).
        """
        queue = self._queue
        while len(queue) >= self._batch_size:
            self._process(self._take(self._batch_size))
        due = self._drained_at + self._settings.flush_interval_s
        if everything or self._flushing or not queue or time.monotonic() >= due:
            while batch := self._take(self._batch_size):
                self._process(batch)
            self._drained_at = time.monotonic()

    def _take(self, n: int) -> list[PredictionRecord | FeedbackRecord]:
        with self._cond:
            queue = self._queue
            batch = [queue.popleft() for _ in range(min(n, len(queue)))]
            self._taken += len(batch)
        return batch

    def _process(
        self, batch: list[PredictionRecord | FeedbackRecord], *, spill: bool = False
    ) -> None:
        """Write a batch, or spool it (``spill``, or the database is down)."""
        try:
            rows = _Rows()
            for record in batch:
                try:
                    if isinstance(record, PredictionRecord):
                        rows.predictions.append(_prediction_row(record))
                    elif isinstance(record, FeedbackRecord):
                        rows.feedback.append(_feedback_row(record))
                    else:
                        raise TypeError(f"{type(record).__name__} is not a request log record")
                except Exception as exc:
                    logger.error("request log: dropped a record that cannot be stored: %s", exc)
                    self._add_dropped(1)
            if spill or not self._db_ok or not self._commit(rows):
                self._to_spool(rows)
        except Exception:
            self._add_dropped(len(batch))
            raise
        finally:
            with self._cond:
                self._done += len(batch)
                self._cond.notify_all()

    def _to_spool(self, rows: _Rows) -> None:
        if not rows:
            return
        try:
            dropped = self._spool.append(rows.lines())
        except OSError as exc:
            logger.error(
                "request log: cannot spool to %s (%s): %d records lost",
                self._spool.folder,
                exc,
                len(rows),
            )
            self._add_dropped(len(rows))
            return
        if dropped:
            self._add_dropped(dropped)
            logger.warning(
                "request log spool is full (%d bytes): dropped the %d oldest records",
                self._spool.max_bytes,
                dropped,
            )

    def _replay(self) -> bool:
        """Write spooled segments, oldest first; True when it stopped early for live records.

        One segment at least per call, so that steady traffic cannot starve the replay.
        """
        self._spool.rotate()
        for n, segment in enumerate(list(self._spool.closed)):
            if n and (
                self._stop.is_set() or self._wake.is_set() or len(self._queue) >= self._batch_size
            ):
                return True  # live records (or a flush, or close) first
            handle = self._spool.claim(segment)
            if handle is None:
                continue
            with handle:
                rows, bad = _Rows.parse(handle.read())
                if not all(self._commit(chunk) for chunk in rows.chunks(self._batch_size)):
                    return False
                self._spool.remove(segment)
            if bad:
                self._add_dropped(bad)
                logger.warning("request log: %d unreadable lines in %s", bad, segment.path)
            logger.info(
                "request log: replayed %d spooled records (%s)", len(rows), segment.path.name
            )
        return False


def _prediction(row: sa.Row[Any]) -> PredictionRecord:
    return PredictionRecord(
        request_id=row.request_id,
        received_at=as_utc(row.received_at),
        model_name=row.model_name,
        model_version=row.model_version,
        inputs=row.inputs,
        outputs=row.outputs,
        latency_ms=row.latency_ms,
        route=row.route,
        n_rows=row.n_rows,
        features=None if row.features is None else bytes(row.features),
    )


def _feedback(row: sa.Row[Any]) -> FeedbackRecord:
    m = row._mapping  # ``row.index`` would be the tuple method
    return FeedbackRecord(
        request_id=m["request_id"],
        index=m["index"],
        label=m["label"],
        received_at=as_utc(m["received_at"]),
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
