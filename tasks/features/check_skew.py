from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from mlops.artifacts import artifact_key
from mlops.features.definition import FeatureView
from mlops.features.offline import OfflineStore
from mlops.features.online import build_online_store
from mlops.features.skew import SkewReport, check_skew
from mlops.settings import OnlineStoreSettings


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def train_serve_skew(
    view: FeatureView, offline_root: Path, config: OnlineStoreSettings, sample: int
) -> SkewReport:
    """Online values vs the latest offline values for a sample of entities (+ artifact)."""
    store = build_online_store(config)
    try:
        report = check_skew(view, offline=OfflineStore(offline_root), online=store, sample=sample)
    finally:
        store.close()
    create_table_artifact(
        report.rows()
        + [{"check": f"example {e['entity']}", "count": e["problems"]} for e in report.examples],
        key=artifact_key("skew", view.name),
        description=f"Train/serve skew of {view.ref}: {report.skewed} of {report.sampled} "
        f"sampled entities differ (rate {report.rate:.4f})",
    )
    return report
