"""Helpers that put a real, tiny ONNX model into a real MLflow registry, as training does.

The model takes 3 raw features, scales them inside the graph and returns probabilities
[N, 2]. It is logged with ``mlflow.onnx.log_model`` in an experiment whose artifacts go
to a temporary folder, registered, tagged exactly like the training flow's versions
(``onnx_sha256`` is computed from the downloaded ``model.onnx``) and given an alias.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import mlflow.artifacts
import mlflow.onnx
import numpy as np
import onnx
import pandas as pd
import torch
from mlflow import MlflowClient
from mlflow.models import infer_signature

from mlops.features.online.base import OnlineStore
from mlops.registry import mlflow_uris

FEATURES = ["amount", "amount_mean_24h", "events_count_1h"]
ENTITY = "card_id"
VIEW = "card_features"
VIEW_VERSION = "5e1f0c2a9b7d"


class TinyFraudModel(torch.nn.Module):
    """Raw features → (x - mean) / std → linear → sigmoid → [1 - p, p]."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([50.0, 40.0, 2.0]))
        self.register_buffer("std", torch.tensor([30.0, 20.0, 1.5]))
        self.linear = torch.nn.Linear(3, 1)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[1.2, -0.7, 0.9]]))
            self.linear.bias.fill_(-0.4)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(self.linear((features - self.mean) / self.std))
        return torch.cat([1.0 - p, p], dim=1)


def tiny_onnx_model() -> onnx.ModelProto:
    """The exported graph: input ``features`` [N, 3], output ``probabilities`` [N, 2]."""
    module = TinyFraudModel().eval()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        torch.onnx.export(
            module,
            (torch.zeros(1, len(FEATURES)),),
            path,
            dynamo=False,
            input_names=["features"],
            output_names=["probabilities"],
            dynamic_axes={"features": {0: "batch"}, "probabilities": {0: "batch"}},
        )
        return onnx.load(path)


def tracking(uri: str) -> AbstractContextManager[None]:
    """MLflow's fluent API pointed at ``uri`` for the block, then back as it was."""
    return mlflow_uris(uri, uri)


def new_registry(root: Path) -> tuple[str, str]:
    """``(tracking_uri, experiment_id)`` of a fresh SQLite registry with local artifacts."""
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment_id = client.create_experiment(
        "serving-tests", artifact_location=(root / "artifacts").as_uri()
    )
    return uri, experiment_id


def register_version(
    *,
    tracking_uri: str,
    experiment_id: str,
    name: str,
    alias: str | None = "champion",
    sha256: str | None = None,
    views: list[str] | None = None,
    without: tuple[str, ...] = (),
) -> str:
    """Log, register and tag the tiny model as ``name``; returns the version.

    ``sha256`` overrides the ``onnx_sha256`` tag (to tamper with it); tags named in
    ``without`` are left out.
    """
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    example = np.array([[12.5, 30.0, 1.0], [400.0, 20.0, 6.0]], dtype=np.float32)
    with tracking(tracking_uri), mlflow.start_run(experiment_id=experiment_id) as run:
        model = tiny_onnx_model()
        output = TinyFraudModel()(torch.from_numpy(example)).detach().numpy()
        info = mlflow.onnx.log_model(
            model,
            name="model",
            signature=infer_signature(example, output),
            input_example=example,
            save_as_external_data=False,
        )
        registered = mlflow.register_model(info.model_uri, name)
    version = str(registered.version)
    local = download(tracking_uri=tracking_uri, name=name, version=version)
    actual = hashlib.sha256((Path(local) / "model.onnx").read_bytes()).hexdigest()
    tags = {
        "onnx_sha256": sha256 or actual,
        "feature_names": json.dumps(FEATURES),
        "feature_views": json.dumps(views or [f"{VIEW}@{VIEW_VERSION}"]),
        "entity_key": ENTITY,
        "data_window": "2024-01-01/2024-03-31",
        "train_flow_run_id": run.info.run_id,
        "git_sha": "0" * 40,
    }
    for key, value in tags.items():
        if key in without:
            continue
        client.set_model_version_tag(name, version, key, value)
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return version


def download(*, tracking_uri: str, name: str, version: str) -> str:
    """Download a version's model folder; returns its local path.

    Resolved through a client: ``models:/`` URIs would go to MLflow's global registry URI.
    """
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return mlflow.artifacts.download_artifacts(
        artifact_uri=client.get_model_version_download_uri(name, version),
        tracking_uri=tracking_uri,
    )


def model_bytes(*, tracking_uri: str, name: str, version: str) -> bytes:
    """The registered ``model.onnx`` (for computing expected outputs independently)."""
    local = download(tracking_uri=tracking_uri, name=name, version=version)
    return (Path(local) / "model.onnx").read_bytes()


def write_features(
    store: OnlineStore,
    rows: Mapping[str, list[float]],
    *,
    view: str = VIEW,
    version: str = VIEW_VERSION,
) -> None:
    """Materialize ``{entity: [amount, amount_mean_24h, events_count_1h]}`` into ``view``."""
    now = datetime.now(UTC)
    frame = pd.DataFrame(
        [
            {ENTITY: key, "ts": now, **dict(zip(FEATURES, values, strict=True))}
            for key, values in rows.items()
        ]
    )
    store.update(view)
    store.write_batch(
        view=view,
        version=version,
        frame=frame,
        entity=ENTITY,
        timestamp="ts",
        features=FEATURES,
        ttl=timedelta(days=1),
    )
