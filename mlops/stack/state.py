"""The state file of the stack, ``<home>/stack/state.json``, and what ``status`` makes of it.

``mlops up`` writes it as services start, once all are healthy and when they stop::

    {"status": "running", "supervisor_pid": 4242, "started_at": "...", "stopped_at": null,
     "error": null, "backends": {"prefect database": "sqlite:///..."},
     "services": {"prefect": {"pid": 4250, "proc_start": 123456, "url": "http://...",
                              "log": "<home>/logs/prefect.log", "started_at": "...",
                              "health": {"kind": "http", "url": "http://.../api/health"},
                              "command": ["prefect", "server", "start", ...]}}}

``proc_start`` (the process's start time in clock ticks, from ``/proc``) tells a live
service from an unrelated process that got its pid later.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from mlops.errors import StackError
from mlops.stack.health import Health, check
from mlops.stack.spec import HealthCheck, state_path


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, default=str))
    os.replace(tmp, path)


def read_state(home: Path) -> dict[str, Any] | None:
    """The state file of ``home``, or None when no stack was ever started from it."""
    path = state_path(home)
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, OSError) as exc:
        raise StackError(f"the stack's state file {path} cannot be read: {exc}") from exc


def proc_start(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, from ``/proc``); None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ')'
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])  # field 22 of stat; fields[0] is field 3


def is_alive(pid: int | None, started: int | None = None) -> bool:
    """``pid`` runs (not a zombie) and, if ``started`` is known, is the same process."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): the signal test is all there is
    if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
        return False
    return started is None or proc_start(pid) == started


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid`` (Linux ``/proc``; elsewhere
    ``[pgid]`` while the group exists)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


@dataclass(frozen=True)
class ServiceStatus:
    """One service as ``status`` sees it now."""

    name: str
    pid: int | None
    url: str
    log: str
    alive: bool
    health: Health | None
    """None when the process is not alive (nothing to ask)."""

    @property
    def state(self) -> str:
        if not self.alive:
            return "stopped"
        assert self.health is not None
        return "healthy" if self.health.ok else "unhealthy"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "pid": self.pid,
            "url": self.url,
            "log": self.log,
            "alive": self.alive,
            "healthy": bool(self.health and self.health.ok),
            "detail": self.health.detail if self.health else None,
            **(self.health.facts if self.health else {}),
        }


@dataclass(frozen=True)
class StackReport:
    """The stack of one home as ``status`` sees it now."""

    home: Path
    status: str
    """``running``, ``starting``, ``stopping``, ``stopped``, ``failed``, ``not started`` or
    ``supervisor gone`` (the ``mlops up`` process died without stopping its services)."""
    supervisor_pid: int | None
    started_at: str | None
    stopped_at: str | None
    error: str | None
    services: list[ServiceStatus]
    backends: dict[str, str]

    @property
    def healthy(self) -> bool:
        """Running, and every service alive and healthy."""
        return (
            self.status == "running"
            and bool(self.services)
            and all(s.alive and s.health and s.health.ok for s in self.services)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "home": str(self.home),
            "status": self.status,
            "healthy": self.healthy,
            "supervisor_pid": self.supervisor_pid,
            "started_at": self.started_at,
            "stopped_at": self.stopped_at,
            "error": self.error,
            "services": [s.as_dict() for s in self.services],
            "backends": self.backends,
        }


def report(home: Path, *, timeout_s: float = 2.0) -> StackReport:
    """Read the state file of ``home`` and check every service: alive? healthy?"""
    state = read_state(home)
    if state is None:
        return StackReport(home, "not started", None, None, None, None, [], {})
    supervisor = state.get("supervisor_pid")
    status = str(state.get("status", "stopped"))
    if status in ("starting", "running", "stopping") and not is_alive(
        supervisor, state.get("supervisor_start")
    ):
        status = "supervisor gone"
    started_at = state.get("started_at")
    since = datetime.fromisoformat(started_at) if started_at else None
    services = []
    for name, svc in state.get("services", {}).items():
        alive = is_alive(svc.get("pid"), svc.get("proc_start"))
        health = None
        if alive:
            spec = HealthCheck(**svc["health"])
            svc_since = (
                datetime.fromisoformat(svc["started_at"]) if svc.get("started_at") else since
            )
            health = check(spec, since=svc_since, timeout_s=timeout_s)
        services.append(
            ServiceStatus(
                name=name,
                pid=svc.get("pid"),
                url=svc.get("url", ""),
                log=svc.get("log", ""),
                alive=alive,
                health=health,
            )
        )
    return StackReport(
        home=home,
        status=status,
        supervisor_pid=supervisor,
        started_at=started_at,
        stopped_at=state.get("stopped_at"),
        error=state.get("error"),
        services=services,
        backends=dict(state.get("backends", {})),
    )
