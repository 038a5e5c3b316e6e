"""Dataset validation rules on real files: each rejection names file, rule and column/row."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mlops.datasets.validate import Limits, check_name, check_size, profile, source_format
from mlops.errors import DataError, SchemaError

GOOD = "user_id,ts,amount,flag,city\n1,2024-05-01T10:00:00Z,1.5,true,Oslo\n2,2024-05-02,2,false,\n"


def write(tmp_path: Path, text: str, name: str = "events.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def run(path: Path, *, entity: str = "user_id", timestamp: str = "ts", **limits: int | float):
    fmt = source_format(path)
    return profile(path, fmt=fmt, entity=entity, timestamp=timestamp, limits=Limits(**limits))


def test_good_csv_schema_rows_and_time_range(tmp_path: Path) -> None:
    found = run(write(tmp_path, GOOD))
    assert found.schema == {
        "user_id": "int",
        "ts": "timestamp",
        "amount": "float",
        "flag": "bool",
        "city": "string",
    }
    assert found.rows == 2
    assert found.time_min == pd.Timestamp("2024-05-01T10:00:00Z")
    assert found.time_max == pd.Timestamp("2024-05-02T00:00:00Z")


def test_good_parquet_types_come_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    pd.DataFrame(
        {
            "user_id": ["a", "b", "c"],
            "ts": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03"]),
            "n": pd.array([1, None, 3], dtype="Int64"),
            "ok": [True, False, True],
        }
    ).to_parquet(path)
    found = run(path)
    assert found.schema == {"user_id": "string", "ts": "timestamp", "n": "int", "ok": "bool"}
    assert found.rows == 3


def test_too_big(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    with pytest.raises(DataError, match="rule max-bytes") as info:
        check_size(path, max_bytes=10)
    assert str(path) in str(info.value)
    assert "MLOPS_DATASETS__MAX_BYTES" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        check_size(tmp_path / "nope.csv", max_bytes=10)


def test_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"rule format: expected \.csv"):
        source_format(tmp_path / "events.xlsx")


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("1,2024-05-01,3\n2,2024-05-02,4\n", "looks like data"),
        ("", "no header row"),
        ("user_id,,ts\n1,2,2024-05-01\n", "column 2 has no name"),
        ("user_id,ts,ts\n1,2024-05-01,x\n", "column 'ts' is named twice"),
    ],
)
def test_no_header(tmp_path: Path, text: str, detail: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(DataError, match="rule header") as info:
        run(path)
    assert detail in str(info.value)
    assert str(path) in str(info.value)


def test_one_row_is_too_few(tmp_path: Path) -> None:
    path = write(tmp_path, "user_id,ts\n1,2024-05-01\n")
    with pytest.raises(DataError, match=r"rule min-rows: 1 data row\(s\), at least 2"):
        run(path)


def test_header_only_is_too_few(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"rule min-rows: 0 data row"):
        run(write(tmp_path, "user_id,ts\n"))


def test_mostly_empty_column(tmp_path: Path) -> None:
    text = "user_id,ts,note\n1,2024-05-01,x\n2,2024-05-02,\n3,2024-05-03,  \n"
    path = write(tmp_path, text)
    with pytest.raises(SchemaError, match="rule max-empty") as info:
        run(path)
    message = str(info.value)
    assert str(path) in message and "column 'note'" in message and "67% empty (2 of 3" in message
    assert run(path, max_empty_fraction=0.7).schema["note"] == "string"


def test_half_empty_column_is_allowed(tmp_path: Path) -> None:
    found = run(write(tmp_path, "user_id,ts,note\n1,2024-05-01,x\n2,2024-05-02,\n"))
    assert found.schema["note"] == "string"


@pytest.mark.parametrize(
    ("entity", "timestamp", "rule", "column"),
    [
        ("customer", "ts", "entity-column", "customer"),
        ("user_id", "event_time", "timestamp-column", "event_time"),
    ],
)
def test_missing_declared_column(
    tmp_path: Path, entity: str, timestamp: str, rule: str, column: str
) -> None:
    path = write(tmp_path, GOOD)
    with pytest.raises(SchemaError, match=f"rule {rule}") as info:
        run(path, entity=entity, timestamp=timestamp)
    message = str(info.value)
    assert str(path) in message and f"column {column!r} not found" in message
    assert "user_id, ts, amount" in message


def test_unparseable_timestamp_names_the_row(tmp_path: Path) -> None:
    path = write(tmp_path, "user_id,ts\n1,2024-05-01\n2,yesterday\n3,2024-05-03\n")
    with pytest.raises(SchemaError, match="rule timestamp-column") as info:
        run(path)
    assert "column 'ts', row 2: 'yesterday' is not an ISO 8601 timestamp" in str(info.value)


def test_epoch_numbers_are_not_timestamps(tmp_path: Path) -> None:
    path = write(tmp_path, "user_id,ts\n1,1714567890\n2,1714567891\n")
    with pytest.raises(SchemaError, match="row 1: '1714567890' is not an ISO 8601"):
        run(path)


def test_bad_timestamp_past_the_first_chunk(tmp_path: Path) -> None:
    lines = [f"{i},2024-05-01T00:00:{i % 60:02d}Z" for i in range(1, 251)]
    lines[199] = "200,not-a-time"
    path = write(tmp_path, "user_id,ts\n" + "\n".join(lines) + "\n")
    with pytest.raises(SchemaError, match="row 200: 'not-a-time'"):
        run(path, chunk_rows=64)


def test_all_null_timestamp(tmp_path: Path) -> None:
    path = write(tmp_path, "user_id,ts\n1,\n2,\n")
    with pytest.raises(SchemaError, match="rule timestamp-column: column 'ts' has no values"):
        run(path, max_empty_fraction=1.0)


def test_all_null_entity(tmp_path: Path) -> None:
    path = write(tmp_path, "user_id,ts\n,2024-05-01\n,2024-05-02\n")
    with pytest.raises(SchemaError, match="rule entity-column: column 'user_id' has no values"):
        run(path, max_empty_fraction=1.0)


def test_parquet_timestamp_of_another_type(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    pd.DataFrame({"user_id": [1, 2], "ts": [1714567890, 1714567891]}).to_parquet(path)
    with pytest.raises(SchemaError, match="rule timestamp-column: column 'ts' is int"):
        run(path)


def test_malformed_csv_row(tmp_path: Path) -> None:
    path = write(tmp_path, "user_id,ts\n1,2024-05-01\n2,2024-05-02,extra,fields\n")
    with pytest.raises(DataError, match="rule malformed"):
        run(path)


def test_not_parquet(tmp_path: Path) -> None:
    path = write(tmp_path, "not parquet", name="events.parquet")
    with pytest.raises(DataError, match="rule malformed: not a readable Parquet file"):
        run(path)


def test_mixed_column_falls_back_to_string_across_chunks(tmp_path: Path) -> None:
    rows = [f"{i},2024-05-01,{i}" for i in range(100)] + ["100,2024-05-01,n/a"]
    found = run(write(tmp_path, "user_id,ts,v\n" + "\n".join(rows) + "\n"), chunk_rows=10)
    assert found.schema["v"] == "string"


@pytest.mark.parametrize("name", ["trips", "a", "user-events_2024", "0abc", "x" * 63])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "Trips", "_x", "-x", "x" * 64, "a b", "a.csv", "../x", "a/../../etc", "/abs", "x\n"],
)
def test_bad_names(name: str) -> None:
    with pytest.raises(DataError, match="rule name"):
        check_name(name)
