"""Deployments in code register with the real Prefect API under DESIGN.md's names."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from deployments import build_deployments
from mlops.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


def test_deployments_register_under_the_contract_names(mlops_home: Path) -> None:
    for deployment in build_deployments(Settings()):
        deployment.apply()

    async def read() -> dict[str, dict[str, object]]:
        async with get_client() as client:
            found = await client.read_deployments()
            flows = {f.id: f.name for f in await client.read_flows()}
            return {f"{flows[d.flow_id]}/{d.name}": d.parameters for d in found}

    registered = asyncio.run(read())
    assert registered["materialize/card_transactions"] == {
        "view_name": "card_transactions",
        "mode": "incremental",
    }
    assert registered["train/fraud_detector"] == {"model_name": "fraud_detector"}
    assert registered["evaluate/fraud_detector"] == {"model_name": "fraud_detector"}
