"""The Features page: a view materialized for real (the ``materialize`` flow, in process,
under the session's Prefect API) shown with its schema, freshness and materializations;
the button starts a flow run of the real ``materialize/<view>`` deployment."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from mlops.data.generate import generate_transactions, write_events
from mlops.settings import Settings
from mlops.specs import get_view, transactions_path
from tests.integration._console import (
    PASSWORD,
    TOKEN,
    console,
    delete_flow_runs,
    platform_env,
    server_navigation,
    texts,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]

VIEW = "card_transactions"
SUBMIT = "FormSubmitter:materialize-Start materialization"


@pytest.fixture
def materialized(mlops_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Five days of events materialized, and ``materialize/<view>`` registered."""
    from prefect.client.orchestration import get_client

    from deployments import view_deployment
    from deployments.pools import ensure_pools
    from flows.materialize import materialize

    settings = platform_env(monkeypatch)
    events = generate_transactions(
        n_entities=40, days=5, seed=11, end=datetime(2026, 3, 1, tzinfo=UTC)
    )
    write_events(events, Path(transactions_path(settings)))
    materialize(view_name=VIEW, mode="full")
    with get_client(sync_client=True) as client:
        ensure_pools(client, settings)
    view_deployment(VIEW, settings).apply()
    STARTED.clear()
    with server_navigation():
        yield settings
    delete_flow_runs(STARTED)


STARTED: list[str] = []
"""Flow runs the test started (deleted after it: no later runner may pick them up)."""


def started_run(message: str) -> dict[str, Any]:
    """The flow run named in the page's success message, read back from the API."""
    from prefect.client.orchestration import get_client

    run_id = message.split("flow run ")[1].split(" ")[0]
    STARTED.append(run_id)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(run_id))
        deployment = client.read_deployment(run.deployment_id)  # type: ignore[arg-type]
        flow = client.read_flow(run.flow_id)
    return {"deployment": f"{flow.name}/{deployment.name}", "parameters": run.parameters}


def test_views_show_schema_freshness_and_materializations(materialized: Settings) -> None:
    view = get_view(VIEW, materialized)
    at = console("features", secret=PASSWORD).run()
    assert not at.exception, at.exception
    assert texts(at.title) == ["Features"]
    assert not at.error, texts(at.error)

    stats = at.dataframe[0].value.set_index("view")
    row = stats.loc[VIEW]
    assert row["version"] == view.version
    assert row["offline days"] == 5 and row["rows"] > 0
    assert row["interval"] == "2026-02-24 → 2026-03-01"
    assert row["freshness"] in ("🟢 fresh", "🟠 stale")  # filled either way

    expander = at.expander[0]
    assert expander.label == f"{VIEW} · version {view.version}"
    schema = expander.dataframe[0].value
    assert list(schema["name"]) == view.feature_names
    assert set(schema["kind"]) == {"column", "aggregation"}
    materializations = expander.dataframe[-1].value
    assert list(materializations["version"]) == [view.version]
    assert int(materializations["rows"].iloc[0]) == int(row["rows"])

    # a viewer may look, not start anything
    assert at.button(key=SUBMIT).proto.disabled


def test_the_button_starts_a_materialization_run_of_the_deployment(
    materialized: Settings,
) -> None:
    at = console("features", secret=TOKEN).run()
    assert not at.button(key=SUBMIT).proto.disabled
    at.button(key=SUBMIT).click().run()
    assert not at.exception and not at.error, texts(at.error)
    run = started_run(at.success[0].value)
    assert run["deployment"] == f"materialize/{VIEW}"
    assert run["parameters"] == {"view_name": VIEW, "mode": "incremental"}
    runs = at.dataframe[-1].value
    assert f"materialize/{VIEW}" in set(runs["deployment"])

    at.radio[0].set_value("full")
    at.date_input[0].set_value(date(2026, 2, 26))
    at.date_input[1].set_value(date(2026, 2, 28))
    at.number_input[0].set_value(1)
    at.button(key=SUBMIT).click().run()
    run = started_run(at.success[0].value)
    assert run["parameters"] == {
        "view_name": VIEW,
        "mode": "full",
        "start": "2026-02-26T00:00:00+00:00",
        "end": "2026-02-28T00:00:00+00:00",
        "chunk_days": 1,
    }

    at.date_input[1].set_value(date(2026, 2, 20))
    at.button(key=SUBMIT).click().run()
    (message,) = texts(at.error)
    assert "The interval is empty" in message and "2026-02-20" in message
