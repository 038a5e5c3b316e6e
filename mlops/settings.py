"""One settings root for the whole platform.

Every value comes from ``MLOPS_*`` environment variables (nested groups use ``__``,
for example ``MLOPS_ONLINE_STORE__TYPE=redis``) or an ``.env`` file. With no
configuration at all everything lives under ``MLOPS_HOME`` (default ``./.mlops``):

========================  ==========================================
concern                   embedded default
========================  ==========================================
orchestration             Prefect's ephemeral API, ``<home>/prefect``
runs and models           ``sqlite:///<home>/mlflow.db`` + ``<home>/mlartifacts``
offline features          ``<home>/offline`` (Parquet)
online features           ``<home>/online.db`` (SQLite)
request log               ``sqlite:///<home>/requests.db``
user datasets             ``<home>/datasets`` + ``sqlite:///<home>/catalog.db``
feature registry          ``sqlite:///<home>/catalog.db`` (the datasets' catalog database)
feature views             in code (:mod:`mlops.specs`) and ``./features.yaml`` if present
========================  ==========================================

Nothing is created when settings are read: :meth:`Settings.ensure_home` makes the
folders, and is called by the CLI, the app lifespan and the flows.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class PrefectSettings(BaseModel):
    """Where Prefect's API lives. Empty ``api_url`` means the ephemeral API in the home."""

    api_url: str | None = None
    home: Path | None = Field(default=None, description="PREFECT_HOME; default <home>/prefect")


class MlflowSettings(BaseModel):
    tracking_uri: str | None = Field(default=None, description="default sqlite:///<home>/mlflow.db")
    registry_uri: str | None = Field(default=None, description="default: the tracking URI")
    artifact_root: str | None = Field(default=None, description="default <home>/mlartifacts")
    experiment: str = "mlops"


class OfflineStoreSettings(BaseModel):
    path: Path | None = Field(default=None, description="default <home>/offline")


class SqliteOnlineStoreSettings(BaseModel):
    type: Literal["sqlite"] = "sqlite"
    path: Path | None = Field(default=None, description="default <home>/online.db")


class RedisOnlineStoreSettings(BaseModel):
    type: Literal["redis"] = "redis"
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "mlops"
    socket_timeout_s: float = 2.0


OnlineStoreSettings = SqliteOnlineStoreSettings | RedisOnlineStoreSettings


class RequestLogSettings(BaseModel):
    """Where predictions and feedback are logged, and how (batched off the hot path)."""

    url: str | None = Field(default=None, description="default sqlite:///<home>/requests.db")
    batch_size: int = Field(default=500, ge=1, description="records per INSERT")
    flush_interval_s: float = Field(
        default=0.5, gt=0, description="longest a record waits in memory before its batch"
    )
    queue_max: int = Field(
        default=20_000, ge=1, description="records held in memory; beyond, they go to the spool"
    )
    spool_dir: Path | None = Field(default=None, description="default <home>/serving/spool")
    spool_max_bytes: int = Field(
        default=256 * 1024**2,
        ge=1024,
        description="disk the spool may use while the database is down; beyond, the oldest "
        "records are dropped and counted",
    )
    retry_interval_s: float = Field(
        default=2.0, gt=0, description="seconds between tries while the database is down"
    )


class DatasetSettings(BaseModel):
    """User datasets: where files and their catalog live, and the validation limits."""

    catalog_url: str | None = Field(default=None, description="default sqlite:///<home>/catalog.db")
    path: Path | None = Field(default=None, description="default <home>/datasets")
    max_bytes: int = Field(default=200_000_000, ge=1, description="largest source file")
    max_empty_fraction: float = Field(default=0.5, ge=0.0, le=1.0, description="per column")
    min_rows: int = Field(default=2, ge=1)
    ttl_days: int = Field(default=0, ge=0, description="versions expire after; 0 = never")


class FeatureSettings(BaseModel):
    """Feature views from YAML, the feature registry, and how materialization is chunked."""

    definitions: Path = Field(
        default=Path("features.yaml"),
        description="YAML file of feature views, beside the project (optional)",
    )
    registry_url: str | None = Field(
        default=None, description="default sqlite:///<home>/catalog.db"
    )
    chunk_events: int = Field(
        default=2_000_000,
        ge=1,
        description="events computed per materialization chunk, look-back included "
        "(bounds memory; about 1 GiB peak at the default)",
    )
    skew_sample: int = Field(default=200, ge=0, description="entities the skew check compares")


