"""The ``mlops`` command: run the loop, the flows, and the app.

Prefect reads its settings when it is imported, so every command applies the platform's
Prefect environment first and imports flows inside the command.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from mlops.cli.common import at_least_one, console, err, fail, load_settings
from mlops.cli.datasets import datasets_app
from mlops.cli.features import features_app
from mlops.cli.stack import status as stack_status
from mlops.cli.stack import up as stack_up
from mlops.errors import MlopsError
from mlops.settings import Settings, apply_prefect_env

app = typer.Typer(
    name="mlops",
    help=(
        "MLOps on Prefect 3: features, training, evaluation and serving as flows.\n\n"
        "Example: `mlops demo` runs the whole loop on embedded defaults "
        "(everything under ./.mlops)."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",
)

app.add_typer(datasets_app, name="datasets")
app.add_typer(features_app, name="features")

DateOpt = Annotated[
    datetime | None,
    typer.Option(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"], help="UTC date (YYYY-MM-DD)."),
]


def _settings(verbose: bool = False) -> Settings:
    """Settings from the environment, and the environment Prefect and MLflow need."""
    settings = load_settings()
    settings.ensure_home()  # before prefect is imported: it makes PREFECT_HOME on import
    apply_prefect_env(settings)
    level = "INFO" if verbose else "WARNING"
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", level)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("mlflow", "alembic", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return settings


def _app_env(settings: Settings) -> dict[str, str]:
    """What a child process needs to see the same settings as this one."""
    env = {"MLOPS_HOME": str(settings.home), **settings.prefect_env()}
    env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    return env


def _show(result: dict[str, Any], title: str) -> None:
    table = Table(title=title, show_header=False)
    for key, value in result.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        table.add_row(key, shown)
    console.print(table)


@app.command()
def demo(
    entities: Annotated[int, typer.Option(min=50, help="Cards to simulate.")] = 5000,
    days: Annotated[int, typer.Option(min=7, help="Days of transactions.")] = 60,
    seed: Annotated[int, typer.Option(help="Random seed of the data and the model.")] = 0,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 8,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Training batch size (smaller for small data).")
    ] = 1024,
    end: DateOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show flow logs.")] = False,
) -> None:
    """Run the whole loop on embedded defaults and print a summary.

    Generates card transactions, materializes features (Parquet + SQLite online store),
    trains and registers an ONNX model in MLflow, promotes it through the quality gates,
    serves it with the FastAPI app and sends real HTTP predictions. Run it again to
    train version 2 and evaluate it against version 1.

    Example: `mlops demo --entities 5000 --days 60 --epochs 8`
    """
    settings = _settings(verbose)
    from mlops.cli.demo import DemoOptions, run_demo, today_utc

    opts = DemoOptions(
        entities=entities,
        days=days,
        seed=seed,
        epochs=epochs,
        batch_size=batch_size,
        end=end or today_utc(),
    )
    console.rule("[bold]mlops demo")
    console.print(f"home: {settings.home}")
    stage = {"n": 0}

    def step(message: str) -> None:
        stage["n"] += 1
        console.print(f"[bold cyan][{stage['n']}/5][/bold cyan] {message} …")

    try:
        with console.status("working…", spinner="dots"):
            summary = run_demo(settings, opts, step=step, app_env=_app_env(settings))
    except MlopsError as exc:
        raise fail(exc) from exc
    _print_summary(settings, summary)


def _print_summary(settings: Settings, summary: Any) -> None:
    trained, evaluated = summary.trained, summary.evaluated
    table = Table(title="mlops demo: summary", show_header=False, title_justify="left")
    table.add_row("events", f"{summary.events:,} (fraud rate {summary.fraud_rate:.2%})")
    mat = summary.materialized
    table.add_row(
        "feature view",
        f"{mat['view']}@{mat['version']}: {mat['rows']:,} rows, {mat['partitions']} "
        f"partitions, {mat['entities_online']:,} entities online ({mat['online_store']})",
    )
    table.add_row("model", f"{trained['model']} version {trained['version']}")
    for key in ("roc_auc", "pr_auc", "log_loss", "accuracy"):
        table.add_row(f"holdout {key}", f"{trained[f'holdout_{key}']:.4f}")
    table.add_row("ONNX parity (max abs diff)", f"{trained['parity_max_abs_diff']:.2e}")
    decision = "promoted" if evaluated["promoted"] else "not promoted"
    table.add_row("gate", f"{decision}: {evaluated['reason']}")
    table.add_row("served version", f"{summary.served_version} at {summary.app_url}")
    ent, inl = summary.entity_latency_ms, summary.inline_latency_ms
    table.add_row(
        "latency by entity", f"p50 {ent['p50']:.2f} ms, p99 {ent['p99']:.2f} ms (HTTP round trip)"
    )
    table.add_row("latency inline", f"p50 {inl['p50']:.2f} ms, p99 {inl['p99']:.2f} ms")
    table.add_row("predictions sent", str(summary.predictions))
    table.add_row("time", ", ".join(f"{k} {v:.1f}s" for k, v in summary.seconds.items()))
    table.add_row("MLflow tracking URI", settings.tracking_uri)
    prefect_where = settings.prefect.api_url or f"{settings.prefect.home}/prefect.db (ephemeral)"
    table.add_row("Prefect state", prefect_where)
    console.print(table)
    console.print("\nOpen the UIs on this state:")
    tools = _tools_dir()
    commands = [f"{tools}mlflow ui --backend-store-uri {settings.tracking_uri} --port 5000"]
    if not settings.prefect.api_url:
        commands.append(
            f"PREFECT_HOME={settings.prefect.home} {tools}prefect server start  # UI on :4200"
        )
    commands.append(f"MLOPS_HOME={settings.home} {tools}mlops serve  # the app, on the champion")
    for command in commands:
        console.print(f"  {command}", soft_wrap=True, highlight=False, markup=False)


def _tools_dir() -> str:
    """Where this interpreter's console scripts are, as the user can type it ('' on PATH)."""
    bin_dir = Path(sys.executable).parent
    if shutil.which("mlflow") == str(bin_dir / "mlflow"):
        return ""
    try:
        return f"{bin_dir.relative_to(Path.cwd())}/"
    except ValueError:
        return f"{bin_dir}/"


