"""``mlops features ls / describe / freshness`` in-process on a temporary home.

The home's real SQLite registry and online store (and a real Redis for one test); the
``mlops_home`` fixture runs each test in its own folder, where ``features.yaml`` is read.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from mlops.cli.common import console, err
from mlops.cli.main import app
from mlops.features.definition import FeatureView
from mlops.features.online import build_online_store
from mlops.features.registry import open_registry
from mlops.settings import Settings
from mlops.specs import get_view

pytestmark = pytest.mark.integration

runner = CliRunner()
JAN = datetime(2026, 1, 1, tzinfo=UTC)

YAML = """\
views:
  - name: merchant_activity
    entity: merchant_id
    timestamp: event_timestamp
    source: events.parquet
    features: [amount]
    aggregations:
      - {column: amount, function: mean, window: 24h}
    ttl: 1d
    owner: risk-team
    description: Merchant activity over the last day.
    tags: {team: risk}
"""


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich folds tables at 80 columns when not on a terminal: give them room."""
    monkeypatch.setattr(console, "width", 250)
    monkeypatch.setattr(err, "width", 250)


@pytest.fixture
def settings(mlops_home: Path) -> Settings:
    Path("features.yaml").write_text(YAML)  # the cwd is the test's folder
    return Settings()


def features(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["features", *args])
    return result.exit_code, result.output


def put_online(settings: Settings, view: FeatureView, ages: dict[str, timedelta]) -> None:
    """Online rows for ``view``: one per entity, its event time ``age`` ago."""
    now = datetime.now(UTC)
    frame = pd.DataFrame(
        {
            view.entity: list(ages),
            view.timestamp: [now - age for age in ages.values()],
            **{name: [1.0] * len(ages) for name in view.feature_names},
        }
    )
    store = build_online_store(settings.online_store)
    try:
        written = store.write_batch(
            view=view.name,
            version=view.version,
            frame=frame,
            entity=view.entity,
            timestamp=view.timestamp,
            features=view.feature_names,
            ttl=view.ttl,
        )
    finally:
        store.close()
    assert written == len(ages)


def record(settings: Settings, view: FeatureView, *, days: int, rows: int) -> None:
    assert settings.features.registry_url is not None
    registry = open_registry(settings.features.registry_url)
    try:
        registry.record_materialization(
            view,
            start=JAN,
            end=JAN + timedelta(days=days),
            rows=rows,
            partitions=days,
            entities_online=2,
            max_event_ts=JAN + timedelta(days=days, hours=-1),
        )
    finally:
        registry.dispose()


@pytest.mark.parametrize("command", [[], ["ls"], ["describe"], ["freshness"], ["skew"]])
def test_every_command_has_help_with_an_example(command: list[str]) -> None:
    code, output = features(*command, "--help")
    assert code == 0, output
    assert "Example" in output


def test_ls_lists_code_and_yaml_views_and_registers_them(settings: Settings) -> None:
    merchant = get_view("merchant_activity", settings)
    card = get_view("card_transactions", settings)
    code, output = features("ls")
    assert code == 0, output
    lines = {line.split("│")[1].strip(): line for line in output.splitlines() if "│" in line}
    assert merchant.version in lines["merchant_activity"]
    assert "risk-team" in lines["merchant_activity"]
    assert "never" in lines["merchant_activity"] and "empty" in lines["merchant_activity"]
    assert card.version in lines["card_transactions"] and "│ 10 " in lines["card_transactions"]

    assert settings.features.registry_url is not None
    registry = open_registry(settings.features.registry_url)
    try:
        assert {(r.name, r.version) for r in registry.views()} == {
            ("card_transactions", card.version),
            ("merchant_activity", merchant.version),
        }
    finally:
        registry.dispose()

    record(settings, merchant, days=7, rows=1_234)
    put_online(settings, merchant, {"m1": timedelta(hours=1), "m2": timedelta(hours=3)})
    code, output = features("ls")
    assert code == 0, output
    (line,) = [line for line in output.splitlines() if "merchant_activity" in line]
    assert "2026-01-01 → 2026-01-08" in line and "1,234" in line
    assert "1h" in line and "(fresh)" in line


