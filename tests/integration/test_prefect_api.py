"""The pinned Prefect server answers the reads the CLI, the UI and the console make.

FastAPI 0.151+ makes Prefect 3.8.8's ``/filter`` endpoints reject the explicit nulls its
own client sends (422); this guards the pin in pyproject.toml and constraints.txt.
"""

from __future__ import annotations

import asyncio

import pytest
from prefect import flow
from prefect.client.orchestration import get_client

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


@flow(name="api-probe")
def probe() -> int:
    return 42


def test_flow_runs_and_flows_can_be_listed() -> None:
    assert probe() == 42

    async def read() -> tuple[list[str], list[str]]:
        async with get_client() as client:
            runs = await client.read_flow_runs(limit=50)
            flows = await client.read_flows()
            return [r.state_name or "" for r in runs], [f.name for f in flows]

    states, flows = asyncio.run(read())
    assert "api-probe" in flows
    assert "Completed" in states
