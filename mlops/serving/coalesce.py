"""Entity lookups of concurrent requests, read from the online store together.

Each request awaits :meth:`CoalescingReader.read`; while one store read is in flight,
the lookups that arrive wait for it to finish and then go out together in the next one
(one ``read_many`` for all of them: on the event loop itself when the store has an
asyncio client, ``read_many_async`` (Redis), else in the thread pool). Under load that
is one Redis round trip for many requests instead of one each; read on the loop, no
thread waits for the GIL between Redis's reply and its parsing while the loop serves
other requests (in the thread pool that wait was most of an entity lookup's time under
load). When idle, a lookup goes out at once, alone. An error of a shared read (the
store unreachable) is every waiting request's error. Must be used from one event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence

import anyio.to_thread

from mlops.features.online.base import OnlineRow, OnlineStore

Rows = dict[str, Mapping[str, OnlineRow | None]]


class CoalescingReader:
    """``read_many`` for concurrent callers, batched while a read is in flight."""

    def __init__(
        self, store: OnlineStore, *, max_keys: int = 5_000, max_in_flight: int = 1
    ) -> None:
        self.store = store
        self.max_keys = max_keys
        self.max_in_flight = max_in_flight
        self._waiting: list[tuple[Mapping[str, Sequence[str]], asyncio.Future[Rows]]] = []
        self._draining = 0
        self.reads = 0  # store reads made (for tests and metrics)
        # A store with an asyncio client (Redis) is read on the loop itself.
        self._read_async: Callable[[dict[str, list[str]]], Awaitable[Rows]] | None = getattr(
            store, "read_many_async", None
        )

    async def read(self, requests: Mapping[str, Sequence[str]]) -> Rows:
        """``{view: keys}`` → ``{view: {key: row or None}}``, as :meth:`OnlineStore.read_many`."""
        future: asyncio.Future[Rows] = asyncio.get_running_loop().create_future()
        self._waiting.append((requests, future))
        if self._draining < self.max_in_flight:
            self._draining += 1
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch = self._take()
                merged: dict[str, dict[str, None]] = {}
                for requests, _ in batch:
                    for view, keys in requests.items():
                        merged.setdefault(view, {}).update(dict.fromkeys(keys))
                wanted = {view: list(keys) for view, keys in merged.items()}
                try:
                    self.reads += 1
                    if self._read_async is not None:
                        rows = await self._read_async(wanted)
                    else:
                        rows = await anyio.to_thread.run_sync(self.store.read_many, wanted)
                except Exception as exc:  # every waiter gets the shared read's error
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for _, future in batch:
                    if not future.done():
                        future.set_result(rows)
        finally:
            self._draining -= 1

    def _take(self) -> list[tuple[Mapping[str, Sequence[str]], asyncio.Future[Rows]]]:
        """The waiting lookups of the next read: all of them, up to ``max_keys`` keys
        (at least one lookup, whatever its size)."""
        taken, keys = 0, 0
        for requests, _ in self._waiting:
            size = sum(len(k) for k in requests.values())
            if taken and keys + size > self.max_keys:
                break
            taken += 1
            keys += size
        batch, self._waiting = self._waiting[:taken], self._waiting[taken:]
        return batch
