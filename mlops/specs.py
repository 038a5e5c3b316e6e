"""Model specs: what a registered model is trained on.

A :class:`ModelSpec` names the registered model, the feature views it reads, and the
table of labelled events the training set is built from. The flows take a model name
and look its spec up here; the demo's ``fraud_detector`` is the one built in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from mlops.errors import ConfigurationError
from mlops.features.definition import Aggregation, FeatureView, Source
from mlops.settings import Settings

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    views: tuple[FeatureView, ...]
    labels: Source
    entity: str
    timestamp: str
    label: str
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def feature_names(self) -> list[str]:
        return [name for view in self.views for name in view.feature_names]


def transactions_path(settings: Settings) -> str:
    return str(settings.data_dir / "transactions.parquet")


def card_transactions_view(source: Source) -> FeatureView:
    """Card behaviour at each transaction: the transaction itself and recent activity."""
    return FeatureView(
        name="card_transactions",
        entity="card_id",
        timestamp="event_timestamp",
        source=source,
        features=("amount", "is_online", "distance_km"),
        aggregations=(
            Aggregation("transaction_id", "count", HOUR),
            Aggregation("transaction_id", "count", DAY),
            Aggregation("transaction_id", "count", 7 * DAY),
            Aggregation("amount", "mean", DAY),
            Aggregation("amount", "mean", 7 * DAY),
            Aggregation("amount", "max", DAY),
            Aggregation("distance_km", "mean", DAY),
        ),
        ttl=7 * DAY,
        description="Per-card transaction features: the amount, channel and distance of "
        "the transaction, and the card's counts and amounts over the last 1 h / 24 h / 7 d.",
        owner="demo",
    )


def fraud_detector(settings: Settings) -> ModelSpec:
    source = Source.from_path(transactions_path(settings))
    return ModelSpec(
        name="fraud_detector",
        views=(card_transactions_view(source),),
        labels=source,
        entity="card_id",
        timestamp="event_timestamp",
        label="is_fraud",
        description="Card-fraud classifier (MLP) over per-card transaction features.",
    )


SPECS = {"fraud_detector": fraud_detector}


def get_spec(name: str, settings: Settings) -> ModelSpec:
    try:
        return SPECS[name](settings)
    except KeyError:
        known = ", ".join(sorted(SPECS))
        raise ConfigurationError(f"unknown model spec {name!r}; known: {known}") from None


def get_view(name: str, settings: Settings) -> FeatureView:
    for spec_name in SPECS:
        for view in get_spec(spec_name, settings).views:
            if view.name == name:
                return view
    known = sorted({v.name for s in SPECS for v in get_spec(s, settings).views})
    raise ConfigurationError(f"unknown feature view {name!r}; known: {', '.join(known)}")
