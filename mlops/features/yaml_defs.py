"""Feature views declared in YAML (``features.yaml``) beside the ones in code.

The file holds one key, ``views``, a list of views::

    views:
      - name: merchant_activity
        entity: merchant_id
        timestamp: event_timestamp
        created_timestamp: ingested_at        # optional
        source: data/merchant_events.parquet  # relative to this file's folder; .csv → CSV
        features: [amount]
        aggregations:
          - {column: amount, function: mean, window: 24h}
          - {column: transaction_id, function: count, window: 7d, name: tx_7d}
        ttl: 7d
        owner: risk-team
        description: Merchant activity over the last day and week.
        tags: {team: risk}

Windows and ``ttl`` are ``90s``, ``15m``, ``1h``, ``24h``, ``7d`` or whole seconds. A view
loaded here is the same :class:`FeatureView` (and gets the same version) as the same view
written in code.

Every problem raises :class:`FeatureViewError` naming the file and line, the view (by
index and name) and the field, for example
``features.yaml:9: views[0] ('merchant_activity'): aggregations[1].window: ...``.
When the source file exists, :func:`check_source_columns` checks every column the view
names against the source's header (Parquet schema or CSV header line; no data is read).
"""

from __future__ import annotations

import csv
import difflib
import re
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pyarrow.dataset as ds
import yaml

from mlops.errors import FeatureViewError
from mlops.features.definition import AggFunction, Aggregation, FeatureView, Source

__all__ = ["check_source_columns", "load_views", "parse_duration"]

_FUNCTIONS: tuple[AggFunction, ...] = ("count", "sum", "mean", "min", "max")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3_600, "d": 86_400}

_REQUIRED = ("name", "entity", "timestamp", "source")
_OPTIONAL = (
    "created_timestamp",
    "features",
    "aggregations",
    "ttl",
    "owner",
    "description",
    "tags",
)
_AGG_REQUIRED = ("column", "function", "window")
_AGG_OPTIONAL = ("name",)

Location = tuple[str | int, ...]  # where a value sits: ("aggregations", 1, "window")


def parse_duration(value: object) -> timedelta:
    """``90s``, ``15m``, ``1h``, ``24h``, ``7d`` or a whole number of seconds → timedelta.

    Raises :class:`ValueError` with a short reason (the caller adds where it was).
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError(
            f"{value!r} is not a duration: use a whole number followed by s, m, h or d "
            "(90s, 15m, 1h, 24h, 7d), or whole seconds"
        )
    if seconds <= 0:
        raise ValueError(f"{value!r} is not a positive duration")
    return timedelta(seconds=seconds)


def _field_text(field: Location) -> str:
    """``("aggregations", 1, "window")`` → ``aggregations[1].window``."""
    out = ""
    for step in field:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --- source columns -------------------------------------------------------------------------
def _source_header(source: Source) -> list[str]:
    """Column names of the source without reading its rows."""
    path = Path(source.path)
    try:
        if source.format == "csv":
            with path.open(newline="", encoding="utf-8-sig") as handle:
                header = next(csv.reader(handle), None)
            if not header:
                raise FeatureViewError(f"source {path} has no header line")
            return [name.strip() for name in header]
        return list(ds.dataset(path, format="parquet").schema.names)
    except (OSError, ValueError, UnicodeDecodeError, csv.Error) as exc:
        raise FeatureViewError(f"cannot read the columns of source {path}: {exc}") from exc


def _referenced_columns(view: FeatureView) -> list[tuple[Location, str]]:
    """``(field, column)`` for every column the view names, in declaration order."""
    refs: list[tuple[Location, str]] = [
        (("entity",), view.entity),
        (("timestamp",), view.timestamp),
    ]
    if view.created_timestamp:
        refs.append((("created_timestamp",), view.created_timestamp))
    refs += [(("features", i), name) for i, name in enumerate(view.features)]
    refs += [(("aggregations", i, "column"), a.column) for i, a in enumerate(view.aggregations)]
    return refs


def _missing_columns(view: FeatureView) -> tuple[list[tuple[Location, str]], list[str]]:
    """The ``(field, column)`` pairs the source lacks, and the columns it has."""
    if not Path(view.source.path).exists():
        return [], []
    available = _source_header(view.source)
    have = set(available)
    return [(f, c) for f, c in _referenced_columns(view) if c not in have], available


def _missing_message(
    view: FeatureView, missing: list[tuple[Location, str]], available: list[str]
) -> str:
    what = "; ".join(
        f"{_field_text(field)}: unknown column {column!r}{_did_you_mean(column, available)}"
        for field, column in missing
    )
    return f"{what} (source {view.source.path} has columns: {', '.join(available)})"


def check_source_columns(view: FeatureView) -> None:
    """Check that the source has every column ``view`` names (nothing to do if it is absent).

    The columns checked are the entity, timestamp and created-timestamp columns, the
    plain features and every aggregation's column. Reads only the Parquet schema or the
    CSV header line. Raises :class:`FeatureViewError` naming the view, the field, the
    missing column, the source and the columns it has.
    """
    missing, available = _missing_columns(view)
    if missing:
        message = _missing_message(view, missing, available)
        raise FeatureViewError(f"feature view {view.name!r}: {message}")


# --- loading --------------------------------------------------------------------------------
def _node_at(root: yaml.Node | None, where: Location) -> list[tuple[yaml.Node, int]]:
    """``(node, line)`` along ``where`` from the root, as far as it exists.

    The line of a mapping entry is its key's (where the field starts), of a list item
    the item's own; lines are 1-based.
    """
    found = [] if root is None else [(root, root.start_mark.line + 1)]
    for step in where:
        node = found[-1][0] if found else None
        child: tuple[yaml.Node, int] | None = None
        if isinstance(node, yaml.MappingNode):
            child = next(
                ((v, k.start_mark.line + 1) for k, v in node.value if k.value == step), None
            )
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value)
        ):
            child = (node.value[step], node.value[step].start_mark.line + 1)
        if child is None:
            break
        found.append(child)
    return found


class _Document:
    """The file's path and node tree: errors carry the line of the field they are about."""

    def __init__(self, path: Path, root: yaml.Node | None) -> None:
        self.path = path
        self.root = root

    def error(self, where: Location, message: str) -> FeatureViewError:
        found = _node_at(self.root, where)
        line = f":{found[-1][1]}" if found else ""
        return FeatureViewError(f"{self.path}{line}: {message}")

    def duplicate_keys(self, where: Location) -> list[str]:
        """Keys given twice in the mapping at ``where`` (YAML keeps the last one silently)."""
        found = _node_at(self.root, where)
        if len(found) != len(where) + 1 or not isinstance(found[-1][0], yaml.MappingNode):
            return []
        keys = [str(k.value) for k, _ in found[-1][0].value]
        return sorted({k for k in keys if keys.count(k) > 1})


