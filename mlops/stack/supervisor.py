"""Start the stack's services in dependency order, watch them, stop them in reverse.

Each service runs in its own session (process group), so a stop reaches the processes
it started itself (MLflow's workers, the runner's flow runs), and Ctrl-C in the terminal
reaches only ``mlops up``, which then stops the services in order: console, app, runner
(SIGINT: it pauses its schedules while the Prefect API is still up), MLflow, Prefect.
A stop asks, waits ``grace_s``, then kills. On Linux each child also gets SIGTERM if
``mlops up`` itself dies (``PR_SET_PDEATHSIG``): no orphans even after ``kill -9``.

::

    with Supervisor(stack) as supervisor:
        supervisor.start()   # raises StackError naming the service and its log file
        supervisor.wait()    # until Ctrl-C / SIGTERM, or a service exits (StackError)
    # services stopped here, the state file says "stopped"
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType, TracebackType
from typing import IO, Any

from mlops.errors import StackError
from mlops.stack.health import Health, check
from mlops.stack.spec import PROJECT_DIR, ServiceSpec, Stack
from mlops.stack.state import group_members, proc_start, write_state

logger = logging.getLogger(__name__)

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_PR_SET_PDEATHSIG = 1


@dataclass
class Running:
    """A started service: its process, log file and when it started."""

    spec: ServiceSpec
    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    started_at: datetime
    health: Health | None = None


def _child_setup(libc: Any) -> Callable[[], None]:
    """What a child runs between fork and exec: take the default stop signals back (the
    parent blocks them while it starts a child) and die with the parent (Linux)."""

    def setup() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return setup


def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - a libc without prctl
        return None


class Supervisor:
    """Runs the services of ``stack``: :meth:`start`, :meth:`wait`, :meth:`stop`."""

    def __init__(
        self,
        stack: Stack,
        *,
        startup_timeout_s: float = 180.0,
        grace_s: float = 15.0,
        poll_s: float = 0.5,
        on_healthy: Callable[[ServiceSpec, Health], None] | None = None,
        on_stopped: Callable[[ServiceSpec, int | None, float], None] | None = None,
    ) -> None:
        names = {spec.name for spec in stack.services}
        for spec in stack.services:
            unknown = set(spec.needs) - names
            if unknown:
                raise StackError(f"{spec.name} needs unknown services {sorted(unknown)}")
        self.stack = stack
        self.startup_timeout_s = startup_timeout_s
        self.grace_s = grace_s
        self.poll_s = poll_s
        self.on_healthy = on_healthy
        self.on_stopped = on_stopped
        self.running: dict[str, Running] = {}
        self._hurry = False
        self._libc = _libc()
        self._signals = contextlib.ExitStack()
        now = datetime.now(UTC)
        self._state: dict[str, Any] = {
            "status": "starting",
            "supervisor_pid": os.getpid(),
            "supervisor_start": proc_start(os.getpid()),
            "started_at": now.isoformat(),
            "stopped_at": None,
            "error": None,
            "backends": stack.backends,
            "services": {},
        }

    # --- context manager: whatever happens inside, the services are stopped -------------
    def __enter__(self) -> Supervisor:
        self._save()
        self._signals.enter_context(_sigterm_interrupts())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and not isinstance(exc, KeyboardInterrupt):
            self._state["error"] = str(exc)
        try:
            self.stop()
        finally:
            self._signals.close()

    # --- start --------------------------------------------------------------------------
    def start(self) -> dict[str, Health]:
        """Start every service once those it needs are healthy; wait until all are.

        Raises :class:`StackError` (naming the service and its log file) when one exits
        or is not healthy within ``startup_timeout_s`` of its start.
        """
        pending = list(self.stack.services)
        healthy: dict[str, Health] = {}
        deadlines: dict[str, float] = {}
        while pending or deadlines:
            for spec in list(pending):
                if all(need in healthy for need in spec.needs):
                    pending.remove(spec)
                    self._launch(spec)
                    deadlines[spec.name] = time.monotonic() + self.startup_timeout_s
            for name in list(deadlines):
                run = self.running[name]
                code = run.proc.poll()
                if code is not None:
                    raise StackError(
                        f"{name} exited with code {code} while starting; see its log "
                        f"{run.spec.log_path}",
                        service=name,
                        log_path=run.spec.log_path,
                    )
                health = check(run.spec.health, since=run.started_at)
                if health.ok:
                    run.health = healthy[name] = health
                    del deadlines[name]
                    logger.info("%s is healthy: %s", name, health.detail)
                    if self.on_healthy:
                        self.on_healthy(run.spec, health)
                elif time.monotonic() > deadlines[name]:
                    raise StackError(
                        f"{name} was not healthy {self.startup_timeout_s:.0f}s after it "
                        f"started ({run.spec.health.url}: {health.detail}); see its log "
                        f"{run.spec.log_path}",
                        service=name,
                        log_path=run.spec.log_path,
                    )
            if deadlines:
                time.sleep(self.poll_s)
        self._state["status"] = "running"
        self._save()
        return healthy

    def _launch(self, spec: ServiceSpec) -> None:
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = spec.log_path.open("ab")
        started_at = datetime.now(UTC)
        log.write(
            f"\n--- {started_at.isoformat()} mlops up starts {spec.name}: "
            f"{shlex.join(spec.command)}\n".encode()
        )
        log.flush()
        # no Ctrl-C between the fork and the record: a started child is always stopped
        with _signals_blocked():
            try:
                proc = subprocess.Popen(
                    spec.command,
                    cwd=PROJECT_DIR,
                    env={**os.environ, **self.stack.env, **spec.env},
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_child_setup(self._libc),
                )
            except OSError as exc:
                log.close()
                raise StackError(
                    f"{spec.name} could not start ({shlex.join(spec.command)}): {exc}",
                    service=spec.name,
                    log_path=spec.log_path,
                ) from exc
            self.running[spec.name] = Running(spec, proc, log, started_at)
            self._state["services"][spec.name] = {
                "pid": proc.pid,
                "proc_start": proc_start(proc.pid),
                "url": spec.url,
                "log": str(spec.log_path),
                "started_at": started_at.isoformat(),
                "health": {"kind": spec.health.kind, "url": spec.health.url},
                "command": spec.command,
            }
            self._save()
        logger.info("started %s (pid %s), log %s", spec.name, proc.pid, spec.log_path)

    # --- run ----------------------------------------------------------------------------
    def wait(self) -> None:
        """Block until a service exits (a :class:`StackError` naming it and its log) or
        the process is interrupted (KeyboardInterrupt; inside ``with``, SIGTERM too)."""
        while True:
            for name, run in self.running.items():
                code = run.proc.poll()
                if code is not None:
                    raise StackError(
                        f"{name} exited with code {code}; see its log {run.spec.log_path}",
                        service=name,
                        log_path=run.spec.log_path,
                    )
            time.sleep(self.poll_s)

    # --- stop ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop every started service, the last started first; a second Ctrl-C (or
        SIGTERM) kills those still stopping at once."""
        if not self.running:
            self._finish()
            return
        self._state["status"] = "stopping"
        self._save()
        with self._signals_hurry():
            for name in reversed(list(self.running)):
                run = self.running[name]
                began = time.monotonic()
                code = self._stop_one(run)
                run.log.close()
                if self.on_stopped:
                    self.on_stopped(run.spec, code, time.monotonic() - began)
        self.running.clear()
        self._finish()

    def _finish(self) -> None:
        self._state["status"] = "failed" if self._state["error"] else "stopped"
        self._state["stopped_at"] = datetime.now(UTC).isoformat()
        self._save()

    def _stop_one(self, run: Running) -> int | None:
        """Ask ``run``'s process group to stop, wait, kill what is left; its exit code."""
        proc, pgid = run.proc, run.proc.pid  # a session leader: its pid is the group id
        if proc.poll() is None:
            _signal_group(pgid, getattr(signal, run.spec.stop_signal))
            deadline = time.monotonic() + self.grace_s
            while proc.poll() is None and time.monotonic() < deadline and not self._hurry:
                time.sleep(0.1)
            if proc.poll() is None:
                logger.warning("%s did not stop in %.0fs: killed", run.spec.name, self.grace_s)
                _signal_group(pgid, signal.SIGKILL)
                proc.wait()
        # what the service started itself may outlive it: ask, then kill
        if group_members(pgid):
            _signal_group(pgid, signal.SIGTERM)
            deadline = time.monotonic() + min(self.grace_s, 5.0)
            while group_members(pgid) and time.monotonic() < deadline and not self._hurry:
                time.sleep(0.1)
            _signal_group(pgid, signal.SIGKILL)
        return proc.returncode

    @contextlib.contextmanager
    def _signals_hurry(self) -> Iterator[None]:
        """While stopping, Ctrl-C / SIGTERM mean "kill now", not an exception."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def hurry(signum: int, frame: FrameType | None) -> None:
            self._hurry = True

        previous = {sig: signal.signal(sig, hurry) for sig in _STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _save(self) -> None:
        write_state(self.stack.state_path, self._state)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM interrupts like Ctrl-C (so ``kill <pid>`` of ``mlops up`` stops cleanly)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