class ServingSettings(BaseModel):
    """The inference app: what it serves, its limits, auth and how it follows the registry."""

    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str = "fraud_detector"
    max_batch_rows: int = Field(default=10_000, ge=1, description="rows per /predict request")
    max_body_bytes: int = Field(
        default=8 * 1024**2, ge=1024, description="largest request body; beyond, 413"
    )
    api_token: SecretStr = Field(
        default=SecretStr("change-me"),
        description="bearer token of the management routes (a placeholder outside "
        "development refuses to start)",
    )
    require_token_for_predict: bool = Field(
        default=False, description="also require the token on /predict and /feedback"
    )
    reload_poll_s: float = Field(
        default=5.0, gt=0, description="seconds between checks of the champion alias"
    )
    listen_events: bool = Field(
        default=True,
        description="reload at once on the Prefect event mlops.model.promoted (needs a "
        "Prefect server: MLOPS_PREFECT__API_URL)",
    )


class OrchestrationSettings(BaseModel):
    """Work pools, the schedules' time zone and GPU concurrency (``prefect.yaml``,
    ``mlops deploy``)."""

    local_pool: str = Field(default="local", description="process work pool of CPU flows")
    gpu_pool: str = Field(default="gpu", description="work pool of GPU training jobs")
    gpus_per_pool: int = Field(
        default=1,
        ge=1,
        description="global concurrency limit gpu:<pool>: trainings at once on a GPU pool",
    )
    timezone: str = Field(default="UTC", description="time zone of the cron schedules")


class MonitoringSettings(BaseModel):
    """Defaults of the monitor flow: its window and the thresholds that emit events."""

    window_hours: float = Field(default=24.0, gt=0, description="request-log window read")
    drift_share_threshold: float = Field(
        default=0.3,
        gt=0,
        le=1,
        description="share of drifted features at or above which drift-detected is emitted",
    )
    min_live_accuracy: float = Field(
        default=0.8,
        ge=0,
        le=1,
        description="live accuracy (from feedback) below which performance-degraded is emitted",
    )
    min_rows: int = Field(default=200, ge=1, description="fewest logged rows to judge drift")
    reference_rows: int = Field(
        default=5_000,
        ge=100,
        description="training rows saved with each model version as the drift reference",
    )


class TrainingSettings(BaseModel):
    """How training uses the hardware it lands on."""

    gpu_pool: str | None = Field(
        default=None,
        description="set by the GPU pools' job templates: training then holds the global "
        "concurrency limit gpu:<pool> while it runs",
    )
    mixed_precision: bool = Field(
        default=True, description="automatic mixed precision when training on CUDA"
    )


class ConsoleSettings(BaseModel):
    """The Streamlit console: its login and how often live pages refresh."""

    password: SecretStr = Field(
        default=SecretStr("change-me"),
        description="password of the console's login (viewing); the management token "
        "(MLOPS_SERVING__API_TOKEN) also logs in and unlocks the buttons that change state. "
        "A placeholder outside development: the console refuses to start",
    )
    login_delay_s: float = Field(
        default=0.5,
        ge=0.0,
        description="wait after a failed login, doubled for each other failure of the last "
        "5 minutes in this console (any session), up to 30 s; 0 turns it off",
    )
    refresh_s: float = Field(
        default=2.0, ge=0.5, description="seconds between refreshes of live views (training)"
    )
    mlflow_ui_url: str | None = Field(
        default=None,
        description="where links to MLflow runs point; default: the tracking URI when it is "
        "an http(s) server",
    )
    prefect_ui_url: str | None = Field(
        default=None,
        description="where links to flow runs point; default: the Prefect API URL without /api",
    )