def test_describe_shows_the_definition_versions_and_materializations(settings: Settings) -> None:
    old = get_view("merchant_activity", settings)
    code, output = features("describe", "merchant_activity")
    assert code == 0, output
    for expected in (
        f"view: merchant_activity version {old.version}",
        f"defined in: {settings.features.definitions}",
        "description: Merchant activity over the last day.",
        "owner: risk-team",
        "tags: team=risk",
        "entity: merchant_id",
        "timestamp: event_timestamp",
        "created timestamp: —",
        "ttl: 24h",
        f"source: {Path.cwd() / 'events.parquet'} (parquet)",
        "freshness: empty",
        f"* {old.version} (current)",
        "materializations: none yet",
    ):
        assert expected in output, expected
    (agg,) = [line for line in output.splitlines() if "amount_mean_24h" in line]
    assert "aggregation" in agg and "mean" in agg and "24h" in agg

    # A changed definition is a new version; the old one is still known, not current.
    Path("features.yaml").write_text(YAML.replace("ttl: 1d", "ttl: 2d"))
    new = get_view("merchant_activity", settings)
    record(settings, new, days=3, rows=99)
    code, output = features("describe", "merchant_activity")
    assert code == 0, output
    assert "ttl: 2d" in output
    assert f"* {new.version} (current)" in output
    assert f"   {old.version}: first registered" in output
    assert output.index(new.version) < output.index(f"   {old.version}")
    (run,) = [line for line in output.splitlines() if "2026-01-01 → 2026-01-04" in line]
    assert new.version in run and "99" in run

    code, output = features("describe", "card_transactions")
    assert code == 0, output
    assert "defined in: code (mlops/specs.py)" in output and "events_count_1h" in output


def test_describe_json(settings: Settings) -> None:
    view = get_view("merchant_activity", settings)
    record(settings, view, days=2, rows=50)
    put_online(settings, view, {"m1": timedelta(hours=30)})  # older than the 1 d TTL
    code, output = features("describe", "merchant_activity", "--json")
    assert code == 0, output
    shown = json.loads(output)
    assert shown["ref"] == view.ref
    assert (shown["owner"], shown["tags"], shown["ttl_s"]) == (
        "risk-team",
        {"team": "risk"},
        86_400,
    )
    assert [f["name"] for f in shown["features"]] == ["amount", "amount_mean_24h"]
    assert shown["features"][1]["function"] == "mean" and shown["features"][1]["window_s"] == 86_400
    assert [(v["version"], v["current"]) for v in shown["versions"]] == [(view.version, True)]
    (run,) = shown["materializations"]
    assert (run["start"], run["end"], run["rows"]) == (
        "2026-01-01T00:00:00+00:00",
        "2026-01-03T00:00:00+00:00",
        50,
    )
    assert shown["freshness"]["status"] == "stale"
    assert 30 * 3600 <= shown["freshness"]["age_s"] < 31 * 3600


def test_an_unknown_view_lists_the_known_ones(settings: Settings) -> None:
    for command in (["describe", "nope"], ["freshness", "nope"]):
        code, output = features(*command)
        assert code == 1
        assert (
            "error: unknown feature view 'nope'; known: card_transactions, merchant_activity"
            in (output)
        )


def test_freshness_statuses_and_the_check_exit_code(settings: Settings) -> None:
    code, output = features("freshness")
    assert code == 0, output
    assert output.count("empty") == 2

    code, output = features("freshness", "--check")
    assert code == 1
    assert "2 view(s) not fresh: card_transactions (empty), merchant_activity (empty)" in output

    merchant = get_view("merchant_activity", settings)
    card = get_view("card_transactions", settings)
    put_online(settings, merchant, {"m1": timedelta(hours=2), "m2": timedelta(hours=5)})
    put_online(settings, card, {"c1": timedelta(days=10)})  # older than the 7 d TTL
    code, output = features("freshness")
    assert code == 0, output
    rows = {line.split("│")[1].strip(): line for line in output.splitlines() if "│" in line}
    assert "2h" in rows["merchant_activity"] and "fresh" in rows["merchant_activity"]
    assert "24h" in rows["merchant_activity"]  # the TTL
    assert "10d" in rows["card_transactions"] and "stale" in rows["card_transactions"]

    code, output = features("freshness", "merchant_activity", "--check")
    assert code == 0, output
    assert "card_transactions" not in output
    code, output = features("freshness", "--check")
    assert code == 1
    assert "1 view(s) not fresh: card_transactions (stale)" in output


