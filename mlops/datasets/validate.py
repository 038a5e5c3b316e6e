"""Validation of a user dataset (CSV or Parquet), read in chunks so memory stays bounded.

Every rejection is a :class:`DataError` (or :class:`SchemaError` for a column problem)
whose message reads ``<file>: rule <rule>: <column or row>: <what is wrong>``. Rules:

==================  ==============================================================
``name``            dataset names match ``[a-z0-9][a-z0-9_-]{0,62}``
``format``          the file ends in ``.csv``, ``.parquet`` or ``.pq``
``max-bytes``       the file is at most ``MLOPS_DATASETS__MAX_BYTES``
``header``          a CSV starts with a header row of unique, non-empty names
``malformed``       the file cannot be parsed (wrong field count, not UTF-8, …)
``column-type``     a Parquet column has a type with no dataset kind (list, struct, …)
``entity-column``   the entity column exists and is not all empty
``timestamp-column``  the timestamp column exists, every value is an ISO 8601 time
``min-rows``        at least ``MLOPS_DATASETS__MIN_ROWS`` data rows
``max-empty``       at most ``MLOPS_DATASETS__MAX_EMPTY_FRACTION`` empty cells per column
==================  ==============================================================

Rows are counted from 1, the header excluded. Column kinds are inferred from the values
(CSV, Parquet strings) or from the Parquet type: ``bool`` (true/false), ``int``,
``float``, ``timestamp`` (ISO 8601; without a zone taken as UTC), else ``string``.
The two passes are :func:`profile` (validate and infer) and :func:`normalized_tables`
(the same chunks, converted to the inferred kinds, for writing).
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlops.errors import DataError, SchemaError

Kind = Literal["int", "float", "bool", "string", "timestamp"]
Format = Literal["csv", "parquet"]

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
CHUNK_ROWS = 100_000
_FORMATS: dict[str, Format] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_INFERRED: tuple[Kind, ...] = ("bool", "int", "float", "timestamp")  # first match wins
_INT = r"[+-]?\d{1,18}"
_ARROW: dict[Kind, pa.DataType] = {
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "string": pa.string(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}


@dataclass(frozen=True)
class Limits:
    """The validation limits (from :class:`mlops.settings.DatasetSettings`)."""

    max_bytes: int = 200_000_000
    max_empty_fraction: float = 0.5
    min_rows: int = 2
    chunk_rows: int = CHUNK_ROWS


@dataclass(frozen=True)
class Profile:
    """What validation learnt about a file: column kinds in order, rows, time range."""

    format: Format
    schema: dict[str, Kind]
    rows: int
    time_min: datetime
    time_max: datetime


def reject(path: Path, rule: str, detail: str, *, schema: bool = False) -> DataError:
    """The error for a broken rule; ``schema`` for a column problem."""
    cls = SchemaError if schema else DataError
    return cls(f"{path}: rule {rule}: {detail}")


def check_name(name: str) -> str:
    """``name`` if it is a valid dataset name (never a path), else :class:`DataError`."""
    if not NAME_PATTERN.fullmatch(name):
        raise DataError(
            f"dataset name {name!r}: rule name: use 1 to 63 characters among a-z, 0-9, "
            "'_' and '-', starting with a letter or a digit"
        )
    return name


def source_format(path: Path) -> Format:
    """The file's format from its suffix."""
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise reject(path, "format", f"expected .csv, .parquet or .pq, not {path.suffix!r}")
    return fmt


def check_size(path: Path, max_bytes: int) -> int:
    """The file's size in bytes, after checking it exists and is not over ``max_bytes``."""
    if not path.is_file():
        raise DataError(f"{path}: does not exist or is not a file")
    size = path.stat().st_size
    if size > max_bytes:
        raise reject(
            path,
            "max-bytes",
            f"file is {size:,} bytes, the limit is {max_bytes:,} (MLOPS_DATASETS__MAX_BYTES)",
        )
    return size


def sha256_file(path: Path, max_bytes: int) -> str:
    """sha256 of the file's bytes, read in 1 MiB blocks (stops past ``max_bytes``)."""
    digest, seen = hashlib.sha256(), 0
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            seen += len(block)
            if seen > max_bytes:
                raise reject(path, "max-bytes", f"file grew past {max_bytes:,} bytes")
            digest.update(block)
    return digest.hexdigest()


def parse_timestamps(values: pd.Series) -> pd.Series:
    """ISO 8601 strings as UTC times; NaT where a value is not one (bare numbers too)."""
    text = values.astype(str)
    parsed = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
    return parsed.mask(text.str.fullmatch(r"[+-]?[\d.]+"))


