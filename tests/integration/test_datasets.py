"""Datasets end to end on a real SQLite catalog and a real Postgres server.

Postgres is ``MLOPS_TEST_POSTGRES_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432``):
each test gets a fresh database ``mlops_test_<uuid>``, dropped afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from mlops.cli.datasets import datasets_app
from mlops.datasets import (
    ORPHAN_GRACE,
    DatasetCatalog,
    add_dataset,
    cleanup_expired,
    dataset_file,
    list_datasets,
    open_catalog,
    remove_orphans,
)
from mlops.errors import DataError, DatasetNotFoundError, MlopsError, SchemaError
from mlops.settings import Settings

pytestmark = pytest.mark.integration

runner = CliRunner()


@pytest.fixture(params=["sqlite", "postgres"])
def catalog_url(request: pytest.FixtureRequest, mlops_home: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{mlops_home / 'catalog.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def settings(catalog_url: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MLOPS_DATASETS__CATALOG_URL", catalog_url)
    monkeypatch.setenv("MLOPS_DATASETS__TTL_DAYS", "7")
    return Settings()


@pytest.fixture
def catalog(settings: Settings) -> Iterator[DatasetCatalog]:
    assert settings.datasets.catalog_url is not None
    catalog = open_catalog(settings.datasets.catalog_url)
    yield catalog
    catalog.engine.dispose()


def events(n: int = 5, *, start: str = "2024-05-01") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [f"u{i % 3}" for i in range(n)],
            "ts": pd.date_range(start, periods=n, freq="h", tz="UTC"),
            "amount": [float(i) + 0.5 for i in range(n)],
            "count": list(range(n)),
        }
    )


def write_csv(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, index=False)
    return path


def add(settings: Settings, catalog: DatasetCatalog, path: Path, **kwargs):
    args = {"name": "trips", "entity": "user_id", "timestamp": "ts", **kwargs}
    return add_dataset(settings=settings, catalog=catalog, path=path, **args)


def stored_files(settings: Settings) -> list[Path]:
    root = settings.datasets.path
    assert root is not None
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_add_csv_then_parquet_makes_versions(
    settings: Settings, catalog: DatasetCatalog, tmp_path: Path
) -> None:
    csv = write_csv(tmp_path / "../../etc-passwd.csv", events(5))
    v1 = add(settings, catalog, csv)
    assert (v1.version, v1.rows, v1.format) == (1, 5, "csv")
    assert v1.schema == {"user_id": "string", "ts": "timestamp", "amount": "float", "count": "int"}
    assert v1.time_min == pd.Timestamp("2024-05-01T00:00Z")
    assert v1.time_max == pd.Timestamp("2024-05-01T04:00Z")
    path = dataset_file(settings, v1)
    assert path == settings.datasets.path / v1.dataset_id / "v1.parquet"  # type: ignore[operator]
    assert v1.size_bytes == path.stat().st_size > 0
    stored = pd.read_parquet(path)
    pd.testing.assert_frame_equal(
        stored.astype({"ts": "datetime64[ns, UTC]"}), events(5), check_dtype=False
    )

    parquet = tmp_path / "more.parquet"
    events(8, start="2024-06-01").to_parquet(parquet)
    v2 = add(settings, catalog, parquet)
    assert (v2.version, v2.rows, v2.format, v2.dataset_id) == (2, 8, "parquet", v1.dataset_id)
    assert v2.time_max == pd.Timestamp("2024-06-01T07:00Z")
    assert [f.name for f in stored_files(settings)] == ["v1.parquet", "v2.parquet"]


def test_identical_upload_returns_the_existing_version(
    settings: Settings, catalog: DatasetCatalog, tmp_path: Path
) -> None:
    first = add(settings, catalog, write_csv(tmp_path / "a.csv", events(5)))
    again = add(settings, catalog, write_csv(tmp_path / "b.csv", events(5)))
    assert again == first
    other_entity = add(settings, catalog, tmp_path / "a.csv", entity="amount")
    assert other_entity.version == 2
    changed = add(settings, catalog, write_csv(tmp_path / "c.csv", events(6)))
    assert changed.version == 3
    assert len(stored_files(settings)) == 3


def test_list_and_get(settings: Settings, catalog: DatasetCatalog, tmp_path: Path) -> None:
    add(settings, catalog, write_csv(tmp_path / "a.csv", events(5)))
    add(settings, catalog, write_csv(tmp_path / "b.csv", events(7)))
    add(settings, catalog, write_csv(tmp_path / "c.csv", events(3)), name="clicks")
    listed = list_datasets(catalog=catalog)
    assert [(r.name, r.version, r.rows) for r in listed] == [
        ("clicks", 1, 3),
        ("trips", 1, 5),
        ("trips", 2, 7),
    ]
    latest = catalog.get("trips")
    assert latest.version == 2 and list(latest.schema) == ["user_id", "ts", "amount", "count"]
    assert latest.created_at.tzinfo is not None and latest.size_bytes > 0
    assert catalog.get("trips", 1).rows == 5
    with pytest.raises(DatasetNotFoundError, match="has no version 9"):
        catalog.get("trips", 9)
    with pytest.raises(DatasetNotFoundError, match="no dataset named 'nope'"):
        catalog.versions("nope")


def test_failure_past_the_first_chunk_leaves_nothing(
    settings: Settings, catalog: DatasetCatalog, tmp_path: Path
) -> None:
    frame = events(300).astype({"ts": str})
    frame.loc[250, "ts"] = "not-a-time"
    path = write_csv(tmp_path / "bad.csv", frame)
    with pytest.raises(SchemaError, match=r"bad\.csv: rule timestamp-column: column 'ts', row 251"):
        add(settings, catalog, path, chunk_rows=100)
    assert stored_files(settings) == []
    assert list_datasets(catalog=catalog) == []
    assert catalog.dataset_ref("trips") is None

    good = add(settings, catalog, write_csv(tmp_path / "good.csv", events(300)), chunk_rows=100)
    assert good.version == 1 and good.rows == 300
    with pytest.raises(DataError, match="rule min-rows"):
        add(settings, catalog, write_csv(tmp_path / "one.csv", events(1)))
    assert [p.name for p in stored_files(settings)] == ["v1.parquet"]
    assert [r.version for r in list_datasets(catalog=catalog)] == [1]


def test_too_big_and_bad_name_write_nothing(
    settings: Settings, catalog: DatasetCatalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_csv(tmp_path / "a.csv", events(50))
    with pytest.raises(DataError, match="rule name"):
        add(settings, catalog, path, name="../x")
    monkeypatch.setenv("MLOPS_DATASETS__MAX_BYTES", "100")
    small = Settings()
    with pytest.raises(DataError, match=r"a\.csv: rule max-bytes"):
        add(small, catalog, path)
    assert stored_files(settings) == [] and list_datasets(catalog=catalog) == []


def test_cleanup_expires_only_old_versions_and_is_idempotent(
    settings: Settings, catalog: DatasetCatalog, tmp_path: Path
) -> None:
    now = pd.Timestamp("2025-01-10T00:00Z").to_pydatetime()
    old = add(settings, catalog, write_csv(tmp_path / "a.csv", events(3)), now=now)
    new = add(
        settings, catalog, write_csv(tmp_path / "b.csv", events(4)), now=now + timedelta(days=5)
    )
    other = add(settings, catalog, write_csv(tmp_path / "c.csv", events(5)), name="clicks", now=now)
    dataset_file(settings, other).unlink()  # a file already gone is not an error

    assert cleanup_expired(settings=settings, catalog=catalog, now=now + timedelta(days=6)) == []
    removed = cleanup_expired(settings=settings, catalog=catalog, now=now + timedelta(days=8))
    assert {(r.name, r.version) for r in removed} == {("trips", 1), ("clicks", 1)}
    assert not dataset_file(settings, old).exists()
    assert dataset_file(settings, new).exists()
    assert [(r.name, r.version) for r in list_datasets(catalog=catalog)] == [("trips", 2)]
    assert cleanup_expired(settings=settings, catalog=catalog, now=now + timedelta(days=8)) == []

    # version numbers are never reused after expiry
    again = add(settings, catalog, write_csv(tmp_path / "d.csv", events(9)), name="clicks")
    assert again.version == 2


def test_ttl_zero_keeps_everything(
    catalog: DatasetCatalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLOPS_DATASETS__TTL_DAYS", "0")
    settings = Settings()
    record = add(settings, catalog, write_csv(tmp_path / "a.csv", events(3)))
    far = record.created_at + timedelta(days=10_000)
    assert cleanup_expired(settings=settings, catalog=catalog, now=far) == []
    assert dataset_file(settings, record).exists()


def test_cli_add_ls_show_cleanup(settings: Settings, tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "trips.csv", events(5))
    args = ["add", str(csv), "--name", "trips", "--entity", "user_id", "--timestamp", "ts"]
    result = runner.invoke(datasets_app, args)
    assert result.exit_code == 0, result.output
    assert "dataset trips version 1: 5 rows, 4 columns" in result.output

    result = runner.invoke(datasets_app, args)  # identical: the same version
    assert result.exit_code == 0 and "version 1" in result.output

    result = runner.invoke(datasets_app, ["ls"])
    assert result.exit_code == 0, result.output
    assert "trips" in result.output and "count:int" in result.output  # (rich folds at 80)

    result = runner.invoke(datasets_app, ["show", "trips", "--version", "1"])
    assert result.exit_code == 0, result.output
    assert "rows: 5" in result.output and "ts: timestamp" in result.output
    assert "time range (UTC): 2024-05-01 00:00:00 → 2024-05-01 04:00:00" in result.output

    result = runner.invoke(datasets_app, ["show", "trips", "--version", "3"])
    assert result.exit_code == 1
    assert "error: dataset 'trips' has no version 3" in result.output

    result = runner.invoke(datasets_app, ["cleanup"])  # TTL 7 days: nothing is old yet
    assert result.exit_code == 0, result.output
    assert "removed 0 expired version(s)" in result.output


def test_cli_rejection_exits_1_with_one_line(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("user_id,ts\n1,2024-05-01\n2,later\n")
    args = ["add", str(path), "--name", "trips", "--entity", "user_id", "--timestamp", "ts"]
    result = runner.invoke(datasets_app, args)
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert f"error: {path}: rule timestamp-column: column 'ts', row 2" in lines[0]

    result = runner.invoke(datasets_app, [*args[:3], "Bad Name", *args[4:]])
    assert result.exit_code == 1 and "rule name" in result.output


@pytest.mark.parametrize("command", ["add", "ls", "show", "cleanup"])
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = runner.invoke(datasets_app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output


def test_a_file_left_by_a_crashed_add_is_replaced_or_swept(
    settings: Settings, catalog: DatasetCatalog, tmp_path: Path
) -> None:
    v1 = add(settings, catalog, write_csv(tmp_path / "a.csv", events(5)))
    # A writer killed between linking v2 and inserting its row left this behind:
    orphan = dataset_file(settings, v1).with_name("v2.parquet")
    orphan.write_bytes(b"half of what a dead writer wrote")
    fresh = datetime.now(UTC)
    with pytest.raises(MlopsError, match="being written by another writer"):
        add(settings, catalog, write_csv(tmp_path / "b.csv", events(6)))  # could be live
    assert remove_orphans(settings=settings, catalog=catalog, now=fresh) == []

    old = (fresh - ORPHAN_GRACE - timedelta(minutes=1)).timestamp()
    os.utime(orphan, (old, old))
    v2 = add(settings, catalog, tmp_path / "b.csv")
    assert v2.version == 2 and pd.read_parquet(dataset_file(settings, v2)).shape == (6, 4)

    stray = dataset_file(settings, v1).with_name("v9.parquet")
    stray.write_bytes(b"orphan")
    os.utime(stray, (old, old))
    later = fresh + timedelta(seconds=1)
    assert remove_orphans(settings=settings, catalog=catalog, now=later) == [stray]
    assert remove_orphans(settings=settings, catalog=catalog, now=later) == []
    assert [f.name for f in stored_files(settings)] == ["v1.parquet", "v2.parquet"]
