"""The model the serving benchmarks serve: made by the platform's own demo, cached.

:func:`ensure_setup` runs ``mlops demo`` (generate → materialize → train → evaluate →
serve) as a subprocess with a home folder of its own under the work folder and the
Redis online store (DB 4, key prefix ``bench-serving``, so it never touches the
platform's DB 0 nor the other benchmarks' DBs 2 and 3). The result is a registered ONNX
model aliased ``champion`` in the home's SQLite MLflow registry and its feature view
materialized in Redis. A stamp file records the demo's inputs; the next run reuses the
setup when they are the same, the registry is there and Redis still holds the features
(rows expire a week after they were written), and makes it again otherwise or with
``fresh``.

:func:`feature_rows` reads real feature rows back from the online store, as serving
will: the entity ids that are there and their rows in the model's column order;
:func:`inline_body` makes a ``POST /predict`` body of rows.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from feast_env import work_dir
from mlflow import MlflowClient

from _serving import servers, wrk
from _serving.servers import child_env
from mlops.features.online.redis import RedisOnlineStore, connect
from mlops.registry import CHAMPION, version_by_alias
from mlops.tags import Tags

REDIS_URL = "redis://127.0.0.1:6379/4"
KEY_PREFIX = "bench-serving"
MODEL_NAME = "fraud_detector"
_STAMP = "setup.json"


@dataclass(frozen=True)
class DemoInputs:
    """What the demo is run with (the cache key)."""

    entities: int
    days: int
    epochs: int
    seed: int
    redis_url: str = REDIS_URL
    key_prefix: str = KEY_PREFIX
    model_name: str = MODEL_NAME


@dataclass(frozen=True)
class Setup:
    """A registered model served from ``home``, its features online in Redis."""

    home: Path
    tracking_uri: str
    redis_url: str
    key_prefix: str
    model_name: str
    version: str
    feature_names: list[str]
    view: str
    view_version: str
    entity_key: str
    onnx_sha256: str

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}/{self.version}"

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)


def app_env(setup: Setup) -> dict[str, str]:
    """``MLOPS_*`` settings that point the app at the setup (Redis online store)."""
    return {
        "MLOPS_HOME": str(setup.home),
        "MLOPS_MLFLOW__TRACKING_URI": setup.tracking_uri,
        "MLOPS_ONLINE_STORE__TYPE": "redis",
        "MLOPS_ONLINE_STORE__URL": setup.redis_url,
        "MLOPS_ONLINE_STORE__KEY_PREFIX": setup.key_prefix,
        "MLOPS_SERVING__MODEL_NAME": setup.model_name,
        "MLOPS_SERVING__LISTEN_EVENTS": "false",  # no Prefect server here
        "PREFECT_HOME": str(setup.home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


def ensure_setup(work: Path, inputs: DemoInputs, *, fresh: bool = False) -> Setup:
    """The cached setup when still valid (see the module docstring), else a new one."""
    stamp = work / _STAMP
    if not fresh and stamp.exists():
        saved = json.loads(stamp.read_text())
        if saved.get("inputs") == asdict(inputs):
            setup = _from_json(saved["setup"])
            problem = _check(setup)
            if problem is None:
                print(f"setup: reusing {setup.model_uri} in {setup.home} (--fresh to redo)")
                return setup
            print(f"setup: the cached one cannot be used ({problem}): making it again")
        else:
            print("setup: the demo's inputs changed: making it again")
    return _make(work, inputs)


def _make(work: Path, inputs: DemoInputs) -> Setup:
    home = work / "home"
    stamp = work / _STAMP
    stamp.unlink(missing_ok=True)
    if home.exists():
        shutil.rmtree(home)
    _drop_keys(inputs.redis_url, inputs.key_prefix)
    home.mkdir(parents=True)
    tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
    env = {
        "MLOPS_HOME": str(home),
        "MLOPS_MLFLOW__TRACKING_URI": tracking_uri,
        "MLOPS_ONLINE_STORE__TYPE": "redis",
        "MLOPS_ONLINE_STORE__URL": inputs.redis_url,
        "MLOPS_ONLINE_STORE__KEY_PREFIX": inputs.key_prefix,
        "MLOPS_SERVING__LISTEN_EVENTS": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    command = [
        str(Path(sys.executable).parent / "mlops"),
        "demo",
        "--entities",
        str(inputs.entities),
        "--days",
        str(inputs.days),
        "--epochs",
        str(inputs.epochs),
        "--seed",
        str(inputs.seed),
    ]
    log = work / "demo.log"
    print(f"setup: {' '.join(command[1:])} (Redis online store {inputs.redis_url}) …", flush=True)
    started = time.perf_counter()
    with log.open("wb") as out:
        done = subprocess.run(
            command, cwd=work, env=child_env(env), stdout=out, stderr=subprocess.STDOUT
        )
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"`mlops demo` failed (exit {done.returncode}); {log} ends:\n{tail}")
    setup = _read_registry(home, tracking_uri, inputs)
    problem = _check(setup)
    if problem is not None:
        raise RuntimeError(f"the demo ran but its model cannot be benchmarked: {problem}")
    stamp.write_text(
        json.dumps({"inputs": asdict(inputs), "setup": _to_json(setup)}, indent=2) + "\n"
    )
    print(
        f"setup: {setup.model_uri} registered and {setup.view}@{setup.view_version} online "
        f"in {time.perf_counter() - started:.0f} s (log {log})",
        flush=True,
    )
    return setup


def _read_registry(home: Path, tracking_uri: str, inputs: DemoInputs) -> Setup:
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    champion = version_by_alias(client, inputs.model_name, CHAMPION)
    if champion is None:
        raise RuntimeError(f"the demo left no {inputs.model_name}@{CHAMPION} in {tracking_uri}")
    tags = dict(champion.tags or {})
    views = json.loads(tags[Tags.FEATURE_VIEWS])
    if len(views) != 1:
        raise RuntimeError(f"expected a model of one feature view, got {views}")
    view, _, view_version = views[0].rpartition("@")
    return Setup(
        home=home,
        tracking_uri=tracking_uri,
        redis_url=inputs.redis_url,
        key_prefix=inputs.key_prefix,
        model_name=inputs.model_name,
        version=str(champion.version),
        feature_names=list(json.loads(tags[Tags.FEATURE_NAMES])),
        view=view,
        view_version=view_version,
        entity_key=tags[Tags.ENTITY_KEY],
        onnx_sha256=tags[Tags.ONNX_SHA256],
    )


def _check(setup: Setup) -> str | None:
    """Why ``setup`` cannot be used (registry, champion, online rows), or None."""
    if not (setup.home / "mlflow.db").exists():
        return f"no registry at {setup.tracking_uri}"
    try:
        champion = version_by_alias(setup.client(), setup.model_name, CHAMPION)
    except Exception as exc:  # the registry cannot be read: redo it
        return f"the registry cannot be read: {exc}"
    if champion is None or str(champion.version) != setup.version:
        return f"{setup.model_name}@{CHAMPION} is no longer version {setup.version}"
    try:
        keys, _ = feature_rows(setup, n=1, seed=0)
    except Exception as exc:  # Redis flushed, expired or unreachable
        return str(exc)
    return None if keys else "no entity of the view is online"


def feature_rows(setup: Setup, *, n: int, seed: int) -> tuple[list[str], list[list[float]]]:
    """Up to ``n`` entity ids found online and their feature rows (model column order).

    Entities are drawn from the keys of the view in Redis; a row whose view version is
    not the model's, or that lacks a feature, is skipped.
    """
    client = connect(setup.redis_url)
    try:
        pattern = f"{setup.key_prefix}:{setup.view}:*"
        prefix = len(pattern) - 1
        keys = sorted(k.decode()[prefix:] for k in client.scan_iter(match=pattern, count=1000))
    finally:
        client.close()
    if not keys:
        raise RuntimeError(f"no key {setup.key_prefix}:{setup.view}:* in {setup.redis_url}")
    random.Random(seed).shuffle(keys)
    store = RedisOnlineStore(setup.redis_url, key_prefix=setup.key_prefix)
    try:
        found = store.read(view=setup.view, keys=keys[: max(n * 2, n + 100)])
    finally:
        store.close()
    entities, rows = [], []
    for key, row in found.items():
        if row is None or row.version != setup.view_version:
            continue
        values = [row.values.get(f) for f in setup.feature_names]
        if any(v is None or v != v for v in values):  # missing or NaN
            continue
        entities.append(key)
        rows.append([float(v) for v in values if v is not None])
        if len(entities) == n:
            break
    return entities, rows


def inline_body(names: list[str], rows: list[list[float]]) -> dict[str, object]:
    """The ``POST /predict`` body of inline ``rows``: ``{"rows": [{feature: value}]}``."""
    return {"rows": [dict(zip(names, row, strict=True)) for row in rows]}


def _drop_keys(url: str, prefix: str) -> None:
    client = connect(url)
    try:
        batch = []
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)
    finally:
        with contextlib.suppress(Exception):
            client.close()


def _to_json(setup: Setup) -> dict[str, object]:
    data = asdict(setup)
    data["home"] = str(setup.home)
    return data


def _from_json(data: dict[str, object]) -> Setup:
    return Setup(**{**data, "home": Path(str(data["home"]))})  # type: ignore[arg-type]


def start_run(args: Any) -> tuple[Path, Setup]:
    """What both serving benchmarks do first: stop cleanly on SIGTERM, check wrk is
    there, and make (or reuse) the setup from ``args`` (entities, days, epochs, seed,
    fresh). Returns the work folder and the setup."""

    servers.exit_on_sigterm()
    if wrk.available() is None:
        sys.exit("wrk is not installed: `apt-get install wrk` (Debian package wrk, 4.1)")
    work = work_dir("serving")
    setup = ensure_setup(
        work,
        DemoInputs(entities=args.entities, days=args.days, epochs=args.epochs, seed=args.seed),
        fresh=args.fresh,
    )
    return work, setup
