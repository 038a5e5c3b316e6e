"""The Datasets page: uploads through the library's validation into the home's real
catalog (SQLite) and datasets folder; rejections named next to the file."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from mlops.data.generate import generate_transactions
from mlops.datasets import DatasetVersion, dataset_file, list_datasets, open_catalog
from mlops.settings import Settings
from mlops.specs import transactions_path
from tests.integration._console import (
    PASSWORD,
    TOKEN,
    console,
    platform_env,
    server_navigation,
    texts,
)

pytestmark = pytest.mark.integration

GOOD = (
    "card_id,event_timestamp,amount,is_fraud\n"
    "card_1,2026-01-01T10:00:00Z,12.5,0\n"
    "card_2,2026-01-01T11:30:00Z,99.0,1\n"
    "card_1,2026-01-02T09:15:00Z,7.25,0\n"
)


@pytest.fixture
def settings(mlops_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    with server_navigation():
        yield platform_env(monkeypatch, prefect=False)


def catalog_records(settings: Settings) -> list[DatasetVersion]:
    catalog = open_catalog(settings.datasets.catalog_url or "")
    try:
        return list_datasets(catalog=catalog)
    finally:
        catalog.engine.dispose()


def test_a_valid_csv_is_added_listed_and_previewed(settings: Settings) -> None:
    at = console("datasets", secret=TOKEN).run()
    assert texts(at.title) == ["Datasets"]
    assert texts(at.info) == ["No dataset yet: add a CSV or Parquet file above."]

    at.file_uploader[0].upload("Card Labels.csv", GOOD.encode(), "text/csv").run()
    assert not at.error, texts(at.error)
    assert at.text_input[0].value == "card_labels"  # a valid name from the file's
    entity, timestamp = at.selectbox[0], at.selectbox[1]
    assert entity.options == ["card_id", "event_timestamp", "amount", "is_fraud"]
    assert (entity.value, timestamp.value) == ("card_id", "event_timestamp")
    at.text_input[0].input("labels")
    at.button(key="FormSubmitter:add_dataset-Validate and add").click().run()
    assert not at.exception and not at.error, texts(at.error)
    assert texts(at.success) == [
        "Added Card Labels.csv as dataset labels version 1: 3 rows from 2026-01-01 10:00 UTC "
        "to 2026-01-02 09:15 UTC."
    ]

    (record,) = catalog_records(settings)
    assert (record.name, record.version, record.rows) == ("labels", 1, 3)
    stored = pd.read_parquet(dataset_file(settings, record))
    assert list(stored["amount"]) == [12.5, 99.0, 7.25]

    versions = at.dataframe[0].value
    assert versions.iloc[0][["dataset", "version", "rows", "entity", "timestamp"]].tolist() == [
        "labels",
        1,
        3,
        "card_id",
        "event_timestamp",
    ]
    schema = at.dataframe[1].value.set_index("column")
    assert schema.loc["amount", "kind"] == "float" and schema.loc["card_id", "role"] == "entity"
    preview = at.dataframe[2].value
    assert len(preview) == 3 and list(preview["card_id"]) == ["card_1", "card_2", "card_1"]
    assert at.get("vega_lite_chart"), "rows per day"

    # the same bytes again: the same version, not a second one
    at.button(key="FormSubmitter:add_dataset-Validate and add").click().run()
    assert "version 1" in at.success[0].value
    assert len(catalog_records(settings)) == 1


def test_an_upload_removes_the_ones_abandoned_by_other_sessions(settings: Settings) -> None:
    uploads = settings.home / "console-uploads"
    abandoned, recent = uploads / "upload-closed-tab", uploads / "upload-other-tab"
    for folder in (abandoned, recent):
        folder.mkdir(parents=True)
        (folder / "events.csv").write_text(GOOD)
    old = time.time() - 7 * 3600  # ui/pages/datasets.py: STALE_UPLOAD_S is 6 hours
    os.utime(abandoned, (old, old))

    at = console("datasets", secret=TOKEN).run()
    at.file_uploader[0].upload("labels.csv", GOOD.encode(), "text/csv").run()
    assert not at.exception and not at.error, texts(at.error)
    left = sorted(p.name for p in uploads.iterdir())
    assert "upload-closed-tab" not in left and "upload-other-tab" in left
    assert len(left) == 2  # the other tab's, and this session's own


def test_a_broken_rule_is_named_next_to_the_file(settings: Settings) -> None:
    at = console("datasets", secret=TOKEN).run()
    bad_time = GOOD.replace("2026-01-02T09:15:00Z", "yesterday")
    at.file_uploader[0].upload("late.csv", bad_time.encode(), "text/csv").run()
    at.button(key="FormSubmitter:add_dataset-Validate and add").click().run()
    assert not at.exception
    (message,) = texts(at.error)
    assert message.startswith("**late.csv** breaks rule `timestamp-column`: ")
    assert "column 'event_timestamp', row 3: 'yesterday' is not an ISO 8601 timestamp" in message
    assert "Pick a column of ISO 8601 times" in message
    assert "console-uploads" not in message  # the user's file name, not our copy's
    assert not at.success and catalog_records(settings) == []

    # a header that is not one is refused as soon as the file is chosen
    at.file_uploader[0].set_value(
        ("twice.csv", b"card_id,card_id\ncard_1,card_2\n", "text/csv")
    ).run()
    (message,) = texts(at.error)
    assert message.startswith("**twice.csv** breaks rule `header`: column 'card_id' is named twice")
    assert "Validate and add" not in [b.label for b in at.button]  # no form for it


def test_empty_cells_over_the_limit_name_the_column_and_the_setting(
    settings: Settings,
) -> None:
    at = console("datasets", secret=TOKEN).run()
    sparse = io.StringIO()
    pd.DataFrame(
        {
            "card_id": ["a", "b", "c", "d"],
            "ts": ["2026-01-01T00:00:00Z"] * 4,
            "note": ["x", None, None, None],
        }
    ).to_csv(sparse, index=False)
    at.file_uploader[0].upload("sparse.csv", sparse.getvalue().encode(), "text/csv").run()
    at.selectbox[1].set_value("ts")
    at.button(key="FormSubmitter:add_dataset-Validate and add").click().run()
    (message,) = texts(at.error)
    assert "breaks rule `max-empty`: column 'note' is 75% empty" in message
    assert "MLOPS_DATASETS__MAX_EMPTY_FRACTION" in message


def test_viewers_cannot_add_a_dataset(settings: Settings) -> None:
    at = console("datasets", secret=PASSWORD).run()
    at.file_uploader[0].upload("labels.csv", GOOD.encode(), "text/csv").run()
    submit = at.button(key="FormSubmitter:add_dataset-Validate and add")
    assert submit.proto.disabled
    assert any("needs the management token" in c for c in texts(at.caption))
    assert catalog_records(settings) == []


def test_an_uploaded_event_file_becomes_the_models_events(settings: Settings) -> None:
    """Upload → "use as the events of fraud_detector": the file the views materialize
    from now holds those events; a file without the views' columns is refused and the
    events already there stay."""
    events = generate_transactions(n_entities=20, days=3, seed=1)
    upload = io.StringIO()
    events.to_csv(upload, index=False)
    at = console("datasets", secret=TOKEN).run()
    at.file_uploader[0].upload("transactions.csv", upload.getvalue().encode(), "text/csv").run()
    at.button(key="FormSubmitter:add_dataset-Validate and add").click().run()
    assert not at.error, texts(at.error)

    at.button(key="FormSubmitter:use_as_events-Use transactions@1 as its events").click().run()
    assert not at.exception and not at.error, texts(at.error)
    target = Path(transactions_path(settings))
    assert f"{len(events):,} events of transactions@1" in at.success[-1].value
    stored = pd.read_parquet(target)
    assert len(stored) == len(events)
    assert stored["amount"].sum() == pytest.approx(events["amount"].sum())

    # labels only (no amount, distance...): refused, the events stay
    at.file_uploader[0].upload("labels.csv", GOOD.encode(), "text/csv").run()
    at.button(key="FormSubmitter:add_dataset-Validate and add").click().run()
    chooser = next(s for s in at.selectbox if s.label == "Schema and preview of")
    chooser.set_value("labels@1").run()
    at.button(key="FormSubmitter:use_as_events-Use labels@1 as its events").click().run()
    (message,) = texts(at.error)
    assert "labels@1 cannot be the events of fraud_detector" in message
    assert len(pd.read_parquet(target)) == len(events)
