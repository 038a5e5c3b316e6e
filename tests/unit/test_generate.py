"""The demo data generator: schema, size, determinism, a learnable signal, and drift."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from mlops.data.generate import COLUMNS, DEFAULT_END, generate_transactions, write_events
from mlops.errors import DataError

SMALL = {"n_entities": 800, "days": 30}


@pytest.fixture(scope="module")
def default_frame() -> pd.DataFrame:
    # speed is shown by benchmarks/generate_data.py, not asserted here
    return generate_transactions()


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    return generate_transactions(**SMALL, seed=1)


def signal_features(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, pd.Series]:
    """What the fraud feature view serves, per transaction, over windows that end at it.

    The 1 h event count, the amount against the card's 24 h and 7 d means, whether it was
    online and how far from home; returned with the labels and timestamps, in time order.
    """
    by_card = frame.sort_values(["card_id", "event_timestamp"], kind="stable")
    rolling = by_card.set_index("event_timestamp").groupby("card_id", sort=False)["amount"]
    by_card = by_card.assign(
        events_count_1h=rolling.rolling("1h").count().to_numpy(),
        amount_mean_24h=rolling.rolling("24h").mean().to_numpy(),
        amount_mean_7d=rolling.rolling("7d").mean().to_numpy(),
    ).sort_index()
    features = np.column_stack(
        [
            by_card["events_count_1h"],
            np.log(by_card["amount"] / by_card["amount_mean_24h"]),
            np.log(by_card["amount"] / by_card["amount_mean_7d"]),
            by_card["is_online"],
            np.log1p(by_card["distance_km"]),
        ]
    )
    return features, by_card["is_fraud"].to_numpy(), by_card["event_timestamp"]


def fit(features: np.ndarray, labels: np.ndarray) -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(features, labels)


def auc(model: Pipeline, features: np.ndarray, labels: np.ndarray) -> float:
    return float(roc_auc_score(labels, model.predict_proba(features)[:, 1]))


def fit_on_past(frame: pd.DataFrame) -> tuple[Pipeline, float]:
    """A model fitted on the first 70 % of the frame's time, and its AUC on the rest."""
    features, labels, when = signal_features(frame)
    train = (when < when.quantile(0.7)).to_numpy()
    model = fit(features[train], labels[train])
    return model, auc(model, features[~train], labels[~train])


@pytest.fixture(scope="module")
def holdout(small: pd.DataFrame) -> tuple[Pipeline, float]:
    return fit_on_past(small)


def test_same_arguments_give_the_same_frame(small: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(generate_transactions(**SMALL, seed=1), small)
    other = generate_transactions(**SMALL, seed=2)
    assert not other["amount"].head(100).equals(small["amount"].head(100))


def test_columns_and_dtypes(small: pd.DataFrame) -> None:
    assert tuple(small.columns) == COLUMNS
    assert pd.api.types.is_string_dtype(small["transaction_id"])
    assert pd.api.types.is_string_dtype(small["card_id"])
    assert str(small["event_timestamp"].dtype) == "datetime64[ns, UTC]"
    for column in ("amount", "distance_km"):
        assert small[column].dtype == np.float64
    for column in ("merchant_category", "is_online", "is_fraud"):
        assert small[column].dtype == np.int64

    assert small["transaction_id"].is_unique
    assert small["transaction_id"].str.fullmatch(r"tx_\d{9}").all()
    assert small["card_id"].str.fullmatch(r"card_\d{5}").all()
    assert small["event_timestamp"].is_monotonic_increasing
    assert (small["amount"] > 0).all()
    assert (small["distance_km"] >= 0).all()
    assert small["merchant_category"].between(0, 9).all()
    assert set(small["is_online"].unique()) == {0, 1}
    assert set(small["is_fraud"].unique()) == {0, 1}


def test_defaults_size_and_time_range(default_frame: pd.DataFrame) -> None:
    when = default_frame["event_timestamp"]
    assert len(default_frame) >= 200_000
    assert default_frame["card_id"].nunique() >= 5000
    assert when.min() >= DEFAULT_END - timedelta(days=60)
    assert when.max() < DEFAULT_END
    assert when.max() - when.min() >= timedelta(days=59, hours=23)


def test_end_sets_the_window_and_a_naive_end_is_utc() -> None:
    end = datetime(2024, 6, 15, 12, 30)
    frame = generate_transactions(n_entities=50, days=3, end=end)
    when = frame["event_timestamp"]
    utc_end = pd.Timestamp(end, tz="UTC")
    assert when.min() >= utc_end - pd.Timedelta(days=3)
    assert when.max() < utc_end


@pytest.mark.parametrize("frame_name", ["default_frame", "small"])
def test_fraud_rate_is_realistic(frame_name: str, request: pytest.FixtureRequest) -> None:
    frame = request.getfixturevalue(frame_name)
    assert 0.015 <= frame["is_fraud"].mean() <= 0.05


def test_fraud_is_learnable_from_windowed_features(holdout: tuple[Pipeline, float]) -> None:
    _, holdout_auc = holdout
    assert 0.8 < holdout_auc < 0.99


def test_shuffled_labels_teach_nothing(small: pd.DataFrame) -> None:
    features, labels, when = signal_features(small)
    shuffled = np.random.default_rng(0).permutation(labels)
    train = (when < when.quantile(0.7)).to_numpy()
    model = fit(features[train], shuffled[train])
    assert abs(auc(model, features[~train], shuffled[~train]) - 0.5) < 0.1


def test_drift_shifts_features_not_the_fraud_relation(
    small: pd.DataFrame, holdout: tuple[Pipeline, float]
) -> None:
    drifted = generate_transactions(**SMALL, seed=1, drift=1.0)
    assert drifted["amount"].mean() > 1.5 * small["amount"].mean()
    assert drifted["is_online"].mean() > small["is_online"].mean() + 0.1
    assert drifted["distance_km"].median() > 1.5 * small["distance_km"].median()
    assert len(drifted) > len(small)

    # Fraud is as learnable as before, and a model trained without drift still works.
    assert fit_on_past(drifted)[1] > 0.8
    model, _ = holdout
    features, labels, _ = signal_features(drifted)
    assert auc(model, features, labels) > 0.75


def test_concept_drift_breaks_a_model_trained_without_it(
    holdout: tuple[Pipeline, float],
) -> None:
    model, holdout_auc = holdout
    features, labels, _ = signal_features(generate_transactions(**SMALL, seed=3, concept_drift=1))
    assert 0.015 <= labels.mean() <= 0.05
    assert auc(model, features, labels) < holdout_auc - 0.1


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("n_entities", 0),
        ("days", 0),
        ("events_per_entity_per_day", 0.0),
        ("events_per_entity_per_day", float("nan")),
        ("drift", -0.1),
        ("concept_drift", -0.1),
        ("concept_drift", 1.5),
    ],
)
def test_bad_arguments_raise_data_error_naming_them(argument: str, value: float) -> None:
    with pytest.raises(DataError, match=argument):
        generate_transactions(**{argument: value})


def test_write_events_is_atomic_and_round_trips(tmp_path: Path) -> None:
    frame = generate_transactions(n_entities=20, days=5)
    target = tmp_path / "raw" / "transactions.parquet"
    assert write_events(frame, target) == target
    pd.testing.assert_frame_equal(pd.read_parquet(target), frame)

    write_events(frame.head(3), target)  # replaces the file in place
    assert len(pd.read_parquet(target)) == 3
    assert [p.name for p in target.parent.iterdir()] == ["transactions.parquet"]
