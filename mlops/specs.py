"""Model specs and the feature views they read.

A :class:`ModelSpec` names the registered model, the feature views it reads, and the
table of labelled events the training set is built from. The flows take a model name
and look its spec up here; the demo's ``fraud_detector`` is the one built in.

Feature views come from two places: the views of the specs in code, and the YAML file
``settings.features.definitions`` (``./features.yaml`` by default) when it exists.
:func:`all_views` gives both; a view name is declared in one place only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from mlops.errors import ConfigurationError, FeatureViewError
from mlops.features.definition import Aggregation, FeatureView, Source
from mlops.features.yaml_defs import load_views
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


def code_views(settings: Settings) -> list[FeatureView]:
    """The feature views of the model specs in code, each name once, in spec order.

    Two specs may share a view; the same name with two definitions is an error.
    """
    found: dict[str, tuple[str, FeatureView]] = {}
    for spec_name in SPECS:
        for view in get_spec(spec_name, settings).views:
            if view.name not in found:
                found[view.name] = (spec_name, view)
            elif found[view.name][1].version != view.version:
                raise FeatureViewError(
                    f"feature view {view.name!r} has two definitions in code: in model spec "
                    f"{found[view.name][0]!r} (version {found[view.name][1].version}) and in "
                    f"{spec_name!r} (version {view.version})"
                )
    return [view for _, view in found.values()]


def yaml_views(settings: Settings) -> list[FeatureView]:
    """The views of ``settings.features.definitions``; none when that file does not exist."""
    path = settings.features.definitions
    return load_views(path) if path.is_file() else []


def all_views(settings: Settings) -> list[FeatureView]:
    """Every feature view: the code specs' views, then those of the YAML definitions file.

    A YAML view named like a code view is a :class:`FeatureViewError` naming both places.
    """
    views = code_views(settings)
    in_code = {view.name for view in views}
    for view in yaml_views(settings):
        if view.name in in_code:
            raise FeatureViewError(
                f"feature view {view.name!r} is declared twice: in code (mlops/specs.py, the "
                f"model specs' views) and in {settings.features.definitions}: rename or remove "
                "one of them"
            )
        views.append(view)
    return views


def get_view(name: str, settings: Settings) -> FeatureView:
    """The feature view called ``name`` (code or YAML); :class:`ConfigurationError` if none."""
    views = all_views(settings)
    for view in views:
        if view.name == name:
            return view
    known = ", ".join(sorted(v.name for v in views)) or "none"
    raise ConfigurationError(f"unknown feature view {name!r}; known: {known}")