class _ViewParser:
    """Turns ``views[index]`` of a document into a :class:`FeatureView`."""

    def __init__(self, doc: _Document, index: int, raw: object) -> None:
        self.doc = doc
        self.index = index
        self.raw = raw
        name = raw.get("name") if isinstance(raw, Mapping) else None
        self.label = f"views[{index}]" + (f" ({name!r})" if isinstance(name, str) else "")

    def error(self, field: Location, message: str) -> FeatureViewError:
        where = f"{_field_text(field)}: " if field else ""
        return self.doc.error(("views", self.index, *field), f"{self.label}: {where}{message}")

    # --- field readers ------------------------------------------------------------------
    def check_keys(
        self,
        raw: Mapping[Any, Any],
        field: Location,
        required: Sequence[str],
        optional: Sequence[str],
    ) -> None:
        allowed = [*required, *optional]
        for key in raw:
            if key not in allowed:
                raise self.error(
                    (*field, str(key)),
                    f"unknown key{_did_you_mean(str(key), allowed)}; allowed: {', '.join(allowed)}",
                )
        for key in required:
            if raw.get(key) is None:
                raise self.error(field, f"missing required key {key!r}")
        dupes = self.doc.duplicate_keys(("views", self.index, *field))
        if dupes:
            raise self.error(field, f"key(s) given twice: {', '.join(dupes)}")

    def text(
        self, raw: Mapping[str, Any], key: str, field: Location = (), *, empty: bool = False
    ) -> str:
        value = raw.get(key)
        if value is None:
            return ""
        if not isinstance(value, str) or not (empty or value.strip()):
            raise self.error((*field, key), f"must be a non-empty string, got {value!r}")
        return value

    def name(self, raw: Mapping[str, Any], key: str, field: Location = ()) -> str:
        value = self.text(raw, key, field)
        if not _IDENTIFIER.match(value):
            raise self.error((*field, key), f"{value!r} is not a valid name (letters, digits, _)")
        return value

    def duration(self, value: object, field: Location) -> timedelta:
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise self.error(field, str(exc)) from None

    def source(self, raw: Mapping[str, Any]) -> Source:
        path = Path(self.text(raw, "source")).expanduser()
        return Source.from_path(path if path.is_absolute() else self.doc.path.parent / path)

    def features(self, raw: Mapping[str, Any]) -> tuple[str, ...]:
        value = raw.get("features")
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.error(("features",), f"must be a list of column names, got {value!r}")
        for i, column in enumerate(value):
            if not isinstance(column, str) or not column.strip():
                raise self.error(("features", i), f"must be a column name, got {column!r}")
        return tuple(value)

    def aggregation(self, item: object, field: Location) -> Aggregation:
        if not isinstance(item, Mapping):
            raise self.error(field, f"must be a mapping of column, function, window; got {item!r}")
        self.check_keys(item, field, _AGG_REQUIRED, _AGG_OPTIONAL)
        function = item["function"]
        if function not in _FUNCTIONS:
            raise self.error(
                (*field, "function"),
                f"unknown function {function!r}{_did_you_mean(str(function), _FUNCTIONS)} "
                f"(one of {', '.join(_FUNCTIONS)})",
            )
        return Aggregation(
            column=self.text(item, "column", field),
            function=cast(AggFunction, function),
            window=self.duration(item["window"], (*field, "window")),
            name=self.name(item, "name", field) if item.get("name") is not None else None,
        )

    def aggregations(self, raw: Mapping[str, Any]) -> tuple[Aggregation, ...]:
        value = raw.get("aggregations")
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.error(("aggregations",), "must be a list of {column, function, window}")
        return tuple(self.aggregation(item, ("aggregations", i)) for i, item in enumerate(value))

    def tags(self, raw: Mapping[str, Any]) -> dict[str, str]:
        value = raw.get("tags")
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.error(("tags",), f"must be a mapping of names to values, got {value!r}")
        out: dict[str, str] = {}
        for key, item in value.items():
            if item is None or isinstance(item, (Mapping, list)):
                raise self.error(("tags", str(key)), f"must be a plain value, got {item!r}")
            out[str(key)] = str(item).lower() if isinstance(item, bool) else str(item)
        return out

    def check_unique_feature_names(
        self, features: tuple[str, ...], aggregations: tuple[Aggregation, ...]
    ) -> None:
        made: list[tuple[Location, str]] = [(("features", i), n) for i, n in enumerate(features)]
        made += [(("aggregations", i), a.feature_name) for i, a in enumerate(aggregations)]
        seen: dict[str, Location] = {}
        for field, name in made:
            if name in seen:
                raise self.error(
                    field,
                    f"duplicate feature name {name!r} (also made by {_field_text(seen[name])}); "
                    "give the aggregation its own `name`",
                )
            seen[name] = field

    # --- the view -----------------------------------------------------------------------
    def parse(self) -> FeatureView:
        raw = self.raw
        if not isinstance(raw, Mapping):
            raise self.error((), f"must be a mapping of view fields, got {raw!r}")
        self.check_keys(raw, (), _REQUIRED, _OPTIONAL)
        name = self.name(raw, "name")
        features = self.features(raw)
        aggregations = self.aggregations(raw)
        self.check_unique_feature_names(features, aggregations)
        fields: dict[str, Any] = {
            "name": name,
            "entity": self.text(raw, "entity"),
            "timestamp": self.text(raw, "timestamp"),
            "created_timestamp": self.text(raw, "created_timestamp") or None,
            "source": self.source(raw),
            "features": features,
            "aggregations": aggregations,
            "owner": self.text(raw, "owner"),
            "description": self.text(raw, "description", empty=True),
            "tags": self.tags(raw),
        }
        if raw.get("ttl") is not None:
            fields["ttl"] = self.duration(raw["ttl"], ("ttl",))
        try:
            view = FeatureView(**fields)
        except FeatureViewError as exc:  # the checks of the definition itself
            raise self.error((), str(exc)) from None
        missing, available = _missing_columns(view)
        if missing:  # the message names each field; the line is the first one's
            message = f"{self.label}: {_missing_message(view, missing, available)}"
            raise self.doc.error(("views", self.index, *missing[0][0]), message)
        return view


