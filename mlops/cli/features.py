"""``mlops features``: list and describe feature views, and check their online freshness.

Views come from the model specs in code and from ``features.yaml``
(``MLOPS_FEATURES__DEFINITIONS``). The feature registry and the online store are built
from settings inside each command and closed after it. Freshness is the age of the
newest event time in the online store: ``stale`` past the view's TTL, ``empty`` when
the store holds nothing for the view.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import sqlalchemy as sa
import typer
from rich.table import Table

from mlops.cli.common import console, err, fail, load_settings
from mlops.errors import MlopsError
from mlops.features.definition import FeatureView, window_label
from mlops.features.online import OnlineStore, build_online_store
from mlops.features.registry import (
    FeatureRegistry,
    MaterializationRecord,
    ViewRecord,
    feature_entries,
    open_registry,
)
from mlops.settings import Settings
from mlops.specs import all_views, code_views, get_view

features_app = typer.Typer(
    help=(
        "Feature views declared in code and in features.yaml: what they compute, their "
        "versions, what was materialized, and how fresh the online store is.\n\n"
        "Example: `mlops features ls` then `mlops features describe card_transactions`"
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",
)

Status = Literal["fresh", "stale", "empty", "unknown"]
_STYLE = {"fresh": "green", "stale": "yellow", "empty": "red", "unknown": "dim"}


@dataclass(frozen=True)
class Freshness:
    """How old the newest online row of a view is, against the view's TTL."""

    view: str
    newest: datetime | None
    age: timedelta | None
    ttl: timedelta
    status: Status

    def as_json(self) -> dict[str, object]:
        return {
            "view": self.view,
            "newest_event_timestamp": None if self.newest is None else self.newest.isoformat(),
            "age_s": None if self.age is None else self.age.total_seconds(),
            "ttl_s": int(self.ttl.total_seconds()),
            "status": self.status,
        }


def freshness(view: FeatureView, store: OnlineStore, now: datetime) -> Freshness:
    """The view's freshness in ``store`` at ``now`` (raises the store's errors)."""
    newest = store.newest_event_timestamp(view.name)
    if newest is None:
        return Freshness(view.name, None, None, view.ttl, "empty")
    newest = newest.replace(tzinfo=UTC) if newest.tzinfo is None else newest.astimezone(UTC)
    age = now - newest
    return Freshness(view.name, newest, age, view.ttl, "stale" if age > view.ttl else "fresh")


def _unknown(view: FeatureView) -> Freshness:
    return Freshness(view.name, None, None, view.ttl, "unknown")


# --- formatting -----------------------------------------------------------------------------
def _duration(delta: timedelta) -> str:
    """``3d 4h``, ``2h 5m``, ``45s``: the two largest non-zero units of a duration."""
    seconds = int(delta.total_seconds())
    if seconds < 0:
        return f"-{_duration(-delta)}"
    parts = []
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        value, seconds = divmod(seconds, size)
        if value:
            parts.append(f"{value}{unit}")
    return " ".join(parts[:2]) or "0s"


def _when(value: datetime | None) -> str:
    return "—" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


def _interval(record: MaterializationRecord | None) -> str:
    return "never" if record is None else f"{record.start:%Y-%m-%d} → {record.end:%Y-%m-%d}"


def _age(f: Freshness) -> str:
    if f.status == "unknown":
        return "unknown"
    if f.age is None:
        return "empty"
    return f"{_duration(f.age)} ({f.status})"


def _status(f: Freshness) -> str:
    return f"[{_STYLE[f.status]}]{f.status}[/{_STYLE[f.status]}]"


def _materialization_json(m: MaterializationRecord) -> dict[str, object]:
    return {
        "version": m.version,
        "start": m.start.isoformat(),
        "end": m.end.isoformat(),
        "rows": m.rows,
        "partitions": m.partitions,
        "entities_online": m.entities_online,
        "max_event_ts": None if m.max_event_ts is None else m.max_event_ts.isoformat(),
        "flow_run_id": m.flow_run_id,
        "finished_at": m.finished_at.isoformat(),
    }


def _version_json(record: ViewRecord, current: str) -> dict[str, object]:
    return {
        "version": record.version,
        "current": record.version == current,
        "first_registered_at": record.first_registered_at.isoformat(),
        "last_seen_at": record.last_seen_at.isoformat(),
    }


# --- resources ------------------------------------------------------------------------------
@contextmanager
def _errors() -> Iterator[None]:
    """Domain and database errors end the command with one red line and exit code 1."""
    try:
        yield
    except MlopsError as exc:
        raise fail(exc) from exc
    except sa.exc.SQLAlchemyError as exc:
        raise fail(MlopsError(f"feature registry: {exc}")) from exc