@app.command()
def generate(
    entities: Annotated[int, typer.Option(min=1, help="Cards to simulate.")] = 5000,
    days: Annotated[int, typer.Option(min=1, help="Days of transactions.")] = 60,
    rate: Annotated[float, typer.Option(help="Transactions per card per day.")] = 0.75,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    drift: Annotated[float, typer.Option(help="Shift of the feature distribution.")] = 0.0,
    concept_drift: Annotated[
        float, typer.Option(help="Share of fraud with a new pattern (0..1).")
    ] = 0.0,
    end: DateOpt = None,
    out: Annotated[
        Path | None, typer.Option(help="Output Parquet (default: the demo source).")
    ] = None,
) -> None:
    """Generate the demo card-transaction table (deterministic by seed and end date).

    Example: `mlops generate --entities 5000 --days 60 --drift 0.5`
    """
    settings = _settings()
    from mlops.cli.demo import today_utc
    from mlops.data.generate import generate_transactions, write_events
    from mlops.specs import transactions_path

    try:
        frame = generate_transactions(
            n_entities=entities,
            days=days,
            events_per_entity_per_day=rate,
            seed=seed,
            drift=drift,
            concept_drift=concept_drift,
            end=end or today_utc(),
        )
    except MlopsError as exc:
        raise fail(exc) from exc
    path = write_events(frame, out or Path(transactions_path(settings)))
    console.print(
        f"wrote {len(frame):,} events of {frame['card_id'].nunique():,} cards to {path} "
        f"(fraud rate {frame['is_fraud'].mean():.2%})"
    )


@app.command("import-events")
def import_events(
    path: Annotated[Path, typer.Argument(help="CSV or Parquet file of labelled events.")],
    model: Annotated[str, typer.Option(help="Model spec whose source it becomes.")] = (
        "fraud_detector"
    ),
) -> None:
    """Make your own events (CSV or Parquet) the source of a model spec's feature views.

    The file must have the columns the views and the label need; it is checked and
    written as Parquet where `mlops materialize` and `mlops train` read it.

    Example: `mlops import-events transactions.csv`
    """
    settings = _settings()
    from mlops.data.events import import_events as import_file

    try:
        imported = import_file(settings, path, model)
    except MlopsError as exc:
        raise fail(exc) from exc
    console.print(f"imported {imported.rows:,} events from {path} into {imported.target}")


