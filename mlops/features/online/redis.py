"""Redis online store: one hash per entity, with a TTL.

Key ``{prefix}:{view}:{entity}``; fields: ``__ts`` → event time in epoch microseconds
(UTC), ``__v`` → the view version, ``__f`` → the feature names joined by ``\\x1f``, ``__x``
→ the feature values as packed little-endian float64 (NaN kept), in the order of ``__f``.
Rows of the older layout (one field per feature holding ``repr(float)``) are still read.

Each view also has a meta hash ``{prefix}:{view}`` (no entity part) whose ``max_ts`` is
the newest event time written, raised monotonically by the write script and expiring
with the row that carries it, and whose ``version`` is the view version of the batch
that last raised it (or matched it); :meth:`RedisOnlineStore.newest_event_timestamp` and
:meth:`RedisOnlineStore.current_version` read them without scanning.

Writes: one Lua script call per 1,000 entities replaces each entity's hash unless it holds
a newer event, sets ``EXPIRE`` and raises ``max_ts`` (setting ``version`` with it). Reads:
one Lua script call (one round trip) per batch of up to 1,000 keys, of one view or
several, answering two strings (the row heads, and every value packed), so that the
client parses two replies, not one per key or feature, and floats without text.

Unreachable servers and timeouts raise :class:`~mlops.errors.StoreUnavailableError`,
other Redis errors :class:`~mlops.errors.FeatureStoreError`, each naming the URL (its
password masked) and the operation. One quick retry, then the error: no retry loops.

The scripts touch many keys at once, so this store needs a single Redis server (or a
replica set behind one endpoint), not Redis Cluster.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd
import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from mlops.errors import FeatureStoreError, SchemaError, StoreUnavailableError
from mlops.features.online import from_epoch_us, latest_per_entity, ttl_seconds
from mlops.features.online.base import OnlineMatrix, OnlineRow

logger = logging.getLogger(__name__)

# Entities per script call: a few ms of server time at most, so that one call never
# holds up other clients for long.
_WRITE_CHUNK = 1000
_READ_CHUNK = 1000
_UNLINK_CHUNK = 500
_MAX_TS = "max_ts"
_VERSION = "version"
_NAME_SEP = "\x1f"  # between feature names in __f
_HEAD_SEP = b"\x1e"  # between the parts of the row heads in a read reply
_SAME_LAYOUT = b"\x1d"  # "the same feature names as the previous row" in a read reply
_FORBIDDEN = frozenset("\x1d\x1e\x1f")
_F8 = np.dtype("<f8")

# KEYS[1]: the view's meta hash; KEYS[2..]: the entities' hashes. ARGV: ttl_s, version,
# feature names (joined), the entities' event_ts_us (decimal, space-separated) and their
# packed values (one fixed-width record per entity, in KEYS order). Two blobs rather than
# two arguments per entity: the client packs and the server parses 3 arguments, not 500.
# A hash is deleted before it is rewritten only when it holds the older layout (no
# ``__x``; a field per feature). The meta hash's ``max_ts`` and ``version`` are set together
# when the batch's newest written event is at least ``max_ts``. Returns the number of
# entities written.
_WRITE_LUA = """
local ttl, version, names, stamps, rows = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local width = #rows / (#KEYS - 1)
local written, newest, newest_ts, i = 0, nil, nil, 1
for ts in string.gmatch(stamps, '%-?%d+') do
    i = i + 1
    local key, number = KEYS[i], tonumber(ts)
    local held = redis.call('HMGET', key, '__ts', '__x')
    local stored = held[1]
    if not stored or tonumber(stored) <= number then
        if stored and not held[2] then
            redis.call('DEL', key)
        end
        redis.call('HSET', key, '__ts', ts, '__v', version, '__f', names,
                   '__x', string.sub(rows, (i - 2) * width + 1, (i - 1) * width))
        redis.call('EXPIRE', key, ttl)
        written = written + 1
        if not newest or number > newest then
            newest, newest_ts = number, ts
        end
    end
