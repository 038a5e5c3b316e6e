"""Feature views from YAML: the format, every error message, and their place among views."""

from __future__ import annotations

import textwrap
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from mlops.errors import ConfigurationError, FeatureViewError
from mlops.features.definition import Aggregation, Source
from mlops.features.yaml_defs import check_source_columns, load_views, parse_duration
from mlops.settings import Settings
from mlops.specs import (
    SPECS,
    ModelSpec,
    all_views,
    card_transactions_view,
    code_views,
    fraud_detector,
    get_view,
)
from tests.unit.conftest import make_view

REPO = Path(__file__).resolve().parents[2]

VIEW = """\
views:
  - name: merchant_activity
    entity: merchant_id
    timestamp: event_timestamp
    source: data/merchant_events.parquet
    features: [amount]
    aggregations:
      - {column: amount, function: mean, window: 24h}
      - {column: transaction_id, function: count, window: 7d, name: tx_7d}
    ttl: 7d
"""

COLUMNS = ["merchant_id", "event_timestamp", "ingested_at", "amount", "transaction_id"]


def write(folder: Path, text: str, name: str = "features.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def events(columns: list[str] = COLUMNS) -> pd.DataFrame:
    values = {
        "merchant_id": ["m1", "m2"],
        "event_timestamp": pd.to_datetime(["2026-01-01T00:00Z", "2026-01-01T01:00Z"]),
        "ingested_at": pd.to_datetime(["2026-01-01T00:05Z", "2026-01-01T01:05Z"]),
        "amount": [1.5, 2.5],
        "transaction_id": ["t1", "t2"],
    }
    return pd.DataFrame({c: values[c] for c in columns})


def load_error(path: Path) -> str:
    with pytest.raises(FeatureViewError) as info:
        load_views(path)
    return str(info.value)


# --- durations ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("1h", 3600), ("24h", 86_400), ("7d", 604_800), (3600, 3600)],
)
def test_durations(text: str | int, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["24x", "1.5h", "", "h", "-1h", 0, -5, True, None, 1.5])
def test_bad_durations_say_why(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


# --- loading --------------------------------------------------------------------------------
def test_loads_a_view_with_sources_relative_to_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        VIEW
        + """\
    created_timestamp: ingested_at
    owner: risk-team
    description: Merchant activity.
    tags: {team: risk, tier: 2, pii: false}
  - name: merchant_csv
    entity: merchant_id
    timestamp: event_timestamp
    source: /abs/events.CSV
    aggregations: [{column: amount, function: max, window: 3600}]
""",
    )
    first, second = load_views(path)
    assert first.name == "merchant_activity"
    assert first.source == Source(path=tmp_path / "data" / "merchant_events.parquet")
    assert first.feature_names == ["amount", "amount_mean_24h", "tx_7d"]
    assert first.aggregations[1] == Aggregation(
        "transaction_id", "count", timedelta(days=7), "tx_7d"
    )
    assert first.ttl == timedelta(days=7)
    assert first.created_timestamp == "ingested_at"
    assert (first.owner, first.description) == ("risk-team", "Merchant activity.")
    assert first.tags == {"team": "risk", "tier": "2", "pii": "false"}
    assert second.source == Source(path=Path("/abs/events.CSV"), format="csv")
    assert second.feature_names == ["amount_max_1h"]
    assert second.ttl == timedelta(days=7)  # the default


