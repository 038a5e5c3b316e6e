"""Entity lookups of concurrent requests, read from the online store together; and their
small feature matrices, scored together.

Each request awaits :meth:`CoalescingReader.read`; while one store read is in flight,
the lookups that arrive wait for it to finish and then go out together in the next one
(one ``read_many`` for all of them: on the event loop itself when the store has an
asyncio client, ``read_many_async`` (Redis), else in the thread pool). Under load that
is one Redis round trip for many requests instead of one each; read on the loop, no
thread waits for the GIL between Redis's reply and its parsing while the loop serves
other requests (in the thread pool that wait was most of an entity lookup's time under
load). When idle, a lookup goes out at once, alone. An error of a shared read (the
store unreachable) is every waiting request's error. Must be used from one event loop.

:class:`CoalescingScorer` does the same for inference: the few-row matrices that
concurrent requests hand it in one turn of the event loop go through one
``InferenceSession.run``. A run of a tiny model costs about the same for one row as for
sixteen, and in a busy server most of it is the CPU fetching onnxruntime's code and data
back into its caches (on 2 cores: 11 µs in a tight loop, 40-60 µs between requests).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

import anyio.to_thread
import numpy as np

from mlops.features.online.base import OnlineRow, OnlineStore
from mlops.serving.runtime import LoadedModel

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


Scored = tuple[LoadedModel, np.ndarray, "asyncio.Future[np.ndarray]"]


class CoalescingScorer:
    """``model.predict`` for concurrent callers: the matrices handed in during one turn of
    the event loop are scored in one run per model, up to ``max_rows`` rows a run.

    ``observe(model, seconds)`` is told the time of each run. A run that fails is retried
    for each caller alone, so that one caller's bad matrix fails only that caller.
    Must be used from one event loop.
    """

    def __init__(
        self,
        *,
        max_rows: int = 256,
        observe: Callable[[LoadedModel, float], None] | None = None,
    ) -> None:
        self.max_rows = max_rows
        self.observe = observe
        self._waiting: list[Scored] = []
        self._scheduled = False
        self.runs = 0  # InferenceSession runs made (for tests)

    async def score(self, model: LoadedModel, matrix: np.ndarray) -> np.ndarray:
        """Probabilities [N, 2] of ``matrix`` [N, F], as ``model.predict(matrix)``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._waiting.append((model, matrix, future))
        if not self._scheduled:
            # After the callbacks already due in this turn: the other requests that
            # arrived with this one reach score() first.
            self._scheduled = True
            loop.call_soon(self._run_waiting)
        return await future

    def _run_waiting(self) -> None:
        self._scheduled = False
        waiting, self._waiting = self._waiting, []
        group: list[Scored] = []
        rows = 0
        for item in waiting:
            size = len(item[1])
            if group and (item[0] is not group[0][0] or rows + size > self.max_rows):
                self._run(group)
                group, rows = [], 0
            group.append(item)
            rows += size
        if group:
            self._run(group)

    def _run(self, group: list[Scored]) -> None:
        model = group[0][0]
        try:
            if len(group) == 1:
                probabilities = self.predict(model, group[0][1])
            else:
                probabilities = self.predict(model, np.concatenate([m for _, m, _ in group]))
        except Exception as exc:
            if len(group) == 1:
                _settle(group[0][2], exc)
            else:  # one caller's matrix fails only that caller
                for item in group:
                    self._run([item])
            return
        start = 0
        for _, matrix, future in group:
            end = start + len(matrix)
            _settle(future, probabilities[start:end])
            start = end

    def predict(self, model: LoadedModel, matrix: np.ndarray) -> np.ndarray:
        """``model.predict(matrix)`` alone, now, its time told to ``observe`` (from any
        thread: the app scores large matrices in the thread pool with it)."""
        started = time.perf_counter()
        probabilities = model.predict(matrix)
        self.runs += 1
        if self.observe is not None:
            self.observe(model, time.perf_counter() - started)
        return probabilities


def _settle(future: asyncio.Future[np.ndarray], outcome: np.ndarray | BaseException) -> None:
    if future.done():  # the caller went away (cancelled)
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