end
if newest then
    local current = redis.call('HGET', KEYS[1], 'max_ts')
    if not current or tonumber(current) <= newest then
        redis.call('HSET', KEYS[1], 'max_ts', newest_ts, 'version', version)
        redis.call('EXPIRE', KEYS[1], ttl)
    end
end
return written
"""

# KEYS: entity hashes (of any views). Returns {heads, values}. heads joins with \30, per
# key, '' where it is absent, else three parts: event_ts_us, version, feature names (\29
# when the same as the previous found row's). values concatenates the found rows' packed
# float64s. A row of the older layout (a field per feature, repr(float)) is packed here.
_READ_LUA = """
local heads, rows = {}, {}
local n, previous = 0, nil
for i = 1, #KEYS do
    local h = redis.call('HMGET', KEYS[i], '__ts', '__v', '__f', '__x')
    if not h[1] then
        n = n + 1
        heads[n] = ''
    else
        local names, packed = h[3], h[4]
        if not packed then
            local all = redis.call('HGETALL', KEYS[i])
            local fields, values = {}, {}
            for j = 1, #all, 2 do
                local field = all[j]
                if field ~= '__ts' and field ~= '__v' then
                    fields[#fields + 1] = field
                    values[#values + 1] = struct.pack('<d', tonumber(all[j + 1]))
                end
            end
            names, packed = table.concat(fields, '\\31'), table.concat(values)
        end
        if names == previous then
            names = '\\29'
        else
            previous = names
        end
        heads[n + 1], heads[n + 2], heads[n + 3] = h[1], h[2], names
        n = n + 3
        rows[#rows + 1] = packed
    end
end
return {table.concat(heads, '\\30'), table.concat(rows)}
"""


def redact_url(url: str) -> str:
    """``url`` with its password masked and its query dropped (it may hold one)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def connect(url: str, *, socket_timeout_s: float = 2.0) -> redis.Redis:
    """The redis-py client the store uses (bytes replies, fail-fast timeouts and retry).

    Benchmarks build their baseline client here so both run with the same settings.
    """
    return redis.Redis.from_url(
        url,
        decode_responses=False,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=socket_timeout_s,
        # Fail fast: one quick retry (a stale pooled connection), not redis-py's ten.
        retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 1),
    )


def connect_async(url: str, *, socket_timeout_s: float = 2.0) -> redis.asyncio.Redis:
    """:func:`connect`'s settings on redis-py's asyncio client (one per event loop)."""
    return redis.asyncio.Redis.from_url(
        url,
        decode_responses=False,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=socket_timeout_s,
        retry=redis.asyncio.retry.Retry(ExponentialBackoff(cap=0.1, base=0.01), 1),
    )


@dataclass(frozen=True, slots=True)
class _Fetched:
    """A parsed read reply: per key ``(event_ts_us, version, names, offset)`` or ``None``,
    and the flat values, where a row's values are ``values[offset : offset + len(names)]``.
    ``layouts`` counts the changes of feature names along the found rows."""

    heads: list[tuple[int, str, tuple[str, ...], int] | None]
    values: np.ndarray
    layouts: int


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis ``MATCH`` pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def _columns(layout: Sequence[str], names: Sequence[str]) -> tuple[list[int], list[int]]:
    """Positions in ``names`` of the features ``layout`` holds, and theirs in ``layout``."""
    position = {name: j for j, name in enumerate(layout)}
    out_cols = [j for j, name in enumerate(names) if name in position]
    return out_cols, [position[names[j]] for j in out_cols]


def _check_text(what: str, text: str) -> None:
    if _FORBIDDEN.intersection(text):
        raise SchemaError(f"online write: {what} {text!r} contains a control character")


class RedisOnlineStore:
    """Online store on the Redis server at ``url``; connects on first use."""

    def __init__(
        self, url: str, *, key_prefix: str = "mlops", socket_timeout_s: float = 2.0
    ) -> None:
        self.url = redact_url(url)
        self.key_prefix = key_prefix
        self._client = connect(url, socket_timeout_s=socket_timeout_s)
        self._write = self._client.register_script(_WRITE_LUA)
        self._read = self._client.register_script(_READ_LUA)
        self._raw_url = url
        self._socket_timeout_s = socket_timeout_s
        # redis.asyncio's client of read_many_async, bound to the loop it was made on
        self._async: tuple[asyncio.AbstractEventLoop, redis.asyncio.Redis, Any] | None = None
        # Decoded feature-name layouts and versions, by their bytes (a view has few).
        self._layouts: dict[bytes, tuple[str, ...]] = {}
        self._versions: dict[bytes, str] = {}

    def __repr__(self) -> str:
        return f"RedisOnlineStore({self.url!r}, key_prefix={self.key_prefix!r})"

    def _key(self, view: str, entity: str) -> str:
        return f"{self.key_prefix}:{view}:{entity}"

    def _meta_key(self, view: str) -> str:
        return f"{self.key_prefix}:{view}"

    @contextmanager
    def _errors(self, operation: str) -> Iterator[None]:
        """Turn redis-py errors into the platform's, naming the URL and ``operation``."""
        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise StoreUnavailableError(
                f"Redis online store at {self.url} is unreachable ({operation}): {exc}"
            ) from exc
        except redis.exceptions.RedisError as exc:
            raise FeatureStoreError(
                f"Redis online store at {self.url}: {operation} failed: {exc}"
            ) from exc

    def update(self, view: str) -> None:
        """Check the server answers (hashes need no set-up)."""
        with self._errors(f"update({view!r})"):
            self._client.ping()

    def write_batch(
        self,
        *,
        view: str,
        version: str,
        frame: pd.DataFrame,
        entity: str,
        timestamp: str,
        features: Sequence[str],
        ttl: timedelta,
    ) -> int:
        """Write each entity's latest row unless a newer one is stored; returns rows written."""
        names = list(features)
        _check_text("version", version)
        for name in names:
            _check_text("feature name", name)
        latest = latest_per_entity(frame, entity=entity, timestamp=timestamp, features=names)
        ttl_s = ttl_seconds(ttl)
        packed = np.asarray(latest.values, dtype=_F8).reshape(len(latest.keys), len(names))
        head: list[str | int | bytes] = [ttl_s, version, _NAME_SEP.join(names)]
        meta = self._meta_key(view)
        written = 0
        with self._errors(f"write_batch(view={view!r})"):
            for start in range(0, len(latest.keys), _WRITE_CHUNK):
                stop = start + _WRITE_CHUNK
                keys = [meta, *(self._key(view, key) for key in latest.keys[start:stop])]
                stamps = " ".join(map(str, latest.event_ts_us[start:stop]))
                args = [*head, stamps, packed[start:stop].tobytes()]
                written += int(self._write(keys=keys, args=args))
        logger.debug("view %s: wrote %d of %d entities", view, written, len(latest.keys))
        return written

    def _fetch(self, keys: list[str], operation: str) -> _Fetched:
        """The read script's answer for ``keys`` (of any views), parsed but not yet into rows.

        One script call (one round trip) per 1,000 keys.
        """
        if not keys:
            return _Fetched(heads=[], values=np.empty(0, dtype=_F8), layouts=0)
        with self._errors(operation):
            replies = [
                self._read(keys=keys[start : start + _READ_CHUNK])
                for start in range(0, len(keys), _READ_CHUNK)
            ]
        return self._parse(replies, len(keys), operation)

    async def _fetch_async(self, keys: list[str], operation: str) -> _Fetched:
        """:meth:`_fetch` through the asyncio client, on the running loop."""
        if not keys:
            return _Fetched(heads=[], values=np.empty(0, dtype=_F8), layouts=0)
        read = self._async_read()
        with self._errors(operation):
            replies = [
                await read(keys=keys[start : start + _READ_CHUNK])
                for start in range(0, len(keys), _READ_CHUNK)
            ]
        return self._parse(replies, len(keys), operation)

    def _async_read(self) -> Any:
        """The read script on this event loop's asyncio client (made on first use)."""
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            client = connect_async(self._raw_url, socket_timeout_s=self._socket_timeout_s)
            self._async = (loop, client, client.register_script(_READ_LUA))
        return self._async[2]

    def _parse(self, replies: list[list[bytes]], n_keys: int, operation: str) -> _Fetched:
        """The read script's replies (one per chunk of ``n_keys`` keys), parsed."""
        # A chunk's first found row always names its layout, so heads just join.
        heads = _HEAD_SEP.join(reply[0] for reply in replies)
        packed = b"".join(reply[1] for reply in replies)
        try:
            values = np.frombuffer(packed, dtype=_F8)
            parts = heads.split(_HEAD_SEP)
            out: list[tuple[int, str, tuple[str, ...], int] | None] = []
            names: tuple[str, ...] = ()
            offset = layouts = i = 0
            while i < len(parts):
                if not parts[i]:
                    out.append(None)
                    i += 1
                    continue
                ts, version, layout = parts[i : i + 3]
                i += 3
                if layout != _SAME_LAYOUT:
                    names = self._layout(layout)
                    layouts += 1
                out.append((int(ts), self._version(version), names, offset))
                offset += len(names)
            if offset != len(values) or len(out) != n_keys:
                raise ValueError(f"{len(out)} heads and {len(values) - offset} values left")
        except ValueError as exc:
            raise FeatureStoreError(
                f"Redis online store at {self.url}: {operation}: a key holds no online row ({exc})"
            ) from exc
        return _Fetched(heads=out, values=values, layouts=layouts)

    def _layout(self, raw: bytes) -> tuple[str, ...]:
        names = self._layouts.get(raw)
        if names is None:
            names = tuple(raw.decode().split(_NAME_SEP)) if raw else ()
            self._layouts[raw] = names
        return names

    def _version(self, raw: bytes) -> str:
        version = self._versions.get(raw)
        if version is None:
            version = self._versions[raw] = raw.decode()
        return version

    def read(self, *, view: str, keys: Sequence[str]) -> Mapping[str, OnlineRow | None]:
        """Rows for ``keys`` in one round trip; ``None`` where absent or expired."""
        return self._rows({view: keys}, f"read(view={view!r})")[view]

    def read_many(
        self, requests: Mapping[str, Sequence[str]]
    ) -> dict[str, Mapping[str, OnlineRow | None]]:
        """Rows for several views' keys in one round trip (one script call)."""
        return self._rows(requests, f"read_many(views={list(requests)!r})")

    async def read_many_async(
        self, requests: Mapping[str, Sequence[str]]
    ) -> dict[str, Mapping[str, OnlineRow | None]]:
        """:meth:`read_many` on the running event loop (redis.asyncio), for the app: no
        thread hop, so no wait for the GIL between Redis's reply and its parsing while
        the loop is busy with other requests."""
        wanted = {view: list(dict.fromkeys(keys)) for view, keys in requests.items()}
        keys = [self._key(view, key) for view, keys in wanted.items() for key in keys]
        operation = f"read_many(views={list(requests)!r})"
        return self._rows_of(wanted, await self._fetch_async(keys, operation))

    async def aclose(self) -> None:
        """Disconnect the asyncio client of :meth:`read_many_async` (on its loop)."""
        if self._async is not None:
            loop, client, _ = self._async
            self._async = None
            if loop is asyncio.get_running_loop():
                await client.aclose()

    def _rows(
        self, requests: Mapping[str, Sequence[str]], operation: str
    ) -> dict[str, Mapping[str, OnlineRow | None]]:
        wanted = {view: list(dict.fromkeys(keys)) for view, keys in requests.items()}
        fetched = self._fetch(
            [self._key(view, key) for view, keys in wanted.items() for key in keys], operation
        )
        return self._rows_of(wanted, fetched)

    def _rows_of(
        self, wanted: dict[str, list[str]], fetched: _Fetched
    ) -> dict[str, Mapping[str, OnlineRow | None]]:
        flat = fetched.values.tolist()
        heads = iter(fetched.heads)
        out: dict[str, Mapping[str, OnlineRow | None]] = {}
        for view, keys in wanted.items():
            rows: dict[str, OnlineRow | None] = {}
            for key in keys:
                head = next(heads)
                if head is None:
                    rows[key] = None
                else:
                    ts, version, names, offset = head
                    rows[key] = OnlineRow(
                        values=dict(zip(names, flat[offset : offset + len(names)], strict=True)),
                        event_timestamp=from_epoch_us(ts),
                        version=version,
                    )
            out[view] = rows
        return out

    def read_matrix(
        self, *, view: str, keys: Sequence[str], features: Sequence[str]
    ) -> OnlineMatrix:
        """``features`` of ``keys`` in one round trip, with no per-feature Python objects."""
        names = list(features)
        fetched = self._fetch([self._key(view, key) for key in keys], f"read_matrix(view={view!r})")
        values = np.full((len(keys), len(names)), np.nan)
        found = np.zeros(len(keys), dtype=bool)
        event_ts_us = np.zeros(len(keys), dtype=np.int64)
        versions: list[str | None] = [None] * len(keys)
        rows: list[int] = []
        for i, head in enumerate(fetched.heads):
            if head is not None:
                event_ts_us[i], versions[i] = head[0], head[1]
                rows.append(i)
        found[rows] = True
        if fetched.layouts == 1:  # every found row has the same feature names: one gather
            layout = next(h[2] for h in fetched.heads if h is not None)
            out_cols, row_cols = _columns(layout, names)
            stored = fetched.values.reshape(len(rows), len(layout))
            values[np.ix_(rows, out_cols)] = stored[:, row_cols]
        else:
            for i in rows:
                _, _, layout, offset = fetched.heads[i]  # type: ignore[misc]
                out_cols, row_cols = _columns(layout, names)
                values[i, out_cols] = fetched.values[offset : offset + len(layout)][row_cols]
        return OnlineMatrix(
            keys=list(keys),
            features=names,
            values=values,
            found=found,
            versions=versions,
            event_ts_us=event_ts_us,
        )

    def newest_event_timestamp(self, view: str) -> datetime | None:
        """``max_ts`` of the view's meta hash: no scan. ``None`` when nothing is stored.

        It expires with the row that carries it; rows of older event times written later
        with a longer TTL may outlive it (then ``None`` while they remain).
        """
        with self._errors(f"newest_event_timestamp({view!r})"):
            raw = self._client.hget(self._meta_key(view), _MAX_TS)
        return None if raw is None else from_epoch_us(int(raw))

    def current_version(self, view: str) -> str | None:
        """``version`` of the view's meta hash (one HGET), set with ``max_ts``.

        ``None`` when nothing is stored, or when the meta hash was written before it
        carried a version. It expires with ``max_ts``.
        """
        with self._errors(f"current_version({view!r})"):
            raw = self._client.hget(self._meta_key(view), _VERSION)
        if raw is None:
            return None
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def teardown(self, view: str) -> None:
        """Delete every key of ``view`` (SCAN + UNLINK in batches) and its meta hash."""
        pattern = f"{_glob_escape(self.key_prefix)}:{_glob_escape(view)}:*"
        removed = 0
        with self._errors(f"teardown({view!r})"):
            batch: list[bytes] = []
            for key in self._client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= _UNLINK_CHUNK:
                    self._client.unlink(*batch)
                    removed += len(batch)
                    batch = []
            if batch:
                self._client.unlink(*batch)
                removed += len(batch)
            self._client.unlink(self._meta_key(view))
        logger.info("view %s: removed %d keys from %s", view, removed, self.url)

    def close(self) -> None:
        """Disconnect the connection pool."""
        self._client.close()
