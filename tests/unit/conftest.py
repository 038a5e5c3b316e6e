"""Shared fixtures for the unit tests: a small feature view and a clean MLOPS_* environment."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from mlops.features.definition import Aggregation, FeatureView, Source


def make_view(**overrides: Any) -> FeatureView:
    """A valid card-transactions view; keyword arguments replace its fields."""
    fields: dict[str, Any] = {
        "name": "card_tx",
        "entity": "card_id",
        "timestamp": "ts",
        "source": Source(path=Path("events.parquet")),
        "features": ("amount",),
        "aggregations": (
            Aggregation("amount", "count", timedelta(hours=1)),
            Aggregation("amount", "mean", timedelta(hours=24)),
        ),
        "ttl": timedelta(days=7),
    }
    fields.update(overrides)
    return FeatureView(**fields)


@pytest.fixture(scope="session")
def view_factory() -> Callable[..., FeatureView]:
    return make_view


@pytest.fixture
def clean_mlops_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No ``MLOPS_*`` variable from the outside, ``MLOPS_HOME`` = a fresh folder, cwd = tmp."""
    for key in list(os.environ):
        if key.startswith("MLOPS_"):
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    monkeypatch.setenv("MLOPS_HOME", str(home))
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    return home
