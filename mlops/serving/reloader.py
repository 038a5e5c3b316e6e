"""Follow the registry: serve the version aliased ``champion``, swapped in when it moves.

A :class:`Reloader` makes the only writes to a :class:`ModelSlot`, the one reference the
app serves from. :meth:`Reloader.check` resolves ``<serving.model_name>@champion``; when
that names a version other than the one served (or when forced), it loads and checks the
version off the request path and swaps it in with one reference assignment. A request
reads ``slot.model`` once and uses that object to the end, so a swap never fails or
stalls it: the old model finishes what it started and goes when nothing holds it.

A check, step by step (each failing step refuses the version with a reason):

1. resolve the alias: none means ``no_champion`` (the current model keeps serving); a
   registry that cannot be read is a refusal with no version;
2. :func:`~mlops.serving.runtime.load_model`: the contract tags, the download (or the
   cache), the sha256 of ``model.onnx`` against ``onnx_sha256``, the graph's signature,
   a warm-up inference;
3. the feature view versions: for each view the model was trained on, the online store's
   :meth:`~mlops.features.online.base.OnlineStore.current_version` must be ``None``
   (nothing written yet) or the model's version. An unreachable store refuses too, as a
   model that cannot be checked does not replace one that serves; but with nothing
   served yet the model comes in unchecked (logged), so that inline-feature requests go
   on while the store is down (the serving contract), and entity lookups still refuse
   rows of another version one by one;
4. the swap: ``slot.model = model``, then ``slot.error = None``.

A refusal is logged, counted in :attr:`Reloader.refusals` and passed to ``on_refused``.
A version refused for what it is (an :class:`~mlops.errors.IntegrityError`: a wrong
sha256, a missing tag, a bad graph; or a model that fails its warm-up) is remembered and
not tried again until a forced check. A version refused for where it would run (the
online store holds another view version or is unreachable, the registry or the artifact
store cannot be read) is tried again at every poll, its loaded model kept meanwhile, so
that it comes in once the view is rematerialized or the store is back; such a refusal
repeated with the same reason is counted and logged once.

How a move is noticed: a daemon thread checks every ``serving.reload_poll_s``. With
``serving.listen_events`` and a Prefect server (``prefect.api_url``), a second thread
subscribes to the Prefect event ``mlops.model.promoted`` of resource
``mlops.model.<name>`` and wakes the poller at once. Embedded mode (no Prefect server
URL: the ephemeral API lives only inside the process that runs a flow) has no server to
subscribe to, so there the app follows by polling and forced checks alone.
``POST /model/reload`` is :meth:`Reloader.check` with ``force=True``; rolling back is
promoting the previous version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlops import events
from mlops.errors import FeatureStoreError, IntegrityError, MlopsError, StoreUnavailableError
from mlops.features.online.base import OnlineStore
from mlops.registry import CHAMPION, version_by_alias
from mlops.serving.runtime import LoadedModel, load_model
from mlops.settings import Settings

if TYPE_CHECKING:
    from prefect.events.clients import PrefectEventSubscriber

logger = logging.getLogger(__name__)

NOT_LOADED = "the champion is not loaded yet"
_EVENTS_BACKOFF_S = (1.0, 60.0)
"""First and longest wait before reconnecting to the Prefect event stream."""
_JOIN_S = 10.0


def model_cache_dir(settings: Settings) -> Path:
    """Where downloaded model versions are kept: ``<home>/serving/models``."""
    return settings.home / "serving" / "models"


@dataclass(frozen=True)
class ReloadOutcome:
    """What one check did.

    ``version`` is the version considered (the champion; ``None`` when there is none or
    the registry could not be read), ``serving`` the version served after the check, and
    ``reason`` why it was refused or why there is no champion.
    """

    status: Literal["loaded", "unchanged", "refused", "no_champion"]
    version: str | None
    serving: str | None
    reason: str | None = None


class ModelSlot:
    """What the app serves: one reference, read once per request.

    Only a :class:`Reloader` writes it. A request reads ``model`` once and uses that
    object throughout. When ``model`` is ``None``, ``error`` says why (for 503s); as the
    first model arrives, ``error`` may already be ``None``, so read ``model`` first.
    """

    __slots__ = ("error", "model")

    def __init__(self, model: LoadedModel | None = None, error: str | None = None) -> None:
        self.model = model
        self.error = None if model is not None else error or NOT_LOADED

    def __repr__(self) -> str:
        version = None if self.model is None else self.model.version
        return f"ModelSlot(version={version!r}, error={self.error!r})"


@dataclass(frozen=True)
class _Refusal:
    reason: str
    retry: bool
    """The environment, not the version, was at fault: try again at every poll."""
    unchecked: bool = False
    """The online store could not be asked: the views are unknown, not wrong."""
    error: BaseException | None = field(default=None, compare=False)


class Reloader:
    """Keeps ``slot`` on the registry's champion of ``settings.serving.model_name``.

    ``on_loaded(model)`` and ``on_refused(version, reason)`` run in the checking thread
    after a swap or a refusal (metrics, logs); keep them quick. An exception they raise
    is logged and does not undo the swap.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        client: MlflowClient,
        store: OnlineStore,
        slot: ModelSlot,
        on_loaded: Callable[[LoadedModel], None] | None = None,
        on_refused: Callable[[str, str], None] | None = None,
    ) -> None:
        self._settings = settings
        self._name = settings.serving.model_name
        self._client = client
        self._store = store
        self._slot = slot
        self._on_loaded = on_loaded
        self._on_refused = on_refused
        self._cache_dir = model_cache_dir(settings)

        self._lock = threading.Lock()  # one check at a time; never taken by requests
        self._refused: dict[str, _Refusal] = {}
        self._pending: LoadedModel | None = None  # loaded, refused for a retryable reason
        self._no_champion_warned = False
        self._registry_error: str | None = None
        self._loads = 0
        self._refusals = 0
        self._last_check: datetime | None = None
        self._last_error: str | None = None

        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listener_lock = threading.Lock()
        self._listener: tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]] | None = None

    def __repr__(self) -> str:
        return f"Reloader(model={self._name!r}, slot={self._slot!r})"

    @property
    def loads(self) -> int:
        """Models swapped in since start."""
        return self._loads

    @property
    def refusals(self) -> int:
        """Versions refused since start (a refusal repeated by polls counts once)."""
        return self._refusals

    @property
    def last_check(self) -> datetime | None:
        """When the last check ended (UTC)."""
        return self._last_check

    @property
    def last_error(self) -> str | None:
        """The reason of the last check when it refused or found no champion, else None."""
        return self._last_error

    # --- checking ---------------------------------------------------------------------

    def check(self, *, force: bool = False) -> ReloadOutcome:
        """Resolve the champion and, if it is not the version served (or ``force``), load,
        check and swap it in. Runs in the caller's thread; checks run one at a time."""
        with self._lock:
            try:
                outcome = self._check(force=force)
            finally:
                self._last_check = datetime.now(UTC)
            self._last_error = (
                outcome.reason if outcome.status in ("refused", "no_champion") else None
            )
        return outcome

    def _check(self, *, force: bool) -> ReloadOutcome:
        served = self._slot.model
        serving = None if served is None else served.version
        try:
            champion = version_by_alias(self._client, self._name, CHAMPION)
        except (MlflowException, OSError) as exc:
            return self._registry_unreadable(exc, serving=serving)
        self._registry_error = None
        if champion is None:
            return self._no_champion(serving=serving)
        self._no_champion_warned = False

        version = str(champion.version)
        if version == serving and not force:
            self._pending = None
            return ReloadOutcome("unchanged", version=version, serving=serving)
        known = self._refused.get(version)
        if known is not None and not known.retry and not force:
            return ReloadOutcome("refused", version=version, serving=serving, reason=known.reason)

        model, refusal = self._load(version, reuse=not force)
        if model is not None:
            version = model.version  # the alias may have moved again meanwhile
            refusal = self._check_views(model)
            if refusal is not None and refusal.unchecked and served is None:
                logger.warning(
                    "serving model %s v%s with its feature view versions unchecked: %s",
                    self._name,
                    version,
                    refusal.reason,
                )
                refusal = None
        if refusal is not None:
            self._pending = model if refusal.retry else None
            return self._refuse(version, refusal, force=force, serving=serving)
        assert model is not None
        return self._swap(model, previous=serving)

    def _load(self, version: str, *, reuse: bool) -> tuple[LoadedModel | None, _Refusal | None]:
        """``load_model`` for the champion, or the model kept from a retryable refusal."""
        pending, self._pending = self._pending, None
        if reuse and pending is not None and pending.version == version:
            return pending, None
        try:
            model = load_model(
                client=self._client, name=self._name, alias=CHAMPION, cache_dir=self._cache_dir
            )
        except IntegrityError as exc:
            return None, _Refusal(f"{type(exc).__name__}: {exc}", retry=False, error=exc)
        except (MlopsError, MlflowException, OSError) as exc:
            # The registry or the artifact store cannot be read, or a tag is malformed:
            # tried again at the next poll.
            return None, _Refusal(f"{type(exc).__name__}: {exc}", retry=True, error=exc)
        except Exception as exc:  # onnxruntime's own errors (warm-up): the model is at fault
            return None, _Refusal(f"{type(exc).__name__}: {exc}", retry=False, error=exc)
        return model, None

    def _check_views(self, model: LoadedModel) -> _Refusal | None:
        """A refusal unless the online store holds, for every view of the model, nothing yet
        or the version the model was trained on."""
        for ref in model.feature_views:
            try:
                stored = self._store.current_version(ref.name)
            except StoreUnavailableError as exc:
                return _Refusal(
                    f"the online store is unreachable, so feature view {ref.name!r} cannot be "
                    f"checked: {exc}",
                    retry=True,
                    unchecked=True,
                )
            except FeatureStoreError as exc:
                return _Refusal(f"cannot check feature view {ref.name!r}: {exc}", retry=True)
            if stored is not None and stored != ref.version:
                return _Refusal(
                    f"the online store holds feature view {ref.name!r} at version {stored}, "
                    f"but model {model.name} v{model.version} was trained on version "
                    f"{ref.version}: rematerialize the view, or promote a model trained on "
                    f"{stored}",
                    retry=True,
                )
        return None

    def _swap(self, model: LoadedModel, *, previous: str | None) -> ReloadOutcome:
        self._slot.model = model  # the swap: one reference assignment
        self._slot.error = None
        self._refused.pop(model.version, None)
        self._loads += 1
        logger.info(
            "serving model %s v%s (before: %s)",
            self._name,
            model.version,
            "nothing" if previous is None else f"v{previous}",
        )
        self._notify(self._on_loaded, model)
        return ReloadOutcome("loaded", version=model.version, serving=model.version)

    def _refuse(
        self, version: str, refusal: _Refusal, *, force: bool, serving: str | None
    ) -> ReloadOutcome:
        before = self._refused.get(version)
        self._refused[version] = replace(refusal, error=None)  # its traceback pins frames
        if not force and before is not None and before.reason == refusal.reason:
            logger.debug("model %s v%s still refused: %s", self._name, version, refusal.reason)
        else:
            self._refusals += 1
            logger.error(
                "refused model %s v%s (serving %s): %s",
                self._name,
                version,
                "nothing" if serving is None else f"v{serving}",
                refusal.reason,
                exc_info=refusal.error,
            )
            self._notify(self._on_refused, version, refusal.reason)
        if serving is None:
            self._slot.error = f"model {self._name} v{version} was refused: {refusal.reason}"
        return ReloadOutcome("refused", version=version, serving=serving, reason=refusal.reason)

    def _no_champion(self, *, serving: str | None) -> ReloadOutcome:
        self._pending = None
        reason = f"no version of model {self._name!r} has alias {CHAMPION!r}"
        if not self._no_champion_warned:
            self._no_champion_warned = True
            logger.warning(
                "%s; %s",
                reason,
                "nothing to serve yet" if serving is None else f"still serving v{serving}",
            )
        if serving is None:
            self._slot.error = f"{reason}: run `mlops demo` or the train and evaluate flows"
        return ReloadOutcome("no_champion", version=None, serving=serving, reason=reason)

    def _registry_unreadable(self, exc: Exception, *, serving: str | None) -> ReloadOutcome:
        reason = f"cannot read the champion of model {self._name!r} from the registry: {exc}"
        if reason != self._registry_error:
            self._registry_error = reason
            logger.warning("%s", reason)
        if serving is None:
            self._slot.error = reason
        return ReloadOutcome("refused", version=None, serving=serving, reason=reason)

    def _notify(self, callback: Callable[..., None] | None, *args: object) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:  # a metrics hook never undoes a swap nor stops the poller
            logger.exception("reloader callback %r failed", callback)

    # --- following --------------------------------------------------------------------

    def start(self) -> None:
        """Start the poller (its first check is at once) and, with a Prefect server and
        ``serving.listen_events``, the event listener. Both are daemon threads."""
        if self._threads:
            return
        self._stop.clear()
        self._threads.append(
            threading.Thread(target=self._poll, name=f"reloader-poll-{self._name}", daemon=True)
        )
        serving = self._settings.serving
        if serving.listen_events and self._settings.prefect.api_url:
            self._threads.append(
                threading.Thread(
                    target=self._listen, name=f"reloader-events-{self._name}", daemon=True
                )
            )
        elif serving.listen_events:
            logger.info(
                "no Prefect server configured (embedded mode): following %s@%s by polling "
                "every %ss",
                self._name,
                CHAMPION,
                serving.reload_poll_s,
            )
        for thread in self._threads:
            thread.start()

    def wake(self) -> None:
        """Ask the poller to check now; returns at once."""
        self._wake.set()

    def stop(self) -> None:
        """Stop both threads; a load in progress finishes first (waited for up to 10 s)."""
        self._stop.set()
        self._wake.set()
        with self._listener_lock:
            listener = self._listener
        if listener is not None:
            loop, task = listener
            with contextlib.suppress(RuntimeError):  # its loop has just closed
                loop.call_soon_threadsafe(task.cancel)
        for thread in self._threads:
            thread.join(timeout=_JOIN_S)
            if thread.is_alive():
                logger.warning("%s did not stop within %ss", thread.name, _JOIN_S)
        self._threads = []

    def _poll(self) -> None:
        interval = self._settings.serving.reload_poll_s
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.check()
            except Exception:  # a bug in one check never ends the following
                logger.exception("checking the champion of model %s failed", self._name)
            if self._stop.is_set():
                break
            self._wake.wait(interval)

    def _listen(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(self._follow_events())

    async def _follow_events(self) -> None:
        """Wake the poller on each ``mlops.model.promoted`` of this model; reconnect with
        backoff whenever the stream fails or ends, until :meth:`stop` cancels this task."""
        task = asyncio.current_task()
        assert task is not None
        with self._listener_lock:
            self._listener = (asyncio.get_running_loop(), task)
        url = self._settings.prefect.api_url
        delay = _EVENTS_BACKOFF_S[0]
        try:
            while not self._stop.is_set():
                try:
                    async with self._events_subscriber() as subscriber:
                        delay = _EVENTS_BACKOFF_S[0]
                        logger.info(
                            "listening for %s of model %s at %s",
                            events.MODEL_PROMOTED,
                            self._name,
                            url,
                        )
                        async for event in subscriber:
                            logger.info(
                                "event %s of %s (%s): checking the champion now",
                                event.event,
                                event.resource.id,
                                event.payload,
                            )
                            self.wake()
                    logger.info("the Prefect event stream at %s ended", url)
                except Exception as exc:  # down, refused, auth: polling goes on meanwhile
                    logger.warning(
                        "Prefect event stream at %s failed (%s: %s); reconnecting in %.0fs",
                        url,
                        type(exc).__name__,
                        exc,
                        delay,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _EVENTS_BACKOFF_S[1])
        finally:
            with self._listener_lock:
                self._listener = None

    def _events_subscriber(self) -> PrefectEventSubscriber:
        """A subscriber to this model's promotions on the configured Prefect server."""
        from prefect.events.clients import get_events_subscriber
        from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
        from prefect.settings import PREFECT_API_URL, temporary_settings

        resource_id = events.model_resource(self._name)["prefect.resource.id"]
        wanted = EventFilter(
            event=EventNameFilter(name=[events.MODEL_PROMOTED]),
            resource=EventResourceFilter(id=[resource_id]),
        )
        with temporary_settings(updates={PREFECT_API_URL: self._settings.prefect.api_url}):
            return get_events_subscriber(filter=wanted, reconnect_on_clean_close=True)