@contextmanager
def _registry(settings: Settings) -> Iterator[FeatureRegistry]:
    """The feature registry on a fresh engine, disposed after the command."""
    url = settings.features.registry_url
    assert url is not None  # filled by Settings
    try:
        registry = open_registry(url)
    except Exception as exc:  # an unreachable database: one line, not a traceback
        shown = sa.engine.make_url(url).render_as_string(hide_password=True)
        raise fail(MlopsError(f"cannot open the feature registry at {shown}: {exc}")) from exc
    try:
        yield registry
    finally:
        registry.dispose()


@contextmanager
def _online_store(settings: Settings) -> Iterator[OnlineStore]:
    store = build_online_store(settings.online_store)
    try:
        yield store
    finally:
        store.close()


def _freshness_or_warn(views: list[FeatureView], store: OnlineStore) -> dict[str, Freshness]:
    """Freshness of each view; an unreachable store is a warning and ``unknown`` freshness."""
    now = datetime.now(UTC)
    try:
        return {v.name: freshness(v, store, now) for v in views}
    except MlopsError as exc:
        err.print(
            f"warning: freshness unknown: {exc}", style="yellow", markup=False, highlight=False
        )
        return {v.name: _unknown(v) for v in views}


def _check_failed(message: str) -> None:
    """End a ``--check`` command with exit code 1 and one red line."""
    err.print(message, style="red", markup=False, highlight=False)
    raise typer.Exit(1)


# --- commands -------------------------------------------------------------------------------
@features_app.command("ls")
def ls() -> None:
    """List every feature view (code and features.yaml) with its version and freshness.

    Shows each view's current version, entity, feature count, owner, last materialized
    interval and rows, and the age of its newest online row. The current versions are
    recorded in the feature registry as they are listed.

    Example: `mlops features ls`
    """
    settings = load_settings()
    with _errors(), _registry(settings) as registry, _online_store(settings) as store:
        views = all_views(settings)
        last = {}
        for view in views:
            registry.register(view)
            last[view.name] = registry.last_materialization(view.name, view.version)
        fresh = _freshness_or_warn(views, store)
    if not views:
        console.print("no feature views")
        return
    table = Table(title="feature views", title_justify="left")
    table.add_column("name", no_wrap=True)  # names and versions are never folded
    table.add_column("version", no_wrap=True)
    for column in ("entity", "features", "owner", "last materialized", "rows", "freshness"):
        table.add_column(column, overflow="fold")
    for view in views:
        record = last[view.name]
        table.add_row(
            view.name,
            view.version,
            view.entity,
            str(len(view.feature_names)),
            view.owner or "—",
            _interval(record),
            "—" if record is None else f"{record.rows:,}",
            _age(fresh[view.name]),
        )
    console.print(table)


