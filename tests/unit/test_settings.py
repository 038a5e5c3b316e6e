"""Settings: embedded defaults under MLOPS_HOME, env overrides, placeholder secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from mlops.settings import (
    RedisOnlineStoreSettings,
    Settings,
    SqliteOnlineStoreSettings,
    apply_prefect_env,
)


def tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_defaults_live_under_home(clean_mlops_env: Path) -> None:
    home = clean_mlops_env
    s = Settings()
    assert s.home == home.resolve()
    assert s.environment == "development"
    assert s.prefect.api_url is None
    assert s.prefect.home == home / "prefect"
    assert s.tracking_uri == f"sqlite:///{home / 'mlflow.db'}"
    assert s.mlflow.registry_uri == s.tracking_uri
    assert s.mlflow.artifact_root == str(home / "mlartifacts")
    assert s.offline_path == home / "offline"
    assert isinstance(s.online_store, SqliteOnlineStoreSettings)
    assert s.online_store.path == home / "online.db"
    assert s.request_log.url == f"sqlite:///{home / 'requests.db'}"
    assert s.data_dir == home / "data"
    for path in (
        s.prefect.home,
        s.offline_path,
        s.online_store.path,
        s.data_dir,
        Path(s.mlflow.artifact_root),
    ):
        assert path.is_absolute()
        assert path.is_relative_to(home)


def test_default_home_is_dot_mlops_in_cwd(clean_mlops_env: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLOPS_HOME")
    s = Settings()
    assert s.home == (Path.cwd() / ".mlops").resolve()
    assert s.offline_path == s.home / "offline"


def test_relative_home_is_made_absolute(clean_mlops_env: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLOPS_HOME", "rel/home")
    s = Settings()
    assert s.home == Path.cwd().resolve() / "rel" / "home"
    assert s.tracking_uri == f"sqlite:///{s.home / 'mlflow.db'}"


def test_instances_do_not_share_defaults(clean_mlops_env: Path, monkeypatch, tmp_path) -> None:
    first = Settings()
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "other"))
    second = Settings()
    assert second.home == (tmp_path / "other").resolve()
    assert second.tracking_uri == f"sqlite:///{second.home / 'mlflow.db'}"
    assert second.offline_path == second.home / "offline"
    assert second.prefect.home == second.home / "prefect"
    assert first.offline_path == clean_mlops_env / "offline"  # untouched by the second


def test_redis_online_store_from_nested_env(clean_mlops_env: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLOPS_ONLINE_STORE__TYPE", "redis")
    monkeypatch.setenv("MLOPS_ONLINE_STORE__URL", "redis://cache.internal:6380/2")
    s = Settings()
    assert isinstance(s.online_store, RedisOnlineStoreSettings)
    assert s.online_store.type == "redis"
    assert s.online_store.url == "redis://cache.internal:6380/2"
    assert s.online_store.key_prefix == "mlops"


def test_unknown_online_store_type(clean_mlops_env: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLOPS_ONLINE_STORE__TYPE", "memcached")
    with pytest.raises(ValidationError, match="online_store"):
        Settings()


def test_mlflow_and_other_overrides(clean_mlops_env: Path, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("MLOPS_MLFLOW__TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("MLOPS_MLFLOW__EXPERIMENT", "fraud")
    monkeypatch.setenv("MLOPS_OFFLINE_STORE__PATH", str(tmp_path / "lake"))
    monkeypatch.setenv("MLOPS_REQUEST_LOG__URL", "postgresql+psycopg://u:p@db/requests")
    monkeypatch.setenv("MLOPS_SERVING__PORT", "9001")
    s = Settings()
    assert s.tracking_uri == "http://mlflow:5000"
    assert s.mlflow.registry_uri == "http://mlflow:5000"  # follows the tracking URI
    assert s.mlflow.experiment == "fraud"
    assert s.mlflow.artifact_root == str(clean_mlops_env / "mlartifacts")
    assert s.offline_path == tmp_path / "lake"
    assert s.request_log.url == "postgresql+psycopg://u:p@db/requests"
    assert s.serving.port == 9001


def test_prefect_server(clean_mlops_env: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLOPS_PREFECT__API_URL", "http://prefect:4200/api")
    s = Settings()
    assert s.prefect.home is None
    env = s.prefect_env()
    assert env["PREFECT_API_URL"] == "http://prefect:4200/api"
    assert "PREFECT_HOME" not in env
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"


def test_prefect_env_embedded(clean_mlops_env: Path) -> None:
    env = Settings().prefect_env()
    assert env["PREFECT_HOME"] == str(clean_mlops_env / "prefect")
    assert "PREFECT_API_URL" not in env


def test_apply_prefect_env_keeps_what_is_set(clean_mlops_env: Path, monkeypatch) -> None:
    import os

    for key in (
        "PREFECT_HOME",
        "PREFECT_API_URL",
        "PREFECT_SERVER_ANALYTICS_ENABLED",
        "PREFECT_UI_ENABLED",
    ):
        monkeypatch.setenv(key, "placeholder")  # so that undo restores the original
        monkeypatch.delenv(key)
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "true")
    apply_prefect_env(Settings())
    assert os.environ["PREFECT_HOME"] == str(clean_mlops_env / "prefect")
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "true"
    assert "PREFECT_API_URL" not in os.environ


def test_placeholder_token_refused_in_production(clean_mlops_env: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLOPS_ENVIRONMENT", "production")
    with pytest.raises(ValidationError, match="MLOPS_SERVING__API_TOKEN"):
        Settings()


def test_real_token_in_production(clean_mlops_env: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLOPS_ENVIRONMENT", "production")
    monkeypatch.setenv("MLOPS_SERVING__API_TOKEN", "s3cret-token")
    s = Settings()
    assert s.environment == "production"
    assert s.serving.api_token.get_secret_value() == "s3cret-token"
    assert "s3cret-token" not in repr(s)


def test_placeholder_token_allowed_in_development(clean_mlops_env: Path) -> None:
    assert Settings().serving.api_token.get_secret_value() == "change-me"


def test_dotenv_in_cwd_is_read_and_env_wins(clean_mlops_env: Path, monkeypatch) -> None:
    Path(".env").write_text("MLOPS_SERVING__PORT=1234\nMLOPS_SERVING__HOST=0.0.0.0\n")
    monkeypatch.setenv("MLOPS_SERVING__HOST", "10.0.0.1")
    s = Settings()
    assert s.serving.port == 1234
    assert s.serving.host == "10.0.0.1"


def test_reading_settings_creates_nothing(clean_mlops_env: Path, tmp_path: Path) -> None:
    before = tree(tmp_path)
    s = Settings()
    s.prefect_env()
    assert tree(tmp_path) == before
    assert not clean_mlops_env.exists()


def test_ensure_home_creates_the_folders(clean_mlops_env: Path) -> None:
    s = Settings()
    s.ensure_home()
    s.ensure_home()  # idempotent
    assert tree(clean_mlops_env) == ["data", "mlartifacts", "offline", "prefect"]
    assert all((clean_mlops_env / d).is_dir() for d in tree(clean_mlops_env))


def test_ensure_home_skips_remote_artifacts(clean_mlops_env: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLOPS_MLFLOW__ARTIFACT_ROOT", "s3://bucket/artifacts")
    monkeypatch.setenv("MLOPS_PREFECT__API_URL", "http://prefect:4200/api")
    Settings().ensure_home()
    assert tree(clean_mlops_env) == ["data", "offline"]
