"""Redis online store: one hash per entity, with a TTL.

Key ``{prefix}:{view}:{entity}``; fields: each feature name → ``repr(float)``, ``__ts`` →
event time in epoch microseconds (UTC), ``__v`` → the view version. A write replaces the
whole hash and sets ``EXPIRE`` in one Lua script that first compares ``__ts``, so an
older event never overwrites a newer one. Writes go in pipelines of ~1000 entities; a
read is one pipeline round trip whatever the number of keys.

Unreachable servers and timeouts raise :class:`~mlops.errors.StoreUnavailableError`,
other Redis errors :class:`~mlops.errors.FeatureStoreError`, each naming the URL (its
password masked) and the operation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit

import pandas as pd
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from mlops.errors import FeatureStoreError, StoreUnavailableError
from mlops.features.online import from_epoch_us, latest_per_entity, ttl_seconds
from mlops.features.online.base import OnlineRow

logger = logging.getLogger(__name__)

_WRITE_CHUNK = 1000
_UNLINK_CHUNK = 500
_TS = "__ts"
_VERSION = "__v"

# KEYS[1]: the entity's hash. ARGV: event_ts_us, ttl_s, then field/value pairs.
_WRITE_LUA = """
local stored = redis.call('HGET', KEYS[1], '__ts')
if stored and tonumber(stored) > tonumber(ARGV[1]) then
    return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


def redact_url(url: str) -> str:
    """``url`` with its password masked and its query dropped (it may hold one)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis ``MATCH`` pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


class RedisOnlineStore:
    """Online store on the Redis server at ``url``; connects on first use."""

    def __init__(
        self, url: str, *, key_prefix: str = "mlops", socket_timeout_s: float = 2.0
    ) -> None:
        self.url = redact_url(url)
        self.key_prefix = key_prefix
        # Fail fast: one quick retry (a stale pooled connection), not redis-py's ten.
        self._client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 1),
        )
        self._write = self._client.register_script(_WRITE_LUA)

    def __repr__(self) -> str:
        return f"RedisOnlineStore({self.url!r}, key_prefix={self.key_prefix!r})"

    def _key(self, view: str, entity: str) -> str:
        return f"{self.key_prefix}:{view}:{entity}"

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
        latest = latest_per_entity(frame, entity=entity, timestamp=timestamp, features=features)
        ttl_s = ttl_seconds(ttl)
        names = list(features)
        written = 0
        with self._errors(f"write_batch(view={view!r})"):
            for start in range(0, len(latest.keys), _WRITE_CHUNK):
                stop = start + _WRITE_CHUNK
                pipe = self._client.pipeline(transaction=False)
                for key, ts, row in zip(
                    latest.keys[start:stop],
                    latest.event_ts_us[start:stop],
                    latest.values[start:stop],
                    strict=True,
                ):
                    args: list[str | int] = [ts, ttl_s, _TS, ts, _VERSION, version]
                    for name, value in zip(names, row, strict=True):
                        args += (name, repr(value))
                    self._write(keys=[self._key(view, key)], args=args, client=pipe)
                written += sum(pipe.execute())
        logger.debug("view %s: wrote %d of %d entities", view, written, len(latest.keys))
        return written

    def read(self, *, view: str, keys: Sequence[str]) -> Mapping[str, OnlineRow | None]:
        """Rows for ``keys`` in one round trip; ``None`` where absent or expired."""
        out: dict[str, OnlineRow | None] = dict.fromkeys(keys)
        unique = list(out)
        if not unique:
            return out
        with self._errors(f"read(view={view!r})"):
            pipe = self._client.pipeline(transaction=False)
            for key in unique:
                pipe.hgetall(self._key(view, key))
            replies = pipe.execute()
        for key, fields in zip(unique, replies, strict=True):
            if not fields:
                continue
            try:
                event_ts = int(fields.pop(_TS))
                version = fields.pop(_VERSION)
                values = {name: float(value) for name, value in fields.items()}
            except (KeyError, ValueError) as exc:
                raise FeatureStoreError(
                    f"Redis online store at {self.url}: {self._key(view, key)} is not an "
                    f"online row ({exc!r})"
                ) from exc
            out[key] = OnlineRow(
                values=values, event_timestamp=from_epoch_us(event_ts), version=version
            )
        return out

    def teardown(self, view: str) -> None:
        """Delete every key of ``view`` (SCAN + UNLINK in batches)."""
        pattern = f"{_glob_escape(self.key_prefix)}:{_glob_escape(view)}:*"
        removed = 0
        with self._errors(f"teardown({view!r})"):
            batch: list[str] = []
            for key in self._client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= _UNLINK_CHUNK:
                    self._client.unlink(*batch)
                    removed += len(batch)
                    batch = []
            if batch:
                self._client.unlink(*batch)
                removed += len(batch)
        logger.info("view %s: removed %d keys from %s", view, removed, self.url)

    def close(self) -> None:
        """Disconnect the connection pool."""
        self._client.close()