def test_a_yaml_view_has_the_same_version_as_the_same_view_in_code(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        views:
          - name: card_transactions
            entity: card_id
            timestamp: event_timestamp
            source: elsewhere/transactions.parquet   # the source is not part of the version
            features: [amount, is_online, distance_km]
            aggregations:
              - {column: transaction_id, function: count, window: 1h}
              - {column: transaction_id, function: count, window: 24h}
              - {column: transaction_id, function: count, window: 7d}
              - {column: amount, function: mean, window: 1d}
              - {column: amount, function: mean, window: 604800}
              - {column: amount, function: max, window: 1440m}
              - {column: distance_km, function: mean, window: 86400s}
            ttl: 7d
            owner: someone else    # descriptive fields are not part of it either
            tags: {team: risk}
        """,
    )
    (loaded,) = load_views(path)
    in_code = card_transactions_view(Source.from_path("transactions.parquet"))
    assert loaded.definition() == in_code.definition()
    assert loaded.version == in_code.version

    changed = write(tmp_path, path.read_text().replace("ttl: 7d", "ttl: 6d"), "changed.yaml")
    assert load_views(changed)[0].version != in_code.version


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "views:\n", "views: []\n"])
def test_an_empty_file_has_no_views(tmp_path: Path, text: str) -> None:
    assert load_views(write(tmp_path, text)) == []


def test_the_example_file_loads() -> None:
    (view,) = load_views(REPO / "examples" / "features.yaml")
    assert view.name == "merchant_category_activity"
    assert view.entity == "merchant_category"
    assert "tx_7d" in view.feature_names and "online_share_24h" in view.feature_names
    assert view.ttl == timedelta(days=2)
    assert view.tags == {"team": "risk", "tier": "2"}


# --- errors ---------------------------------------------------------------------------------
def test_invalid_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "views:\n  - name: a\n    features: [amount\n    ttl: 1d\n")
    message = load_error(path)
    assert message.startswith(f"{path}:")
    assert "invalid YAML" in message and "line 4" in message


def test_a_typo_in_a_key_is_an_unknown_key_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, VIEW.replace("aggregations:", "agregations:"))
    message = load_error(path)
    assert message.startswith(f"{path}:7: views[0] ('merchant_activity'): agregations: ")
    assert "unknown key (did you mean 'aggregations'?)" in message


def test_an_unknown_key_of_an_aggregation(tmp_path: Path) -> None:
    path = write(tmp_path, VIEW.replace("function: mean,", "function: mean, colour: red,"))
    message = load_error(path)
    assert f"{path}:8: views[0] ('merchant_activity'): aggregations[0].colour: unknown key" in (
        message
    )
    assert "allowed: column, function, window, name" in message


def test_an_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, VIEW.replace("views:", "view:"))
    assert "unknown top-level key 'view' (did you mean 'views'?)" in load_error(path)
    path = write(tmp_path, "- name: a\n")
    assert f"{path}:1: the file must be a mapping" in load_error(path)
    path = write(tmp_path, "views: {name: a}\n")
    assert f"{path}:1: `views` must be a list" in load_error(path)


def test_missing_required_keys_name_the_view_by_name_or_index(tmp_path: Path) -> None:
    path = write(tmp_path, VIEW.replace("    entity: merchant_id\n", ""))
    assert "views[0] ('merchant_activity'): missing required key 'entity'" in load_error(path)
    path = write(tmp_path, VIEW + "  - entity: merchant_id\n    timestamp: ts\n")
    message = load_error(path)
    assert f"{path}:11: views[1]: missing required key 'name'" in message
    path = write(tmp_path, VIEW.replace("window: 24h}", "}"))
    assert "aggregations[0]: missing required key 'window'" in load_error(path)
    path = write(tmp_path, VIEW + "  - just a string\n")
    assert "views[1]: must be a mapping of view fields" in load_error(path)


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("window: 24h", "window: 24x", "aggregations[0].window"),
        ("window: 7d", "window: 0", "aggregations[1].window"),
        ("ttl: 7d", "ttl: soon", "ttl"),
    ],
)
def test_a_bad_window_names_the_field(tmp_path: Path, old: str, new: str, field: str) -> None:
    path = write(tmp_path, VIEW.replace(old, new))
    message = load_error(path)
    assert f"views[0] ('merchant_activity'): {field}: " in message
    assert "duration" in message


def test_an_unknown_function(tmp_path: Path) -> None:
    path = write(tmp_path, VIEW.replace("function: mean", "function: avg"))
    message = load_error(path)
    assert f"{path}:8: views[0] ('merchant_activity'): aggregations[0].function: " in message
    assert "unknown function 'avg' (one of count, sum, mean, min, max)" in message


def test_duplicate_feature_names(tmp_path: Path) -> None:
    path = write(tmp_path, VIEW.replace("name: tx_7d", "name: amount"))
    message = load_error(path)
    assert f"{path}:9: views[0] ('merchant_activity'): aggregations[1]: " in message
    assert "duplicate feature name 'amount' (also made by features[0])" in message


def test_duplicate_view_names_in_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, VIEW + VIEW.removeprefix("views:\n"))
    message = load_error(path)
    assert f"{path}:11: views[1] ('merchant_activity'): name: " in message
    assert "duplicate view name 'merchant_activity' (also views[0])" in message


def test_a_key_given_twice_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, VIEW + "    features: [amount]\n")
    assert "views[0] ('merchant_activity'): key(s) given twice: features" in load_error(path)


def test_wrong_types_name_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, VIEW.replace("features: [amount]", "features: amount"))
    assert "features: must be a list of column names" in load_error(path)
    path = write(tmp_path, VIEW.replace("ttl: 7d", "tags: [a, b]"))
    assert "tags: must be a mapping" in load_error(path)
    path = write(tmp_path, VIEW.replace("name: tx_7d", "name: tx 7d"))
    assert "aggregations[1].name: 'tx 7d' is not a valid name" in load_error(path)


def test_the_view_definition_checks_are_wrapped_with_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, VIEW.replace("entity: merchant_id", "entity: merchant id"))
    message = load_error(path)
    assert message.startswith(f"{path}:2: views[0] ('merchant_activity'): ")
    assert "entity 'merchant id' is not a valid identifier" in message


def test_unknown_columns_of_a_parquet_source(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    events().to_parquet(tmp_path / "data" / "merchant_events.parquet")
    assert len(load_views(write(tmp_path, VIEW))) == 1

    path = write(tmp_path, VIEW.replace("features: [amount]", "features: [amout]"))
    message = load_error(path)
    assert f"{path}:6: views[0] ('merchant_activity'): features[0]: " in message
    assert "unknown column 'amout' (did you mean 'amount'?)" in message
    assert f"has columns: {', '.join(COLUMNS)}" in message

    path = write(tmp_path, VIEW.replace("column: transaction_id", "column: tx_id"))
    message = load_error(path)
    assert f"{path}:9: " in message and "aggregations[1].column: unknown column 'tx_id'" in message


def test_unknown_columns_of_a_csv_source(tmp_path: Path) -> None:
    events([c for c in COLUMNS if c != "ingested_at"]).to_csv(tmp_path / "events.csv", index=False)
    text = VIEW.replace("data/merchant_events.parquet", "events.csv")
    assert load_views(write(tmp_path, text))[0].source.format == "csv"

    path = write(tmp_path, text + "    created_timestamp: ingested_at\n")
    message = load_error(path)
    assert f"{path}:11: views[0] ('merchant_activity'): created_timestamp: " in message
    assert "unknown column 'ingested_at'" in message
    assert "has columns: merchant_id, event_timestamp, amount, transaction_id" in message


def test_check_source_columns_of_a_view_in_code(tmp_path: Path) -> None:
    source = tmp_path / "events.parquet"
    view = make_view(entity="merchant_id", timestamp="event_timestamp", source=Source(path=source))
    check_source_columns(view)  # no source yet: nothing to check
    events().to_parquet(source)
    check_source_columns(view)
    bad = make_view(entity="merchant", timestamp="event_timestamp", source=Source(path=source))
    with pytest.raises(FeatureViewError) as info:
        check_source_columns(bad)
    assert str(info.value).startswith("feature view 'card_tx': entity: unknown column 'merchant'")
    assert str(source) in str(info.value)

    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(FeatureViewError, match="has no header line"):
        check_source_columns(make_view(source=Source(path=empty, format="csv")))


# --- among the views of the specs -----------------------------------------------------------
def test_all_views_adds_the_yaml_views_to_the_code_views(clean_mlops_env: Path) -> None:
    assert [v.name for v in all_views(Settings())] == ["card_transactions"]  # no file yet
    write(Path.cwd(), VIEW)
    settings = Settings()
    assert settings.features.definitions == Path.cwd() / "features.yaml"
    assert [v.name for v in all_views(settings)] == ["card_transactions", "merchant_activity"]
    assert get_view("merchant_activity", settings).source.path == (
        Path.cwd() / "data" / "merchant_events.parquet"
    )
    assert get_view("card_transactions", settings) == code_views(settings)[0]
    with pytest.raises(ConfigurationError, match="known: card_transactions, merchant_activity"):
        get_view("nope", settings)


def test_a_yaml_view_named_like_a_code_view_is_an_error(
    clean_mlops_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, VIEW.replace("merchant_activity", "card_transactions"), "defs.yaml")
    monkeypatch.setenv("MLOPS_FEATURES__DEFINITIONS", str(path))
    with pytest.raises(FeatureViewError) as info:
        all_views(Settings())
    assert "'card_transactions' is declared twice: in code" in str(info.value)
    assert str(path) in str(info.value)


def test_a_broken_yaml_file_breaks_get_view(clean_mlops_env: Path) -> None:
    write(Path.cwd(), VIEW.replace("window: 24h", "window: 24x"))
    with pytest.raises(FeatureViewError, match=r"aggregations\[0\]\.window"):
        get_view("card_transactions", Settings())


def test_code_views_shared_by_two_specs_count_once(
    clean_mlops_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def twin(settings: Settings) -> ModelSpec:  # a second model on the same view
        return replace(fraud_detector(settings), name="twin")

    monkeypatch.setitem(SPECS, "twin", twin)
    assert [v.name for v in code_views(Settings())] == ["card_transactions"]

    def rival(settings: Settings) -> ModelSpec:  # the same name, another definition
        spec = fraud_detector(settings)
        return replace(spec, name="rival", views=(replace(spec.views[0], ttl=timedelta(days=1)),))

    monkeypatch.setitem(SPECS, "rival", rival)
    with pytest.raises(FeatureViewError, match="'card_transactions' has two definitions in code"):
        all_views(Settings())
