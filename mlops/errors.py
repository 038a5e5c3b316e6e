"""Domain errors of the platform. ``HTTPException`` lives only in ``app/``.

::

    MlopsError
    ├── ConfigurationError          settings that cannot work (placeholder secret, bad URL)
    ├── DataError                   input data that breaks a rule (names file, rule, column)
    │   └── SchemaError             a column is missing or has the wrong type
    │       ├── FeatureRowError     an inline feature row lacks or mistypes a feature
    │       └── FeatureColumnError  inline 'columns' that are not the model's features
    ├── FeatureViewError            a feature view definition is invalid
    ├── FeatureStoreError           the offline or online store failed
    │   ├── StoreUnavailableError   the backend's server cannot be reached
    │   ├── VersionMismatchError    features of another feature view version
    │   └── IncompleteFeaturesError an online row lacks a model feature (or it is NaN)
    ├── EntityNotFoundError         no online features for these entity keys
    ├── DatasetNotFoundError        no dataset (or version) of that name in the catalog
    ├── TrainingError               training could not produce a model
    ├── ParityError                 ONNX and torch disagree beyond the tolerance
    ├── RegistryError               the model registry has no such model / alias
    │   ├── NoChampionError         no version carries the ``champion`` alias
    │   └── IntegrityError          an artifact's sha256 does not match its tag
    ├── PlatformError               a platform operation (``mlops.platform``) cannot be done;
    │   │                           the management API maps each to an HTTP status
    │   ├── NotFoundError           no such deployment / flow run / model / version / run /
    │   │                           experiment (404); ``kind`` and ``name`` say which
    │   ├── InvalidRequestError     bad input: parameters, filter, metric, mode (422)
    │   ├── ConflictError           the state forbids it: nothing to roll back to (409)
    │   └── OrchestratorUnavailableError
    │                               the Prefect API cannot be reached or is not set (503)
    └── StackError                  the local stack (``mlops up``) cannot start or run
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class MlopsError(Exception):
    """Base of every error the platform raises on purpose."""


class ConfigurationError(MlopsError):
    pass


class DataError(MlopsError):
    pass


class SchemaError(DataError):
    pass


class FeatureRowError(SchemaError):
    """An inline feature row lacks a model feature or has one the model does not know.

    ``row`` is the row's index in the request, ``feature`` the offending name and
    ``problem`` one of ``"missing"``, ``"unknown"``, ``"not finite"``, ``"not a number"``,
    or ``"wrong length"`` (an array row of another length than ``columns``; ``feature``
    is None then).
    """

    def __init__(self, *, row: int, feature: str | None, problem: str, message: str) -> None:
        self.row = row
        self.feature = feature
        self.problem = problem
        super().__init__(message)


class FeatureColumnError(SchemaError):
    """The ``columns`` of array rows are not exactly the model's features.

    ``column`` is the index in ``columns`` (None for a feature missing from them),
    ``feature`` the name, ``problem`` one of ``"unknown"``, ``"repeated"``, ``"missing"``.
    """

    def __init__(self, *, column: int | None, feature: str, problem: str, message: str) -> None:
        self.column = column
        self.feature = feature
        self.problem = problem
        super().__init__(message)


class FeatureViewError(MlopsError):
    pass


class FeatureStoreError(MlopsError):
    pass


class StoreUnavailableError(FeatureStoreError):
    pass


class VersionMismatchError(FeatureStoreError):
    pass


class IncompleteFeaturesError(FeatureStoreError):
    """The online store holds a row for the entity, but a model feature is absent, NaN or
    not finite as float32."""

    def __init__(self, *, view: str, entity: str, feature: str) -> None:
        self.view = view
        self.entity = entity
        self.feature = feature
        super().__init__(
            f"view {view!r} has no usable value for feature {feature!r} of entity "
            f"{entity!r} (missing, NaN or infinite): send the features inline or rematerialize "
            "the view"
        )


class EntityNotFoundError(MlopsError):
    def __init__(self, view: str, keys: Sequence[str]) -> None:
        self.view = view
        self.keys = list(keys)
        shown = ", ".join(self.keys[:10]) + (" …" if len(self.keys) > 10 else "")
        super().__init__(f"no online features in view {view!r} for entity keys: {shown}")


class DatasetNotFoundError(MlopsError):
    pass


class TrainingError(MlopsError):
    pass


class ParityError(MlopsError):
    pass


class RegistryError(MlopsError):
    pass


class NoChampionError(RegistryError):
    pass


class IntegrityError(RegistryError):
    pass


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


class StackError(MlopsError):
    """The local stack cannot start or run: a port is taken, a service failed its health
    check or exited, a backend is unreachable. ``service`` and ``log_path`` name the
    service and its log file when the error is about one."""

    def __init__(
        self, message: str, *, service: str | None = None, log_path: Path | None = None
    ) -> None:
        super().__init__(message)
        self.service = service
        self.log_path = log_path