def test_freshness_on_redis(settings: Settings, redis_url: str, monkeypatch) -> None:
    monkeypatch.setenv("MLOPS_ONLINE_STORE__TYPE", "redis")
    monkeypatch.setenv("MLOPS_ONLINE_STORE__URL", redis_url)
    monkeypatch.setenv("MLOPS_ONLINE_STORE__KEY_PREFIX", f"test-{uuid.uuid4().hex[:8]}")
    redis_settings = Settings()
    view = get_view("merchant_activity", redis_settings)
    put_online(redis_settings, view, {"m1": timedelta(minutes=20)})
    try:
        code, output = features("freshness", "merchant_activity", "--check")
        assert code == 0, output
        assert "20m" in output and "fresh" in output
    finally:
        store = build_online_store(redis_settings.online_store)
        store.teardown(view.name)
        store.close()


def test_an_unreachable_online_store_is_named(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLOPS_ONLINE_STORE__TYPE", "redis")
    monkeypatch.setenv("MLOPS_ONLINE_STORE__URL", "redis://127.0.0.1:1/0")
    code, output = features("freshness")
    assert code == 1
    assert "error: " in output and "redis://127.0.0.1:1/0" in output

    code, output = features("ls")  # the listing goes on without freshness
    assert code == 0, output
    assert "warning: freshness unknown" in output and "redis://127.0.0.1:1/0" in output
    assert "merchant_activity" in output and "unknown" in output


def test_a_broken_features_yaml_is_one_error_line(settings: Settings) -> None:
    Path("features.yaml").write_text(YAML.replace("function: mean", "function: avg"))
    for command in (["ls"], ["describe", "card_transactions"], ["freshness"]):
        code, output = features(*command)
        assert code == 1
        lines = [line for line in output.splitlines() if line.strip()]
        assert len(lines) == 1, output
        assert lines[0].startswith(f"error: {settings.features.definitions}:8: views[0] ")
        assert "unknown function 'avg'" in lines[0]


def test_an_unreachable_registry_is_named(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "postgresql+psycopg://postgres:secret@127.0.0.1:1/features"
    monkeypatch.setenv("MLOPS_FEATURES__REGISTRY_URL", url)
    code, output = features("ls")
    assert code == 1
    assert "cannot open the feature registry at postgresql+psycopg://postgres:***@127.0.0.1:1" in (
        output
    )
    assert "secret" not in output


def test_invalid_settings_exit_2(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_ONLINE_STORE__TYPE", "memcached")
    code, output = features("freshness")
    assert code == 2
    assert "invalid settings" in output


def test_skew_reports_none_after_materializing_then_the_differing_entities(
    settings: Settings, tmp_path: Path
) -> None:
    from mlops.data.generate import generate_transactions, write_events
    from mlops.features.materialize import materialize_view
    from mlops.features.offline import OfflineStore
    from mlops.specs import transactions_path

    settings.ensure_home()
    write_events(
        generate_transactions(n_entities=60, days=5, seed=1), Path(transactions_path(settings))
    )
    view = get_view("card_transactions", settings)
    store = build_online_store(settings.online_store)
    try:
        materialize_view(view, offline=OfflineStore(settings.offline_path), online=store)
    finally:
        store.close()
    code, output = features("skew", "card_transactions", "--check")
    assert code == 0, output
    rate = next(line for line in output.splitlines() if "skew rate" in line)
    assert rate.split("│")[2].strip() == "0.0", output

    put_online(settings, view, {"card_00001": timedelta(seconds=1)})  # a newer, other row
    code, output = features("skew", "card_transactions", "--sample", "1000", "--check")
    assert code == 1, output
    assert "card_00001: " in output and "differs:" in output
    assert re.search(r"\b1 of \d+ sampled entities differ", output), output