def _csv_header(path: Path) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh), None)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise reject(path, "malformed", f"line 1: {exc}") from exc
    if not header or not any(name.strip() for name in header):
        raise reject(path, "header", "no header row (the first line must name the columns)")
    seen: set[str] = set()
    for i, raw in enumerate(header, start=1):
        name = raw.strip()
        if not name:
            raise reject(path, "header", f"column {i} has no name")
        if name in seen:
            raise reject(path, "header", f"column {name!r} is named twice")
        if re.fullmatch(r"[+-]?[\d.]+(e[+-]?\d+)?", name, re.IGNORECASE) or (
            not parse_timestamps(pd.Series([name])).isna().all()
        ):
            raise reject(
                path,
                "header",
                f"column {i} is named {name!r}, which looks like data: "
                "the first line must be a header row naming the columns",
            )
        seen.add(name)
    return [name.strip() for name in header]


def _arrow_kind(path: Path, name: str, dtype: pa.DataType) -> Kind | None:
    """The kind a Parquet type fixes; None for strings (inferred from the values)."""
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    if pa.types.is_boolean(dtype):
        return "bool"
    if pa.types.is_integer(dtype):
        return "int"
    if pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        return "float"
    if pa.types.is_timestamp(dtype) or pa.types.is_date(dtype):
        return "timestamp"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_null(dtype):
        return None
    raise reject(
        path, "column-type", f"column {name!r} has type {dtype}, not supported", schema=True
    )


def columns_of(path: Path, fmt: Format) -> dict[str, Kind | None]:
    """The file's columns in order, with the kind their Parquet type fixes (CSV: None)."""
    if fmt == "csv":
        return dict.fromkeys(_csv_header(path))
    try:
        schema = pq.ParquetFile(path).schema_arrow
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise reject(path, "malformed", f"not a readable Parquet file: {exc}") from exc
    return {f.name: _arrow_kind(path, f.name, f.type) for f in schema}


