"""Health checks of the stack's services, over HTTP only (nothing here imports Prefect).

A check never raises: it returns a :class:`Health` whose ``detail`` says what was seen
("HTTP 200", "no champion yet", "connection refused"), for the start-up error message
and for ``mlops status``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from mlops.stack.spec import HealthCheck


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str
    facts: dict[str, Any] = field(default_factory=dict)
    """What the check learnt (deployment names, the served model version)."""


def check(health: HealthCheck, *, since: datetime | None = None, timeout_s: float = 2.0) -> Health:
    """Run ``health``. ``since``: for ``deployments``, ignore deployments not written since
    (left over from an earlier run on the same Prefect database)."""
    try:
        with httpx.Client(timeout=timeout_s) as client:
            if health.kind == "http":
                return _http(client, health.url)
            if health.kind == "app":
                return _app(client, health.url)
            return _deployments(client, health.url, since)
    except httpx.TransportError as exc:
        return Health(False, f"not answering ({_reason(exc)})")
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        return Health(False, f"unexpected answer ({exc})")


def _reason(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "connection refused"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return str(exc) or type(exc).__name__


def _http(client: httpx.Client, url: str) -> Health:
    response = client.get(url)
    return Health(response.status_code == 200, f"HTTP {response.status_code}")


def _app(client: httpx.Client, base: str) -> Health:
    response = client.get(f"{base}/health")
    if response.status_code != 200:
        return Health(False, f"/health: HTTP {response.status_code}")
    ready = client.get(f"{base}/ready")
    if ready.status_code == 200:
        model = ready.json().get("model", {})
        name, version = model.get("name"), model.get("version")
        return Health(True, f"serving {name} version {version}", {"model_version": version})
    if ready.status_code == 503:
        return Health(True, "no champion yet", {"model_version": None})
    return Health(False, f"/ready: HTTP {ready.status_code}")


def _deployments(client: httpx.Client, api: str, since: datetime | None) -> Health:
    """The deployments a runner serves (no work pool): healthy once all are READY, that
    is once the runner polls the API for their runs."""
    found = client.post(f"{api}/deployments/filter", json={})
    found.raise_for_status()
    flows = client.post(f"{api}/flows/filter", json={})
    flows.raise_for_status()
    flow_names = {flow["id"]: flow["name"] for flow in flows.json()}
    served = [
        d
        for d in found.json()
        if d.get("work_pool_name") is None
        and (since is None or datetime.fromisoformat(d["updated"]) >= since)
    ]
    if not served:
        return Health(False, "no deployments served yet")
    names = sorted(f"{flow_names.get(d['flow_id'], '?')}/{d['name']}" for d in served)
    ready = [d for d in served if d.get("status") == "READY"]
    facts = {"deployments": names}
    if len(ready) < len(served):
        return Health(False, f"{len(ready)} of {len(served)} deployments ready", facts)
    return Health(True, f"{len(served)} deployments ready", facts)
