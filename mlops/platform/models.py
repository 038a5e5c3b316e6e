"""Registered models: list them and their versions, promote a version, roll back.

Every function takes an :class:`mlflow.MlflowClient` (``client``) and raises the errors
of :mod:`mlops.errors` (an unknown model or version is :class:`NotFoundError`).

Champion history (the contract of :func:`promote` and :func:`rollback`):

- the registered model's tag ``champion_history`` holds the versions that were
  ``champion`` before the current one, as a JSON list, oldest first (at most
  :data:`HISTORY_MAX`);
- :func:`promote` appends the champion it replaces; :func:`rollback` takes the last
  entry off and moves ``champion`` back to it, so rollbacks walk back one by one;
- the version that becomes champion gets the tags ``promotion.kind`` (``promote`` or
  ``rollback``), ``promotion.by``, ``promotion.reason``, ``promotion.at`` (ISO 8601, UTC)
  and ``promotion.previous`` (the version it replaced, empty if none).

Both emit ``mlops.model.promoted`` (payload ``version``, ``previous``, ``reason``, ``by``,
``kind``), which the serving app follows. Read-modify-write of the history is not
atomic: two promotions of one model at the same instant may lose an entry.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException

from mlops import events
from mlops.errors import ConflictError, InvalidRequestError, NotFoundError
from mlops.platform import _events
from mlops.registry import CHALLENGER, CHAMPION, version_by_alias
from mlops.tags import Tags

logger = logging.getLogger(__name__)

CHAMPION_HISTORY = "champion_history"
"""Registered model tag: JSON list of the earlier champions' versions, oldest first."""
HISTORY_MAX = 50
PROMOTION_KIND = "promotion.kind"
PROMOTION_BY = "promotion.by"
PROMOTION_REASON = "promotion.reason"
PROMOTION_AT = "promotion.at"
PROMOTION_PREVIOUS = "promotion.previous"

_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


@dataclass(frozen=True)
class ModelSummary:
    """A registered model: its aliases (``{alias: version}``) and newest version."""

    name: str
    description: str
    aliases: dict[str, str]
    latest_version: str | None
    created: datetime | None
    updated: datetime | None
    tags: dict[str, str]


@dataclass(frozen=True)
class VersionInfo:
    """A model version with the metrics of the MLflow run that produced it."""

    name: str
    version: str
    aliases: list[str]
    status: str
    run_id: str | None
    created: datetime | None
    feature_views: list[str]
    data_window: str | None
    metrics: dict[str, float]
    tags: dict[str, str]


@dataclass(frozen=True)
class PromotionResult:
    """What :func:`promote` or :func:`rollback` did (``changed`` False: it already was)."""

    name: str
    version: str
    previous: str | None
    kind: Literal["promote", "rollback"]
    changed: bool
    by: str
    reason: str
    at: datetime
    history: list[str]


def _time(ms: int | None) -> datetime | None:
    return None if not ms else datetime.fromtimestamp(ms / 1000, tz=UTC)


def _registered_model(client: MlflowClient, name: str) -> RegisteredModel:
    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code in _NOT_FOUND:
            raise NotFoundError("model", name, "train one with the train flow") from exc
        if exc.error_code == "INVALID_PARAMETER_VALUE":
            raise InvalidRequestError(f"model name {name!r}: {exc.message}") from exc
        raise


def _version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    if not str(version).isdigit():
        raise InvalidRequestError(f"model version {version!r} is not a positive integer")
    _registered_model(client, name)
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code in _NOT_FOUND:
            raise NotFoundError("model version", f"{name} v{version}") from exc
        raise


def _filter_name(name: str) -> str:
    quote = "'" if "'" not in name else '"'
    if quote in name:
        raise InvalidRequestError(f"model name {name!r} holds both kinds of quotes")
    return f"name = {quote}{name}{quote}"