def read_chunks(path: Path, fmt: Format, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The file as frames of at most ``chunk_rows`` rows; CSV cells stripped, '' = missing."""
    try:
        if fmt == "parquet":
            for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
                yield batch.to_pandas()
            return
        reader = pd.read_csv(
            path,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            chunksize=chunk_rows,
            encoding="utf-8-sig",
            skipinitialspace=True,
        )
        with reader:
            for chunk in reader:
                chunk.columns = [str(c).strip() for c in chunk.columns]
                yield chunk.apply(lambda s: s.str.strip().mask(lambda v: v == ""))
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise reject(path, "malformed", str(exc).strip()) from exc


@dataclass
class _Column:
    kind: Kind | None
    candidates: set[Kind] = field(default_factory=lambda: set(_INFERRED))
    empty: int = 0

    def observe(self, values: pd.Series) -> None:
        present = values[values.notna()]
        if self.kind is not None or present.empty:
            return
        text = present.astype(str)
        checks = {
            "bool": lambda: text.str.lower().isin(("true", "false")).all(),
            "int": lambda: text.str.fullmatch(_INT).all(),
            "float": lambda: pd.to_numeric(text, errors="coerce").notna().all(),
            "timestamp": lambda: parse_timestamps(text).notna().all(),
        }
        for kind in list(self.candidates):
            if not checks[kind]():
                self.candidates.discard(kind)
        if not self.candidates:
            self.kind = "string"

    def final(self, rows: int) -> Kind:
        if self.kind is not None:
            return self.kind
        if self.empty == rows:
            return "string"
        return next(k for k in _INFERRED if k in self.candidates)


def profile(path: Path, *, fmt: Format, entity: str, timestamp: str, limits: Limits) -> Profile:
    """Validate the whole file chunk by chunk; its inferred schema, rows and time range."""
    columns = columns_of(path, fmt)
    for role, name in (("entity-column", entity), ("timestamp-column", timestamp)):
        if name not in columns:
            raise reject(
                path,
                role,
                f"column {name!r} not found; the columns are {', '.join(columns)}",
                schema=True,
            )
    if columns[timestamp] not in (None, "timestamp"):
        raise reject(
            path,
            "timestamp-column",
            f"column {timestamp!r} is {columns[timestamp]}, not a timestamp",
            schema=True,
        )
    stats = {name: _Column(kind) for name, kind in columns.items()}
    rows = 0
    t_min: pd.Timestamp | None = None
    t_max: pd.Timestamp | None = None
    for chunk in read_chunks(path, fmt, limits.chunk_rows):
        for name, column in stats.items():
            column.empty += int(chunk[name].isna().sum())
            column.observe(chunk[name])
        stamps = _check_timestamps(path, chunk[timestamp], timestamp, first_row=rows + 1)
        if stamps.notna().any():
            low, high = stamps.min(), stamps.max()
            t_min = low if t_min is None else min(t_min, low)
            t_max = high if t_max is None else max(t_max, high)
        rows += len(chunk)
    if rows < limits.min_rows:
        raise reject(
            path,
            "min-rows",
            f"{rows} data row(s), at least {limits.min_rows} required (MLOPS_DATASETS__MIN_ROWS)",
        )
    for role, name in (("entity-column", entity), ("timestamp-column", timestamp)):
        if stats[name].empty == rows:
            raise reject(path, role, f"column {name!r} has no values", schema=True)
    for name, column in stats.items():
        share = column.empty / rows
        if share > limits.max_empty_fraction:
            raise reject(
                path,
                "max-empty",
                f"column {name!r} is {share:.0%} empty ({column.empty} of {rows} cells), "
                f"the limit is {limits.max_empty_fraction:.0%} "
                "(MLOPS_DATASETS__MAX_EMPTY_FRACTION)",
                schema=True,
            )
    assert t_min is not None and t_max is not None  # the column has values
    schema = {name: column.final(rows) for name, column in stats.items()}
    schema[timestamp] = "timestamp"
    return Profile(
        format=fmt,
        schema=schema,
        rows=rows,
        time_min=t_min.to_pydatetime(),
        time_max=t_max.to_pydatetime(),
    )


def _check_timestamps(path: Path, values: pd.Series, name: str, *, first_row: int) -> pd.Series:
    """The chunk's timestamps as UTC; names the first row whose value is not one."""
    if pd.api.types.is_datetime64_any_dtype(values):
        stamps = pd.Series(values)
        return stamps.dt.tz_localize("UTC") if stamps.dt.tz is None else stamps.dt.tz_convert("UTC")
    if not (pd.api.types.is_object_dtype(values) or pd.api.types.is_string_dtype(values)):
        raise reject(
            path, "timestamp-column", f"column {name!r} is {values.dtype}, not a timestamp"
        )
    stamps = parse_timestamps(values).where(values.notna())
    bad = stamps.isna() & values.notna()
    if bad.any():
        position = int(bad.to_numpy().argmax())
        raise reject(
            path,
            "timestamp-column",
            f"column {name!r}, row {first_row + position}: {values.iloc[position]!r} is not "
            "an ISO 8601 timestamp",
            schema=True,
        )
    return stamps


def arrow_schema(schema: dict[str, Kind]) -> pa.Schema:
    """The Parquet schema a profiled dataset is written with."""
    return pa.schema([(name, _ARROW[kind]) for name, kind in schema.items()])


def normalize(chunk: pd.DataFrame, schema: dict[str, Kind]) -> pa.Table:
    """One chunk converted to the inferred kinds (timestamps as UTC microseconds)."""
    out: dict[str, pd.Series] = {}
    for name, kind in schema.items():
        values = chunk[name]
        if kind == "int":
            out[name] = pd.to_numeric(values).astype("Int64")
        elif kind == "float":
            out[name] = pd.to_numeric(values).astype("float64")
        elif kind == "bool":
            if not pd.api.types.is_bool_dtype(values):
                values = values.str.lower().map({"true": True, "false": False})
            out[name] = values.astype("boolean")
        elif kind == "timestamp":
            if pd.api.types.is_datetime64_any_dtype(values):
                stamps = pd.Series(values)
                stamps = stamps.dt.tz_localize("UTC") if stamps.dt.tz is None else stamps
            else:
                stamps = parse_timestamps(values)
            out[name] = stamps.dt.tz_convert("UTC").astype("datetime64[us, UTC]")
        else:
            out[name] = values.astype("string")
    return pa.Table.from_pandas(
        pd.DataFrame(out), schema=arrow_schema(schema), preserve_index=False
    )


def normalized_tables(
    path: Path, *, fmt: Format, schema: dict[str, Kind], chunk_rows: int
) -> Iterator[pa.Table]:
    """The second pass: the file's chunks as Arrow tables of the profiled schema."""
    for chunk in read_chunks(path, fmt, chunk_rows):
        yield normalize(chunk, schema)