class Settings(BaseSettings):
    """The platform's settings root (env prefix ``MLOPS_``, nested delimiter ``__``)."""

    model_config = SettingsConfigDict(
        env_prefix="MLOPS_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    environment: Literal["development", "production"] = "development"
    home: Path = Path(".mlops")
    prefect: PrefectSettings = PrefectSettings()
    mlflow: MlflowSettings = MlflowSettings()
    offline_store: OfflineStoreSettings = OfflineStoreSettings()
    online_store: OnlineStoreSettings = Field(
        default_factory=SqliteOnlineStoreSettings, discriminator="type"
    )
    request_log: RequestLogSettings = RequestLogSettings()
    serving: ServingSettings = ServingSettings()
    datasets: DatasetSettings = DatasetSettings()
    features: FeatureSettings = FeatureSettings()
    orchestration: OrchestrationSettings = OrchestrationSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    training: TrainingSettings = TrainingSettings()
    console: ConsoleSettings = ConsoleSettings()

    @model_validator(mode="after")
    def _resolve_defaults(self) -> Settings:
        """Fill every embedded default from the home folder (absolute paths)."""
        home = self.home.expanduser().resolve()
        self.home = home
        if self.prefect.home is None and self.prefect.api_url is None:
            self.prefect.home = home / "prefect"
        if self.mlflow.tracking_uri is None:
            self.mlflow.tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
        if self.mlflow.registry_uri is None:
            self.mlflow.registry_uri = self.mlflow.tracking_uri
        if self.mlflow.artifact_root is None:
            self.mlflow.artifact_root = str(home / "mlartifacts")
        if self.offline_store.path is None:
            self.offline_store.path = home / "offline"
        if isinstance(self.online_store, SqliteOnlineStoreSettings) and (
            self.online_store.path is None
        ):
            self.online_store.path = home / "online.db"
        if self.request_log.url is None:
            self.request_log.url = f"sqlite:///{home / 'requests.db'}"
        if self.request_log.spool_dir is None:
            self.request_log.spool_dir = home / "serving" / "spool"
        if self.datasets.catalog_url is None:
            self.datasets.catalog_url = f"sqlite:///{home / 'catalog.db'}"
        self.features.definitions = self.features.definitions.expanduser().resolve()
        if self.features.registry_url is None:
            self.features.registry_url = self.datasets.catalog_url
        if self.datasets.path is None:
            self.datasets.path = home / "datasets"
        if (
            self.environment != "development"
            and self.serving.api_token.get_secret_value() == "change-me"
        ):
            raise ValueError(
                "MLOPS_SERVING__API_TOKEN is the placeholder 'change-me' outside development: "
                "set a real token"
            )
        return self

    # --- derived paths (always set after validation) -----------------------------------
    @property
    def offline_path(self) -> Path:
        assert self.offline_store.path is not None
        return self.offline_store.path

    @property
    def tracking_uri(self) -> str:
        assert self.mlflow.tracking_uri is not None
        return self.mlflow.tracking_uri

    @property
    def registry_uri(self) -> str:
        return self.mlflow.registry_uri or self.tracking_uri

    @property
    def data_dir(self) -> Path:
        """Where generated or imported raw event tables go."""
        return self.home / "data"

    def ensure_home(self) -> None:
        """Create the home folder and the folders the embedded backends write into."""
        for path in (self.home, self.data_dir, self.offline_path):
            path.mkdir(parents=True, exist_ok=True)
        if self.prefect.home is not None:
            self.prefect.home.mkdir(parents=True, exist_ok=True)
        if self.mlflow.artifact_root and "://" not in self.mlflow.artifact_root:
            Path(self.mlflow.artifact_root).mkdir(parents=True, exist_ok=True)

    def prefect_env(self) -> dict[str, str]:
        """Environment for Prefect: the ephemeral API in the home, or the configured server.

        Prefect reads its settings when it is imported, so the CLI applies these before
        importing any flow (see :func:`apply_prefect_env`).
        """
        env = {
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": os.environ.get("PREFECT_UI_ENABLED", "true"),
        }
        if self.prefect.api_url:
            env["PREFECT_API_URL"] = self.prefect.api_url
        if self.prefect.home is not None:
            env["PREFECT_HOME"] = str(self.prefect.home)
        return env


def apply_prefect_env(settings: Settings) -> None:
    """Put :meth:`Settings.prefect_env` into ``os.environ`` (call before importing prefect)."""
    for key, value in settings.prefect_env().items():
        os.environ.setdefault(key, value)