@features_app.command("describe")
def describe(
    name: Annotated[str, typer.Argument(help="Feature view name (see `mlops features ls`).")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print machine-readable JSON instead of text.")
    ] = False,
    limit: Annotated[
        int, typer.Option(min=1, help="How many recent materializations to show.")
    ] = 10,
) -> None:
    """Show a view's definition, its versions in the registry and recent materializations.

    Example: `mlops features describe card_transactions --json`
    """
    settings = load_settings()
    with _errors(), _registry(settings) as registry, _online_store(settings) as store:
        view = get_view(name, settings)
        in_code = any(v.name == name for v in code_views(settings))
        registry.register(view)
        versions = registry.versions(name)
        runs = registry.materializations(name, limit=limit)
        fresh = _freshness_or_warn([view], store)[name]
    defined_in = "code (mlops/specs.py)" if in_code else str(settings.features.definitions)
    if as_json:
        payload = {
            "name": view.name,
            "version": view.version,
            "ref": view.ref,
            "defined_in": defined_in,
            "description": view.description,
            "owner": view.owner,
            "tags": dict(view.tags),
            "entity": view.entity,
            "timestamp": view.timestamp,
            "created_timestamp": view.created_timestamp,
            "ttl_s": int(view.ttl.total_seconds()),
            "source": str(view.source.path),
            "source_format": view.source.format,
            "features": feature_entries(view),
            "versions": [_version_json(r, view.version) for r in versions],
            "materializations": [_materialization_json(m) for m in runs],
            "freshness": fresh.as_json(),
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    rows = {
        "view": f"{view.name} version {view.version}",
        "defined in": defined_in,
        "description": view.description or "—",
        "owner": view.owner or "—",
        "tags": ", ".join(f"{k}={v}" for k, v in view.tags.items()) or "—",
        "entity": view.entity,
        "timestamp": view.timestamp,
        "created timestamp": view.created_timestamp or "—",
        "ttl": window_label(view.ttl),
        "source": f"{view.source.path} ({view.source.format})",
        "freshness": _age(fresh),
    }
    for key, value in rows.items():
        console.print(f"{key}: {value}", soft_wrap=True, highlight=False, markup=False)
    table = Table(title="features", title_justify="left")
    for column in ("name", "kind", "column", "function", "window"):
        table.add_column(column, overflow="fold")
    for entry in feature_entries(view):
        window = entry["window_s"]
        table.add_row(
            str(entry["name"]),
            str(entry["kind"]),
            str(entry["column"]),
            str(entry["function"] or "—"),
            "—" if not isinstance(window, int) else window_label(timedelta(seconds=window)),
        )
    console.print(table)
    console.print("versions (newest first):", highlight=False)
    for r in versions:
        mark = "*" if r.version == view.version else " "
        note = " (current)" if r.version == view.version else ""
        console.print(
            f" {mark} {r.version}{note}: first registered {_when(r.first_registered_at)}, "
            f"last seen {_when(r.last_seen_at)}",
            soft_wrap=True,
            highlight=False,
            markup=False,
        )
    if not runs:
        console.print("materializations: none yet", highlight=False)
        return
    runs_table = Table(title="recent materializations (UTC)", title_justify="left")
    for column in ("version", "interval", "rows", "entities online", "newest event", "finished"):
        runs_table.add_column(column, overflow="fold")
    for m in runs:
        runs_table.add_row(
            m.version,
            _interval(m),
            f"{m.rows:,}",
            f"{m.entities_online:,}",
            _when(m.max_event_ts),
            _when(m.finished_at),
        )
    console.print(runs_table)


@features_app.command("freshness")
def freshness_cmd(
    name: Annotated[
        str | None, typer.Argument(help="Only this feature view (default: all).")
    ] = None,
    check: Annotated[
        bool,
        typer.Option("--check", help="Exit with code 1 if any view is stale or empty (for cron)."),
    ] = False,
) -> None:
    """Show how old each view's newest online row is against its TTL: fresh, stale or empty.

    Example: `mlops features freshness --check` (exit code 1 when a view needs materializing)
    """
    settings = load_settings()
    now = datetime.now(UTC)
    with _errors(), _online_store(settings) as store:
        views = [get_view(name, settings)] if name else all_views(settings)
        found = [freshness(view, store, now) for view in views]
    table = Table(title=f"online freshness at {now:%Y-%m-%d %H:%M:%S} UTC", title_justify="left")
    table.add_column("view", no_wrap=True)
    for column in ("newest event (UTC)", "age", "ttl", "status"):
        table.add_column(column, overflow="fold")
    for f in found:
        table.add_row(
            f.view,
            _when(f.newest),
            "—" if f.age is None else _duration(f.age),
            window_label(f.ttl),
            _status(f),
        )
    console.print(table)
    bad = [f"{f.view} ({f.status})" for f in found if f.status in ("stale", "empty")]
    if check and bad:
        _check_failed(f"{len(bad)} view(s) not fresh: {', '.join(bad)}")


@features_app.command("skew")
def skew_cmd(
    name: Annotated[str, typer.Argument(help="Feature view name.")],
    sample: Annotated[
        int, typer.Option(min=1, help="Entities to compare (a seeded random sample).")
    ] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the sample.")] = 0,
    check: Annotated[
        bool,
        typer.Option("--check", help="Exit with code 1 if any sampled entity differs."),
    ] = False,
) -> None:
    """Train/serve skew: compare the online values of a sample of entities with their
    latest offline rows (same event time, same view version, same value of every feature).

    Example: `mlops features skew card_transactions --sample 500 --check`
    """
    from mlops.features.offline import OfflineStore
    from mlops.features.skew import check_skew

    settings = load_settings()
    with _errors(), _online_store(settings) as store:
        view = get_view(name, settings)
        report = check_skew(
            view,
            offline=OfflineStore(settings.offline_path),
            online=store,
            sample=sample,
            seed=seed,
        )
    table = Table(title=f"train/serve skew of {view.ref}", title_justify="left")
    table.add_column("check")
    table.add_column("count", justify="right")
    for row in report.rows():
        table.add_row(str(row["check"]), str(row["count"]))
    console.print(table)
    for example in report.examples:
        console.print(f"  {example['entity']}: {example['problems']}", markup=False)
    if check and report.skewed:
        _check_failed(f"{report.skewed} of {report.sampled} sampled entities differ")
