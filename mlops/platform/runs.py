"""MLflow runs: list an experiment's runs, compare runs, find the best run by a metric.

Every function takes an :class:`mlflow.MlflowClient` (``client``). An unknown experiment
or run is :class:`NotFoundError`; a filter, order or metric MLflow cannot parse is
:class:`InvalidRequestError` (MLflow's message says what is wrong).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from mlflow import MlflowClient
from mlflow.entities import Experiment, Run
from mlflow.exceptions import MlflowException

from mlops.errors import InvalidRequestError, NotFoundError

MAX_RESULTS = 1000
MAX_COMPARE = 50
_METRIC = re.compile(r"^[\w./ :-]{1,250}$")


@dataclass(frozen=True)
class RunSummary:
    """One MLflow run: status, times, metrics (latest values), params and user tags
    (MLflow's own ``mlflow.*`` tags left out)."""

    run_id: str
    run_name: str | None
    experiment_id: str
    status: str
    start_time: datetime | None
    end_time: datetime | None
    metrics: dict[str, float]
    params: dict[str, str]
    tags: dict[str, str]


@dataclass(frozen=True)
class RunComparison:
    """Runs side by side: ``metrics`` compared (all of theirs when none were asked),
    ``best`` the run with the highest value of each, ``differing_params`` the params
    whose values are not the same in every run (``{param: {run_id: value}}``)."""

    metrics: list[str]
    runs: list[RunSummary]
    best: dict[str, str]
    differing_params: dict[str, dict[str, str | None]]


def _time(ms: int | None) -> datetime | None:
    return None if not ms else datetime.fromtimestamp(ms / 1000, tz=UTC)


def summary(run: Run) -> RunSummary:
    """The :class:`RunSummary` of an MLflow run."""
    return RunSummary(
        run_id=run.info.run_id,
        run_name=run.info.run_name,
        experiment_id=run.info.experiment_id,
        status=run.info.status,
        start_time=_time(run.info.start_time),
        end_time=_time(run.info.end_time),
        metrics=dict(run.data.metrics),
        params=dict(run.data.params),
        tags={k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
    )


@contextmanager
def _mlflow_input(what: str) -> Iterator[None]:
    """MLflow's complaints about the request become :class:`InvalidRequestError`."""
    try:
        yield
    except MlflowException as exc:
        if exc.error_code in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST"):
            raise InvalidRequestError(f"{what}: {exc.message}") from exc
        raise


def _experiment(client: MlflowClient, name: str) -> Experiment:
    with _mlflow_input(f"experiment name {name!r}"):
        experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise NotFoundError("experiment", name)
    return experiment


def metric_key(metric: str) -> str:
    """``metrics.`<metric>``` for MLflow's search (a name MLflow cannot hold is refused)."""
    if not _METRIC.match(metric):
        raise InvalidRequestError(
            f"metric name {metric!r} is not valid: letters, digits, and _ . / - : space"
        )
    return f"metrics.`{metric}`"


def list_runs(
    client: MlflowClient,
    *,
    experiment: str,
    filter_string: str = "",
    order_by: Sequence[str] = ("attributes.start_time DESC",),
    max_results: int = 100,
) -> list[RunSummary]:
    """Runs of ``experiment`` matching MLflow's ``filter_string`` (e.g.
    ``metrics.val_roc_auc > 0.8 and params.epochs = '8'``), sorted by ``order_by``."""
    if not 1 <= max_results <= MAX_RESULTS:
        raise InvalidRequestError(f"max_results must be in 1..{MAX_RESULTS}, got {max_results}")
    found = _experiment(client, experiment)
    with _mlflow_input("run search"):
        runs = client.search_runs(
            [found.experiment_id],
            filter_string=filter_string,
            order_by=list(order_by),
            max_results=max_results,
        )
    return [summary(run) for run in runs]


def compare_runs(
    client: MlflowClient, *, run_ids: Sequence[str], metrics: Sequence[str] = ()
) -> RunComparison:
    """``run_ids`` side by side on ``metrics`` (default: every metric any of them has)."""
    ids = list(dict.fromkeys(run_ids))
    if not ids:
        raise InvalidRequestError("no run ids to compare")
    if len(ids) > MAX_COMPARE:
        raise InvalidRequestError(f"at most {MAX_COMPARE} runs at once, got {len(ids)}")
    runs = []
    for run_id in ids:
        try:
            runs.append(summary(client.get_run(run_id)))
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                raise NotFoundError("run", run_id) from exc
            if exc.error_code in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST"):
                raise InvalidRequestError(f"run id {run_id!r}: {exc.message}") from exc
            raise
    names = list(dict.fromkeys(metrics)) or sorted({m for r in runs for m in r.metrics})
    best: dict[str, str] = {}
    for name in names:
        having = [r for r in runs if name in r.metrics]
        if having:
            best[name] = max(having, key=lambda r: r.metrics[name]).run_id
    params = sorted({p for r in runs for p in r.params})
    differing = {
        p: {r.run_id: r.params.get(p) for r in runs}
        for p in params
        if len({r.params.get(p) for r in runs}) > 1
    }
    shown = [
        RunSummary(
            **{
                **r.__dict__,
                "metrics": {m: r.metrics[m] for m in names if m in r.metrics},
            }
        )
        for r in runs
    ]
    return RunComparison(metrics=names, runs=shown, best=best, differing_params=differing)


def best_run(
    client: MlflowClient,
    *,
    experiment: str,
    metric: str,
    mode: Literal["max", "min"] = "max",
    filter_string: str = "",
) -> RunSummary:
    """The finished run of ``experiment`` with the highest (``max``) or lowest (``min``)
    ``metric``; :class:`NotFoundError` when no finished run has it."""
    if mode not in ("max", "min"):
        raise InvalidRequestError(f"mode must be 'max' or 'min', got {mode!r}")
    key = metric_key(metric)
    found = _experiment(client, experiment)
    finished = "attributes.status = 'FINISHED'"
    where = f"{finished} and {filter_string}" if filter_string.strip() else finished
    with _mlflow_input("run search"):
        runs = client.search_runs(
            [found.experiment_id],
            filter_string=where,
            order_by=[f"{key} {'DESC' if mode == 'max' else 'ASC'}"],
            max_results=MAX_RESULTS,
        )
    having = [run for run in runs if metric in run.data.metrics]
    if not having:
        raise NotFoundError(
            "run", f"{experiment}:{metric}", f"no finished run of {experiment!r} logged {metric!r}"
        )
    pick = max if mode == "max" else min
    return summary(pick(having, key=lambda run: run.data.metrics[metric]))
