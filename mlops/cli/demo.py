"""The demo loop: generate → materialize → train → evaluate → serve → predict over HTTP.

:func:`run_demo` is what ``mlops demo`` runs and what the end-to-end test drives; it
calls the real flows (flow runs in whichever Prefect API is current) and a real app.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from mlops.cli.server import free_port, running_app
from mlops.data.generate import generate_transactions, write_events
from mlops.errors import MlopsError
from mlops.features.offline import OfflineStore
from mlops.settings import Settings
from mlops.specs import get_spec, transactions_path

logger = logging.getLogger(__name__)

Step = Callable[[str], None]


@dataclass(frozen=True)
class DemoOptions:
    entities: int = 5000
    days: int = 60
    seed: int = 0
    end: datetime | None = None
    epochs: int = 8
    batch_size: int = 1024
    entity_requests: int = 200
    inline_requests: int = 50
    model_name: str = "fraud_detector"


@dataclass
class DemoSummary:
    events: int = 0
    fraud_rate: float = 0.0
    materialized: dict[str, Any] = field(default_factory=dict)
    trained: dict[str, Any] = field(default_factory=dict)
    evaluated: dict[str, Any] = field(default_factory=dict)
    served_version: str = ""
    app_url: str = ""
    entity_latency_ms: dict[str, float] = field(default_factory=dict)
    inline_latency_ms: dict[str, float] = field(default_factory=dict)
    predictions: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1000.0
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


def _timed(summary: DemoSummary, key: str, started: float) -> None:
    summary.seconds[key] = time.perf_counter() - started


def run_demo(
    settings: Settings, opts: DemoOptions, *, step: Step | None = None, app_env: dict[str, str]
) -> DemoSummary:
    """Run the whole loop on ``settings``; ``step`` is told when each stage starts."""
    from flows.evaluate import evaluate
    from flows.materialize import materialize
    from flows.train import train

    say = step or (lambda _msg: None)
    summary = DemoSummary()
    settings.ensure_home()
    spec = get_spec(opts.model_name, settings)
    view = spec.views[0]

    t = time.perf_counter()
    say(f"Generating {opts.entities:,} cards × {opts.days} days of transactions")
    events = generate_transactions(
        n_entities=opts.entities, days=opts.days, seed=opts.seed, end=opts.end
    )
    write_events(events, Path(transactions_path(settings)))
    summary.events = len(events)
    summary.fraud_rate = float(events["is_fraud"].mean())
    _timed(summary, "generate", t)

    t = time.perf_counter()
    say(f"Materializing feature view {view.ref} (offline Parquet + online store)")
    summary.materialized = materialize(view_name=view.name)
    _timed(summary, "materialize", t)

    t = time.perf_counter()
    say(f"Training {spec.name} ({opts.epochs} epochs) and registering the ONNX model")
    summary.trained = train(
        model_name=spec.name, epochs=opts.epochs, batch_size=opts.batch_size, seed=opts.seed
    )
    _timed(summary, "train", t)

    t = time.perf_counter()
    say("Evaluating the challenger against the champion")
    summary.evaluated = evaluate(model_name=spec.name)
    _timed(summary, "evaluate", t)
    if not summary.evaluated["promoted"] and summary.evaluated["champion_version_before"] is None:
        raise MlopsError(
            f"version {summary.trained['version']} was not promoted and there is no champion "
            f"to serve: {summary.evaluated['reason']}. Train longer (--epochs) or on more data."
        )

    t = time.perf_counter()
    say("Starting the inference app and sending predictions over HTTP")
    host, port = settings.serving.host, free_port(settings.serving.host)
    with running_app(
        host=host, port=port, env=app_env, log_path=settings.home / "logs" / "app.log"
    ) as base:
        summary.app_url = base
        _predict_over_http(settings, opts, summary, base)
    _timed(summary, "serve", t)
    return summary


def _predict_over_http(
    settings: Settings, opts: DemoOptions, summary: DemoSummary, base: str
) -> None:
    spec = get_spec(opts.model_name, settings)
    view = spec.views[0]
    latest = (
        OfflineStore(settings.offline_path).read(view).drop_duplicates(view.entity, keep="last")
    )
    rng = np.random.default_rng(opts.seed)
    entities = rng.choice(latest[view.entity].to_numpy(), size=opts.entity_requests)
    inline = latest.sample(n=min(opts.inline_requests, len(latest)), random_state=opts.seed)
    with httpx.Client(base_url=base, timeout=10.0) as client:
        model = _ok(client.get("/model"))
        summary.served_version = str(model["version"])
        timings = []
        for key in entities:
            started = time.perf_counter()
            _ok(client.post("/predict", json={"entities": [str(key)]}))
            timings.append(time.perf_counter() - started)
        summary.entity_latency_ms = percentiles(timings)
        timings = []
        for row in inline[view.feature_names].to_dict(orient="records"):
            started = time.perf_counter()
            _ok(client.post("/predict", json={"rows": [row]}))
            timings.append(time.perf_counter() - started)
        summary.inline_latency_ms = percentiles(timings)
        both = _ok(
            client.post(
                "/predict",
                json={
                    "entities": [str(k) for k in entities[:5]],
                    "rows": inline[view.feature_names].head(5).to_dict(orient="records"),
                },
            )
        )
        summary.predictions = len(entities) + len(inline) + len(both["predictions"])


def _ok(response: httpx.Response) -> dict[str, Any]:
    if response.status_code != 200:
        raise MlopsError(
            f"{response.request.method} {response.request.url.path} answered "
            f"{response.status_code}: {response.text[:500]}"
        )
    body: dict[str, Any] = response.json()
    return body


def today_utc() -> datetime:
    now = datetime.now(UTC)
    return datetime(now.year, now.month, now.day, tzinfo=UTC)