@app.command("materialize")
def materialize_cmd(
    view: Annotated[str, typer.Argument(help="Feature view name.")] = "card_transactions",
    start: DateOpt = None,
    end: DateOpt = None,
    incremental: Annotated[
        bool,
        typer.Option(
            "--incremental",
            help="Go on from the last materialized day recorded in the feature registry "
            "(and redo any missing or unreadable partition); --start is ignored.",
        ),
    ] = False,
    chunk_days: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Days per chunk; default: as many days as keep a chunk within "
            "MLOPS_FEATURES__CHUNK_EVENTS events (2M), which bounds memory.",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Materialize a feature view over whole UTC days (default: all the source covers).

    Example: `mlops materialize card_transactions --start 2026-01-01 --end 2026-02-01`,
    or `mlops materialize card_transactions --incremental` from a schedule.
    """
    _settings(verbose)
    from flows.materialize import materialize

    try:
        result = materialize(
            view_name=view,
            start=start,
            end=end,
            mode="incremental" if incremental else "full",
            chunk_days=chunk_days,
        )
    except MlopsError as exc:
        raise fail(exc) from exc
    _show(result, f"materialized {view}")


@app.command("train")
def train_cmd(
    model: Annotated[str, typer.Option(help="Model spec.")] = "fraud_detector",
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 8,
    batch_size: Annotated[int, typer.Option(min=1, help="Training batch size.")] = 1024,
    learning_rate: Annotated[float, typer.Option(help="Adam learning rate.")] = 2e-3,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    gpus: Annotated[
        int,
        typer.Option(
            callback=at_least_one("data-parallel training processes"),
            help="Data-parallel processes: more than 1 trains through torchrun, one process "
            "per GPU (at most the GPUs visible), or that many CPU processes with "
            "--device cpu.",
        ),
    ] = 1,
    start: DateOpt = None,
    end: DateOpt = None,
    labels_dataset: Annotated[
        str | None,
        typer.Option(
            help="Label rows from a registered dataset (NAME or NAME@VERSION, see "
            "`mlops datasets ls`) instead of the spec's label table."
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show flow logs.")] = False,
) -> None:
    """Train a model spec and register it as the `challenger`.

    Example: `mlops train --epochs 10 --device cuda --gpus 2`, or
    `mlops train --labels-dataset fraud_labels@2`
    """
    _settings(verbose)
    from flows.train import train

    try:
        result = train(
            model_name=model,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            device=device,
            start=start,
            end=end,
            labels_dataset=labels_dataset,
            gpus=gpus,
        )
    except MlopsError as exc:
        raise fail(exc) from exc
    _show(result, f"trained {model}")


@app.command("evaluate")
def evaluate_cmd(
    model: Annotated[str, typer.Option(help="Model spec.")] = "fraud_detector",
    min_roc_auc: Annotated[float, typer.Option(help="Gate: minimum ROC AUC.")] = 0.75,
    max_regression: Annotated[
        float, typer.Option(help="Gate: largest ROC AUC drop allowed against the champion.")
    ] = 0.01,
    folds: Annotated[
        int,
        typer.Option(
            callback=at_least_one("consecutive time folds of the holdout"),
            help="Walk-forward time folds of the holdout: 1 scores it whole; more also "
            "require the challenger not to regress on a majority of folds.",
        ),
    ] = 1,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show flow logs.")] = False,
) -> None:
    """Score challenger vs champion on the same holdout and promote through the gates.

    Example: `mlops evaluate --min-roc-auc 0.8 --folds 4`
    """
    _settings(verbose)
    from flows.evaluate import evaluate

    try:
        result = evaluate(
            model_name=model,
            min_roc_auc=min_roc_auc,
            max_regression=max_regression,
            folds=folds,
        )
    except MlopsError as exc:
        raise fail(exc) from exc
    table: list[dict[str, Any]] = result.get("folds") or []
    _show(
        {k: v for k, v in result.items() if not isinstance(v, dict | list)} | {"folds": len(table)},
        f"evaluated {model}",
    )
    if len(table) > 1:
        _show_folds(table)


def _show_folds(rows: list[dict[str, Any]]) -> None:
    """The walk-forward folds side by side: span, size and both models' ROC AUC."""
    columns = ["fold", "start", "end", "rows", "challenger_roc_auc", "champion_roc_auc"]
    table = Table(title="walk-forward folds")
    for column in columns:
        table.add_column(column.replace("_", " "))
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    console.print(table)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
) -> None:
    """Serve the champion with the FastAPI app (uvicorn).

    Example: `mlops serve --port 8000` then `curl localhost:8000/model`
    """
    settings = _settings()
    from mlops.cli.server import uvicorn_command

    cmd = uvicorn_command(host or settings.serving.host, port or settings.serving.port)
    os.execvpe(cmd[0], cmd, {**os.environ, **_app_env(settings)})


