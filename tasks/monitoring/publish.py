from __future__ import annotations

from prefect import task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE

from mlops.artifacts import artifact_key
from mlops.monitoring.drift import DriftFigures
from mlops.monitoring.judge import Judgement, LiveAccuracy, Thresholds


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def publish_artifacts(
    model_name: str,
    model_version: str,
    window: str,
    n_rows: int,
    figures: DriftFigures | None,
    accuracy: LiveAccuracy,
    thresholds: Thresholds,
    judgement: Judgement,
    link: str,
) -> None:
    """Prefect artifacts: a link to the report, the per-feature drift table, a summary."""
    create_link_artifact(
        link,
        link_text=f"Evidently report of {model_name} v{model_version}",
        key=artifact_key("monitor", model_name, "report"),
        description=f"Monitoring run over {window}",
    )
    if figures is not None:
        create_table_artifact(
            [f.as_dict() for f in figures.features],
            key=artifact_key("monitor", model_name, "drift"),
            description=f"Per-feature drift of {model_name} v{model_version} over {window}: "
            f"share {figures.drift_share:.3f}",
        )
    share = "not judged" if figures is None else f"{figures.drift_share:.3f}"
    live = "n/a" if accuracy.accuracy is None else f"{accuracy.accuracy:.3f}"
    drifted = ", ".join(figures.drifted_features) if figures is not None else ""
    lines = [
        f"# Monitoring {model_name} v{model_version}",
        "",
        f"Window {window}: **{n_rows}** scored rows, **{accuracy.n_labelled}** labelled.",
        "",
        "| figure | value | event when |",
        "| --- | --- | --- |",
        f"| drift share | {share} | ≥ {thresholds.drift_share_threshold} |",
        f"| live accuracy | {live} | < {thresholds.min_live_accuracy} |",
        f"| rows | {n_rows} | ≥ {thresholds.min_rows} to judge drift |",
        "",
        f"Drifted features: {drifted or 'none'}",
        "",
        f"Events: {', '.join(judgement.events) or 'none'}",
        "",
        *(f"- {reason}" for reason in judgement.reasons),
        "",
        f"[Report]({link})",
    ]
    create_markdown_artifact(
        "\n".join(lines),
        key=artifact_key("monitor", model_name),
        description=f"Monitoring summary of {model_name}",
    )