def list_models(client: MlflowClient) -> list[ModelSummary]:
    """Every registered model, by name."""
    found: list[ModelSummary] = []
    token: str | None = None
    while True:
        page = client.search_registered_models(max_results=1000, page_token=token)
        for rm in page:
            latest = [int(v.version) for v in rm.latest_versions or []]
            found.append(
                ModelSummary(
                    name=rm.name,
                    description=rm.description or "",
                    aliases={a: str(v) for a, v in (rm.aliases or {}).items()},
                    latest_version=str(max(latest)) if latest else None,
                    created=_time(rm.creation_timestamp),
                    updated=_time(rm.last_updated_timestamp),
                    tags=dict(rm.tags or {}),
                )
            )
        token = page.token
        if not token:
            return sorted(found, key=lambda m: m.name)


def _run_metrics(client: MlflowClient, run_id: str | None) -> dict[str, float]:
    if not run_id:
        return {}
    try:
        return dict(client.get_run(run_id).data.metrics)
    except MlflowException as exc:  # the run was deleted: the version stays listable
        if exc.error_code in _NOT_FOUND:
            return {}
        raise


def _version_info(client: MlflowClient, mv: ModelVersion, aliases: dict[str, str]) -> VersionInfo:
    tags = dict(mv.tags or {})
    try:
        views = json.loads(tags.get(Tags.FEATURE_VIEWS, "[]"))
    except json.JSONDecodeError:
        views = [tags[Tags.FEATURE_VIEWS]]
    return VersionInfo(
        name=mv.name,
        version=str(mv.version),
        aliases=sorted(a for a, v in aliases.items() if str(v) == str(mv.version)),
        status=str(mv.status),
        run_id=mv.run_id or None,
        created=_time(mv.creation_timestamp),
        feature_views=[str(v) for v in views] if isinstance(views, list) else [str(views)],
        data_window=tags.get(Tags.DATA_WINDOW),
        metrics=_run_metrics(client, mv.run_id),
        tags=tags,
    )


def model_versions(client: MlflowClient, *, name: str, limit: int = 100) -> list[VersionInfo]:
    """The newest ``limit`` versions of ``name``, newest first, with aliases and metrics."""
    rm = _registered_model(client, name)
    aliases = {a: str(v) for a, v in (rm.aliases or {}).items()}
    versions = client.search_model_versions(filter_string=_filter_name(name))
    newest = sorted(versions, key=lambda mv: int(mv.version), reverse=True)[:limit]
    return [_version_info(client, mv, aliases) for mv in newest]


def model_version(client: MlflowClient, *, name: str, version: str) -> VersionInfo:
    """One version of ``name`` with its aliases and metrics."""
    mv = _version(client, name, version)
    rm = _registered_model(client, name)
    return _version_info(client, mv, {a: str(v) for a, v in (rm.aliases or {}).items()})


def champion_history(client: MlflowClient, *, name: str) -> list[str]:
    """The earlier champions of ``name``, oldest first (the ``champion_history`` tag)."""
    raw = (_registered_model(client, name).tags or {}).get(CHAMPION_HISTORY)
    if not raw:
        return []
    try:
        history = json.loads(raw)
    except json.JSONDecodeError:
        logger.warning("tag %s of model %s is not JSON: %r", CHAMPION_HISTORY, name, raw)
        return []
    return [str(v) for v in history] if isinstance(history, list) else []


def _save_history(client: MlflowClient, name: str, history: list[str]) -> None:
    client.set_registered_model_tag(name, CHAMPION_HISTORY, json.dumps(history[-HISTORY_MAX:]))


def push_champion_history(client: MlflowClient, *, name: str, previous: str | None) -> list[str]:
    """Append ``previous`` (the champion being replaced) to the history; returns it.

    Anything that moves ``champion`` forward calls this first, so :func:`rollback` can
    undo it: :func:`promote` here and the evaluate flow's promotion task
    (``tasks/evaluation/promote.py``, which restores the tag when its transaction rolls
    back)."""
    history = champion_history(client, name=name)
    if previous is not None and (not history or history[-1] != previous):
        history.append(previous)
        _save_history(client, name, history)
    return history[-HISTORY_MAX:]


