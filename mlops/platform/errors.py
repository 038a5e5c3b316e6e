"""Errors of the platform operations (the management API maps them to HTTP statuses).

::

    MlopsError                      (mlops.errors)
    └── PlatformError
        ├── NotFoundError           no such deployment / flow run / model / version / run /
        │                           experiment (404); ``kind`` and ``name`` say which
        ├── InvalidRequestError     bad input: parameters, filter, metric, mode (422)
        ├── ConflictError           the state forbids it: nothing to roll back to (409)
        └── OrchestratorUnavailableError
                                    the Prefect API cannot be reached or is not set (503)
"""

from __future__ import annotations

from mlops.errors import MlopsError


class PlatformError(MlopsError):
    """Base of the errors raised by :mod:`mlops.platform`."""


class NotFoundError(PlatformError):
    """``kind`` (``"deployment"``, ``"flow run"``, ``"model"``, ...) named ``name`` is unknown."""

    def __init__(self, kind: str, name: str, hint: str = "") -> None:
        self.kind = kind
        self.name = name
        super().__init__(f"no {kind} {name!r}" + (f": {hint}" if hint else ""))


class InvalidRequestError(PlatformError):
    """The request's input breaks a rule (the message names the field)."""


class ConflictError(PlatformError):
    """The current state does not allow the operation (the message says why)."""


class OrchestratorUnavailableError(PlatformError):
    """The Prefect API is not configured or does not answer (the message names its URL)."""
