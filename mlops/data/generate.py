"""Synthetic card transactions with fraud labels, for ``mlops demo`` and the tests.

The generative story, all of it vectorized numpy drawn from one
``np.random.default_rng(seed)``, so the same arguments give the same frame:

Cards
    Each of ``n_entities`` cards has a personal spending level (lognormal, median about
    45), an activity rate (gamma around ``events_per_entity_per_day``), an online
    propensity (beta, mean about 0.27), a "home radius" for in-person purchases
    (lognormal, a few km) and a favourite merchant category.

Legitimate behaviour
    A card shops in sessions spread over the days, mostly in daytime hours. Most sessions
    are one purchase, some are two to four within half an hour. Amounts are lognormal
    around the card's level; about 2 % are big purchases several times the level.
    One card in four takes a trip of two to ten days during which its purchases happen
    hundreds of km from home: the noise a fraud model has to tell apart from fraud.

Fraud
    Cards get compromised at a constant daily hazard: about 8 % of them over 60 days. A
    compromised card has one or two bursts: three to eight transactions within 20 minutes
    to 2 hours, at any hour, for amounts a few times the card's level, mostly online,
    mostly far from home, in skewed merchant categories (electronics, gift cards, money
    transfer). On top come isolated fraudulent transactions on random cards, about 1.2 %
    of the legitimate volume, with a weaker version of that signal. Overall about 2.5 %
    of the events are fraud, whatever the number of days.

``drift`` (0 = none, 1 = strong) shifts the *features* and leaves the relation between
behaviour and fraud alone: every amount is scaled by ``1 + drift``, distances by
``1 + drift``, every online probability goes up (logit + ``drift``) and the event rate
by ``1 + drift / 2``.

``concept_drift`` (0..1) changes the *labels*: each fraud episode, with that probability,
follows another pattern, "card testing": small amounts, in person, near home, each
transaction on its own at an ordinary hour. A model trained at 0 scores these low.

Columns: ``transaction_id``, ``card_id``, ``event_timestamp`` (UTC), ``amount``,
``merchant_category`` (0..9), ``is_online``, ``distance_km``, ``is_fraud``; sorted by
time. Events fall in ``[end - days, end)``.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from mlops.errors import DataError

logger = logging.getLogger(__name__)

DEFAULT_END = datetime(2026, 1, 1, tzinfo=UTC)
COLUMNS = (
    "transaction_id",
    "card_id",
    "event_timestamp",
    "amount",
    "merchant_category",
    "is_online",
    "distance_km",
    "is_fraud",
)
N_CATEGORIES = 10

_NS = 1_000_000_000
_MAX_KM = 20_000.0  # half the Earth's circumference
_HOUR = 3_600
_DAY = 86_400

# Merchant categories: 0 grocery, 1 fuel, 2 restaurants, 3 transport, 4 pharmacy,
# 5 clothing, 6 travel, 7 electronics, 8 gift cards, 9 money transfer.
_LEGIT_CATEGORIES = np.array([0.24, 0.14, 0.18, 0.10, 0.07, 0.10, 0.04, 0.06, 0.04, 0.03])
_FRAUD_CATEGORIES = np.array([0.02, 0.02, 0.03, 0.03, 0.02, 0.08, 0.10, 0.28, 0.24, 0.18])
# When legitimate sessions start, by hour of day (UTC is taken as local time).
_LEGIT_HOURS = np.array(
    [1, 0.5, 0.3, 0.3, 0.4, 0.8, 2, 4, 6, 7, 7, 8, 9, 8, 7, 7, 7, 8, 9, 9, 8, 6, 4, 2],
    dtype=float,
)

_LEVEL_MEDIAN = 45.0  # median of the cards' median amount
_LEVEL_SIGMA = 0.7  # spread of spending levels between cards
_AMOUNT_SIGMA = 0.55  # spread of one card's amounts around its level
_SESSION_P = 0.8  # session size ~ geometric(p): mean 1.25 purchases
_SESSION_MINUTES = 30
_BIG_PURCHASE_P = 0.02
_TRIP_P = 0.25
_COMPROMISE_HAZARD = 0.0014  # per card and day: 8 % of the cards over 60 days
_SINGLE_FRAUD_P = 0.012


def generate_transactions(
    *,
    n_entities: int = 5000,
    days: int = 60,
    events_per_entity_per_day: float = 0.75,
    end: datetime | None = None,
    seed: int = 0,
    drift: float = 0.0,
    concept_drift: float = 0.0,
) -> pd.DataFrame:
    """Card transactions labelled ``is_fraud``; see the module docstring for the story.

    ``end`` defaults to 2026-01-01 UTC so that the output depends only on the arguments;
    a naive ``end`` is taken as UTC.
    """
    _validate(
        n_entities=n_entities,
        days=days,
        rate=events_per_entity_per_day,
        drift=drift,
        concept_drift=concept_drift,
    )
    started = time.perf_counter()
    end = DEFAULT_END if end is None else end
    end_ts = pd.Timestamp(end)
    end_ts = end_ts.tz_localize("UTC") if end_ts.tzinfo is None else end_ts.tz_convert("UTC")
    span_s = float(days * _DAY)
    rng = np.random.default_rng(seed)
    n = n_entities

    # --- cards -------------------------------------------------------------------------
    log_level = rng.normal(np.log(_LEVEL_MEDIAN), _LEVEL_SIGMA, n) + np.log1p(drift)
    activity = rng.gamma(2.0, 0.5, n) * events_per_entity_per_day * (1.0 + drift / 2.0)
    p_online = _sigmoid(_logit(rng.beta(1.5, 4.0, n)) + drift)
    home_km = rng.lognormal(np.log(4.0), 0.6, n) * (1.0 + drift)
    favourite = rng.choice(N_CATEGORIES, size=n, p=_LEGIT_CATEGORIES)
    has_trip = rng.random(n) < _TRIP_P
    trip_start = rng.random(n) * span_s
    trip_end = trip_start + rng.uniform(2.0, 10.0, n) * _DAY
    trip_km = rng.lognormal(np.log(700.0), 0.8, n) * (1.0 + drift)

    # --- legitimate sessions and purchases ------------------------------------------------
    mean_session = 1.0 / _SESSION_P
    sessions_per_card = np.maximum(rng.poisson(activity * days / mean_session), 1)
    session_card = np.repeat(np.arange(n), sessions_per_card)
    n_sessions = session_card.size
    session_start = _daily_times(rng, n_sessions, days, _LEGIT_HOURS)
    session_size = rng.geometric(_SESSION_P, n_sessions)
    card = np.repeat(session_card, session_size)
    m = card.size
    first = np.zeros(m, dtype=bool)
    first[np.cumsum(session_size) - session_size] = True
    t = np.repeat(session_start, session_size)
    t = t + np.where(first, 0.0, rng.random(m) * _SESSION_MINUTES * 60)

    online = rng.random(m) < p_online[card]
    amount = np.exp(log_level[card] + rng.normal(0.0, _AMOUNT_SIGMA, m))
    big = rng.random(m) < _BIG_PURCHASE_P
    amount = np.where(big, amount * rng.lognormal(np.log(6.0), 0.4, m), amount)
    category = np.where(
        rng.random(m) < 0.4, favourite[card], rng.choice(N_CATEGORIES, m, p=_LEGIT_CATEGORIES)
    )
    distance = home_km[card] * rng.exponential(1.0, m) * np.where(online, 3.0, 1.0)
    travelling = has_trip[card] & (t >= trip_start[card]) & (t < trip_end[card])
    distance = np.where(
        travelling, trip_km[card] + home_km[card] * rng.exponential(1.0, m), distance
    )
    amount = np.where(travelling, amount * 1.3, amount)
    fraud = np.zeros(m, dtype=bool)
    episode = np.full(m, -1)

    # --- fraud bursts on compromised cards -------------------------------------------------
    compromised = np.flatnonzero(rng.random(n) < -np.expm1(-_COMPROMISE_HAZARD * days))
    bursts_per_card = 1 + (rng.random(compromised.size) < 0.4)
    burst_card = np.repeat(compromised, bursts_per_card)
    nb = burst_card.size
    burst_start = rng.random(nb) * (span_s - 2 * _HOUR)
    burst_length = rng.uniform(20 * 60, 2 * _HOUR, nb)
    burst_size = rng.integers(3, 9, nb)
    b_card = np.repeat(burst_card, burst_size)
    mb = b_card.size
    b_t = np.repeat(burst_start, burst_size) + rng.random(mb) * np.repeat(burst_length, burst_size)
    b_online = rng.random(mb) < _sigmoid(_logit(np.array(0.8)) + drift)
    b_amount = np.exp(log_level[b_card]) * rng.lognormal(np.log(4.0), 0.5, mb)
    b_far = rng.random(mb) < 0.85
    b_distance = np.where(
        b_far,
        rng.lognormal(np.log(900.0), 0.9, mb) * (1.0 + drift),
        home_km[b_card] * rng.exponential(1.0, mb),
    )
    b_category = rng.choice(N_CATEGORIES, mb, p=_FRAUD_CATEGORIES)
    b_episode = np.repeat(np.arange(nb), burst_size)

    # --- isolated fraud: a weaker version of the same signal --------------------------------
    ms = int(rng.binomial(m, _SINGLE_FRAUD_P))
    s_card = rng.integers(0, n, ms)
    s_t = rng.random(ms) * span_s
    s_online = rng.random(ms) < _sigmoid(_logit(np.array(0.55)) + drift)
    s_amount = np.exp(log_level[s_card]) * rng.lognormal(np.log(1.8), 0.6, ms)
    s_far = rng.random(ms) < 0.45
    s_distance = np.where(
        s_far,
        rng.lognormal(np.log(500.0), 1.0, ms) * (1.0 + drift),
        home_km[s_card] * rng.exponential(1.0, ms) * np.where(s_online, 3.0, 1.0),
    )
    s_category = np.where(
        rng.random(ms) < 0.5,
        rng.choice(N_CATEGORIES, ms, p=_FRAUD_CATEGORIES),
        rng.choice(N_CATEGORIES, ms, p=_LEGIT_CATEGORIES),
    )
    s_episode = nb + np.arange(ms)

    card = np.concatenate([card, b_card, s_card])
    t = np.concatenate([t, b_t, s_t])
    online = np.concatenate([online, b_online, s_online])
    amount = np.concatenate([amount, b_amount, s_amount])
    distance = np.concatenate([distance, b_distance, s_distance])
    category = np.concatenate([category, b_category, s_category])
    fraud = np.concatenate([fraud, np.ones(mb + ms, dtype=bool)])
    episode = np.concatenate([episode, b_episode, s_episode])

    # --- concept drift: some fraud episodes turn into "card testing" ------------------------
    if concept_drift > 0.0 and nb + ms > 0:
        shifted_episode = rng.random(nb + ms) < concept_drift
        shifted = fraud & shifted_episode[np.maximum(episode, 0)]
        k = int(shifted.sum())
        c = card[shifted]
        t[shifted] = _daily_times(rng, k, days, _LEGIT_HOURS)
        online[shifted] = False
        amount[shifted] = np.exp(log_level[c]) * rng.lognormal(np.log(0.3), 0.4, k)
        distance[shifted] = home_km[c] * rng.exponential(1.0, k)
        category[shifted] = rng.choice(N_CATEGORIES, k, p=_LEGIT_CATEGORIES)

    # --- assemble ----------------------------------------------------------------------------
    t = np.minimum(t, span_s - 1e-3)
    offset_ns = (t * 1e6).astype(np.int64) * 1_000  # whole microseconds: every store keeps them
    order = np.lexsort((card, offset_ns))
    start_ns = end_ts.value - days * _DAY * _NS
    timestamps = pd.to_datetime(start_ns + offset_ns[order], unit="ns", utc=True)
    width = max(5, len(str(n - 1)))
    card_names = np.array([f"card_{i:0{width}d}" for i in range(n)], dtype=object)
    total = order.size
    frame = pd.DataFrame(
        {
            "transaction_id": [f"tx_{i:09d}" for i in range(total)],
            "card_id": card_names[card[order]],
            "event_timestamp": timestamps,
            "amount": np.maximum(np.round(amount[order], 2), 0.01),
            "merchant_category": category[order].astype(np.int64),
            "is_online": online[order].astype(np.int64),
            "distance_km": np.round(np.minimum(distance[order], _MAX_KM), 3),
            "is_fraud": fraud[order].astype(np.int64),
        }
    )
    logger.info(
        "generated %d transactions for %d cards over %d days (fraud rate %.2f%%, "
        "drift %.2f, concept drift %.2f) in %.2fs",
        total,
        n,
        days,
        100.0 * frame["is_fraud"].mean(),
        drift,
        concept_drift,
        time.perf_counter() - started,
    )
    return frame


def write_events(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` to ``path`` as Parquet, atomically; make the parent folders.

    The frame goes to a temporary file in the same folder first, then replaces ``path``
    in one ``os.replace``, so a reader never sees half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("wrote %d events to %s", len(frame), path)
    return path


def _validate(
    *, n_entities: int, days: int, rate: float, drift: float, concept_drift: float
) -> None:
    if n_entities < 1:
        raise DataError(f"n_entities must be at least 1, got {n_entities}")
    if days < 1:
        raise DataError(f"days must be at least 1, got {days}")
    if not rate > 0:
        raise DataError(f"events_per_entity_per_day must be positive, got {rate}")
    if not drift >= 0:
        raise DataError(f"drift must be at least 0, got {drift}")
    if not 0 <= concept_drift <= 1:
        raise DataError(f"concept_drift must be between 0 and 1, got {concept_drift}")


def _daily_times(
    rng: np.random.Generator, size: int, days: int, hour_weights: np.ndarray
) -> np.ndarray:
    """``size`` seconds into a ``days`` period: a uniform day, an hour by weight."""
    day = rng.integers(0, days, size)
    hour = rng.choice(24, size=size, p=hour_weights / hour_weights.sum())
    return (day * _DAY + hour * _HOUR).astype(float) + rng.random(size) * _HOUR


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.asarray(np.log(p / (1 - p)))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)))
