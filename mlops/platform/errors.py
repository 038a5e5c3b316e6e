"""The errors of the platform operations, re-exported from :mod:`mlops.errors` (where
they live, with the rest of the exception tree) so that imports of this module keep
working. New code imports them from :mod:`mlops.errors`."""

from __future__ import annotations

from mlops.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    OrchestratorUnavailableError,
    PlatformError,
)

__all__ = [
    "ConflictError",
    "InvalidRequestError",
    "NotFoundError",
    "OrchestratorUnavailableError",
    "PlatformError",
]