def _parse_yaml(path: Path, text: str) -> tuple[object, yaml.Node | None]:
    """The document's data and node tree; bad syntax names the file, line and column."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = None if node is None else loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark, context = exc.problem_mark or exc.context_mark, exc.context_mark
        where = "" if mark is None else f":{mark.line + 1}"
        at = "" if mark is None else f" at line {mark.line + 1}, column {mark.column + 1}"
        reason = exc.problem or exc.context or "cannot parse"
        if exc.context and exc.problem:
            started = "" if context is None else f" that starts at line {context.line + 1}"
            reason += f" ({exc.context}{started})"
        raise FeatureViewError(f"{path}{where}: invalid YAML{at}: {reason}") from None
    except yaml.YAMLError as exc:
        raise FeatureViewError(f"{path}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    return data, node


def load_views(path: Path) -> list[FeatureView]:
    """The feature views of a YAML file (see the module docstring for the format).

    Source paths are taken relative to the file's folder; each view's columns are
    checked against its source when that exists. An empty file has no views. Raises
    :class:`FeatureViewError` naming the file, line, view and field of the first problem.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FeatureViewError(f"cannot read feature definitions {path}: {exc}") from exc
    data, node = _parse_yaml(path, text)
    doc = _Document(path, node)
    if data is None:
        return []
    if not isinstance(data, Mapping):
        raise doc.error((), "the file must be a mapping with one key, `views` (a list)")
    for key in data:
        if key != "views":
            raise doc.error(
                (str(key),),
                f"unknown top-level key {key!r}{_did_you_mean(str(key), ['views'])}; "
                "the file holds one key, `views`",
            )
    raw_views = data.get("views")
    if raw_views is None:
        return []
    if not isinstance(raw_views, list):
        raise doc.error(("views",), "`views` must be a list of feature views")
    views: list[FeatureView] = []
    first: dict[str, int] = {}
    for index, raw in enumerate(raw_views):
        parser = _ViewParser(doc, index, raw)
        view = parser.parse()
        if view.name in first:
            raise parser.error(
                ("name",), f"duplicate view name {view.name!r} (also views[{first[view.name]}])"
            )
        first[view.name] = index
        views.append(view)
    return views
