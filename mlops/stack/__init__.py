"""The whole platform on one machine, without Docker: ``mlops up`` and ``mlops status``.

- :mod:`mlops.stack.spec`: the services (command, environment, URL, health check, log
  file) built from :class:`StackOptions` and the settings;
- :mod:`mlops.stack.preflight`: free ports, reachable Postgres / Redis, databases made;
- :mod:`mlops.stack.supervisor`: start in dependency order, health-check, watch, stop
  in reverse order (terminate, wait, kill), no orphans;
- :mod:`mlops.stack.state`: ``<home>/stack/state.json`` and what ``status`` makes of it;
- :mod:`mlops.stack.health`: the HTTP health checks.
"""

from mlops.errors import StackError
from mlops.stack.spec import (
    HealthCheck,
    ServiceSpec,
    Stack,
    StackOptions,
    build_stack,
    state_path,
)

__all__ = [
    "HealthCheck",
    "ServiceSpec",
    "Stack",
    "StackError",
    "StackOptions",
    "build_stack",
    "state_path",
]