def promotion_tags(
    kind: str, by: str, reason: str, at: datetime, previous: str | None
) -> dict[str, str]:
    """The ``promotion.*`` tags of a version made champion: how (``promote`` or
    ``rollback``), by whom (a token's caller, ``evaluate flow``), why, when, and which
    version it replaced."""
    return {
        PROMOTION_KIND: kind,
        PROMOTION_BY: by,
        PROMOTION_REASON: reason,
        PROMOTION_AT: at.isoformat(),
        PROMOTION_PREVIOUS: previous or "",
    }


def _move_champion(
    client: MlflowClient,
    *,
    name: str,
    version: str,
    previous: str | None,
    kind: Literal["promote", "rollback"],
    by: str,
    reason: str,
    history: list[str],
    events_api_url: str | None,
) -> PromotionResult:
    at = datetime.now(UTC)
    client.set_registered_model_alias(name, CHAMPION, version)
    challenger = version_by_alias(client, name, CHALLENGER)
    if challenger is not None and str(challenger.version) == version:
        client.delete_registered_model_alias(name, CHALLENGER)
    for key, value in promotion_tags(kind, by, reason, at, previous).items():
        client.set_model_version_tag(name, version, key, value)
    logger.info(
        "%s: model %s version %s is now %s (was %s)", kind, name, version, CHAMPION, previous
    )
    payload: dict[str, Any] = {
        "version": version,
        "previous": previous,
        "reason": reason,
        "by": by,
        "kind": kind,
    }
    _events.send(events.MODEL_PROMOTED, events.model_resource(name), payload, events_api_url)
    return PromotionResult(name, version, previous, kind, True, by, reason, at, history)


def promote(
    client: MlflowClient,
    *,
    name: str,
    version: str,
    by: str,
    reason: str,
    events_api_url: str | None = None,
) -> PromotionResult:
    """Move ``champion`` of ``name`` to ``version``, recording who and why.

    The replaced champion goes onto the history. A version without the tags serving
    needs (:attr:`Tags.REQUIRED_FOR_SERVING`) is refused (:class:`ConflictError`): the
    app would refuse to load it. Promoting the current champion changes nothing.
    """
    mv = _version(client, name, version)
    version = str(mv.version)
    missing = [tag for tag in Tags.REQUIRED_FOR_SERVING if not (mv.tags or {}).get(tag)]
    if missing:
        raise ConflictError(
            f"model {name!r} version {version} lacks the tags serving needs "
            f"({', '.join(missing)}): it was not registered by the train flow"
        )
    current = version_by_alias(client, name, CHAMPION)
    previous = None if current is None else str(current.version)
    if previous == version:
        history = champion_history(client, name=name)
        return PromotionResult(
            name, version, previous, "promote", False, by, reason, datetime.now(UTC), history
        )
    history = push_champion_history(client, name=name, previous=previous)
    return _move_champion(
        client,
        name=name,
        version=version,
        previous=previous,
        kind="promote",
        by=by,
        reason=reason,
        history=history,
        events_api_url=events_api_url,
    )


def rollback(
    client: MlflowClient,
    *,
    name: str,
    by: str,
    reason: str,
    events_api_url: str | None = None,
) -> PromotionResult:
    """Move ``champion`` of ``name`` back to the previous champion (the last entry of the
    history, taken off it). Versions deleted since are skipped. Nothing recorded to go
    back to is :class:`ConflictError`."""
    history = champion_history(client, name=name)
    current = version_by_alias(client, name, CHAMPION)
    now = None if current is None else str(current.version)
    while history:
        target = history.pop()
        if target == now:
            continue
        try:
            client.get_model_version(name, target)
        except MlflowException as exc:
            if exc.error_code in _NOT_FOUND:
                logger.warning("earlier champion %s v%s was deleted: skipped", name, target)
                continue
            raise
        _save_history(client, name, history)
        return _move_champion(
            client,
            name=name,
            version=target,
            previous=now,
            kind="rollback",
            by=by,
            reason=reason,
            history=history,
            events_api_url=events_api_url,
        )
    if history != champion_history(client, name=name):
        _save_history(client, name, history)  # only deleted versions were left
    raise ConflictError(
        f"model {name!r} has no earlier champion recorded (tag {CHAMPION_HISTORY!r}) to roll "
        "back to: promote a version instead"
    )
