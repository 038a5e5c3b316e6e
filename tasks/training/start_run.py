from __future__ import annotations

from dataclasses import asdict

from mlflow import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from mlops.lifecycle import flow_run_tags
from mlops.specs import ModelSpec
from mlops.training.data import TimeSplits
from mlops.training.device import TrainingPlan
from mlops.training.model import TrainConfig


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def start_run(
    client: MlflowClient,
    experiment_id: str,
    spec: ModelSpec,
    cfg: TrainConfig,
    splits: TimeSplits,
    data_window: str,
    plan: TrainingPlan,
) -> str:
    """Create the MLflow run of this training, with its parameters and ``plan`` (the
    device, precision and processes it runs on); returns its id."""
    run = client.create_run(
        experiment_id,
        run_name=f"train-{spec.name}-{flow_run.get_name() or 'local'}",
        tags={
            "mlops.model": spec.name,
            **flow_run_tags(),  # mlops.flow_run_id, mlops.root_flow_run_id
            "mlops.feature_views": ",".join(v.ref for v in spec.views),
        },
    )
    params = {f"cfg.{k}": v for k, v in asdict(cfg).items()}
    params |= plan.params()
    params |= {
        "data_window": data_window,
        "feature_views": ",".join(v.ref for v in spec.views),
        "rows.train": len(splits.train.y),
        "rows.validation": len(splits.validation.y),
        "rows.holdout": len(splits.holdout.y),
        "rows.dropped_incomplete": splits.dropped_rows,
        "split.validation_from": splits.boundaries[0].isoformat(),
        "split.holdout_from": splits.boundaries[1].isoformat(),
    }
    for key, value in params.items():
        client.log_param(run.info.run_id, key, str(value)[:6000])
    return str(run.info.run_id)