@app.command()
def deploy(
    serve_: Annotated[
        bool,
        typer.Option(
            "--serve",
            help="Instead of using work pools, run the CPU deployments here until Ctrl-C "
            "(a Prefect runner; schedules and triggers still apply).",
        ),
    ] = False,
    gpu_pool_type: Annotated[
        str,
        typer.Option(
            "--gpu-pool-type",
            help="Infrastructure of the GPU pool when it is created: `docker` (device "
            "requests) or `kubernetes` (nvidia.com/gpu limits, node selector, tolerations).",
        ),
    ] = "docker",
    update_pools: Annotated[
        bool,
        typer.Option(
            "--update-pools",
            help="Also reset the base job templates of pools that already exist.",
        ),
    ] = False,
    pools_only: Annotated[
        bool,
        typer.Option(
            "--pools-only",
            help="Only create the work pools and the GPU limit (then `prefect deploy --all`).",
        ),
    ] = False,
) -> None:
    """Register every deployment with its work pool, schedules and event triggers.

    `materialize/<view>` (hourly), `train/<model>`, `train/<model>-gpu` (GPU pool),
    `evaluate/<model>`, `monitor/<model>` (hourly) and `retrain/<model>` (weekly, and on
    drift-detected / performance-degraded with a cooldown): the set `prefect deploy --all`
    registers from prefect.yaml. First creates the missing work pools (`local`, a process
    pool, and the GPU pool) and creates or updates the global concurrency limit
    `gpu:<pool>` (MLOPS_ORCHESTRATION__GPUS_PER_POOL slots). Then start workers:
    `prefect worker start --pool local`. With `--serve` this process runs the CPU
    deployments itself (no pools, no worker); with `--pools-only` it registers nothing,
    for `prefect deploy --all` to register the same set from prefect.yaml.

    Example: `mlops deploy --gpu-pool-type kubernetes` then `prefect worker start --pool local`
    """
    settings = _settings()
    from deployments import build_deployments
    from deployments.pools import GPU_POOL_TYPES, ensure_gpu_limit, ensure_pools

    if gpu_pool_type not in GPU_POOL_TYPES:
        raise typer.BadParameter(
            f"must be one of {', '.join(GPU_POOL_TYPES)}, not {gpu_pool_type!r}",
            param_hint="--gpu-pool-type",
        )
    if serve_:
        from prefect import serve as prefect_serve

        local = [
            d
            for d in build_deployments(settings)
            if d.work_pool_name == settings.orchestration.local_pool
        ]
        for deployment in local:  # this process runs them: no work pool
            deployment.work_pool_name = None
            deployment.job_variables = {}
        console.print(f"serving {len(local)} deployments (Ctrl-C to stop)")
        prefect_serve(*local, print_starting_message=True)
        return

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        pools = ensure_pools(
            client,
            settings,
            gpu_pool_type=gpu_pool_type,  # checked above
            update=update_pools,
        )
        limit_name, limit = ensure_gpu_limit(client, settings)
    for pool, outcome in pools.items():
        console.print(f"work pool {pool}: {outcome}")
    console.print(f"global concurrency limit {limit_name}: {limit}")
    if pools_only:
        return
    for deployment in build_deployments(settings):
        deployment.apply()
        console.print(
            f"registered {deployment.flow_name}/{deployment.name} "
            f"(pool {deployment.work_pool_name})"
        )


@app.command("settings")
def show_settings() -> None:
    """Print the resolved settings (secrets hidden).

    Example: `MLOPS_ONLINE_STORE__TYPE=redis mlops settings`
    """
    settings = _settings()
    console.print_json(json.dumps(settings.model_dump(mode="json"), default=str))


app.command("up")(stack_up)
app.command("status")(stack_status)


def main() -> None:  # pragma: no cover - the console script's entry point
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
