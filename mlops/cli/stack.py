"""``mlops up`` and ``mlops status``: the whole platform on one machine, without Docker.

Registered on the ``mlops`` command by :mod:`mlops.cli.main`; also runnable alone:
``python -m mlops.cli.stack up`` / ``python -m mlops.cli.stack status``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import deque
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mlops.cli.common import console, err, fail, load_settings
from mlops.errors import StackError
from mlops.stack import preflight
from mlops.stack.health import Health
from mlops.stack.spec import ServiceSpec, Stack, StackOptions, build_stack
from mlops.stack.state import report
from mlops.stack.supervisor import Supervisor

stack_app = typer.Typer(
    name="stack",
    help="The whole platform on one machine: `up` starts it, `status` shows it.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",
)

HomeOpt = Annotated[
    Path | None,
    typer.Option(
        help="The platform's home folder (default: MLOPS_HOME, else ./.mlops).",
        show_default=False,
    ),
]


def _use_home(home: Path | None) -> None:
    if home is not None:
        os.environ["MLOPS_HOME"] = str(home)


@stack_app.command()
def up(
    home: HomeOpt = None,
    postgres: Annotated[
        str | None,
        typer.Option(
            help="A PostgreSQL server (postgresql://user@host:5432) for the Prefect "
            "database, the MLflow backend store and the request log (databases `prefect`, "
            "`mlflow`, `mlops_requests`, created when missing). Default: SQLite files "
            "in the home.",
            show_default=False,
        ),
    ] = None,
    database_prefix: Annotated[
        str,
        typer.Option(help="Prefix of the database names on the --postgres server."),
    ] = "",
    redis: Annotated[
        str | None,
        typer.Option(
            help="A Redis URL (redis://host:6379/0) for the online store. Default: SQLite "
            "in the home.",
            show_default=False,
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address every service binds.")] = "127.0.0.1",
    prefect_port: Annotated[int, typer.Option(help="Port of the Prefect server and UI.")] = 4200,
    mlflow_port: Annotated[int, typer.Option(help="Port of the MLflow server and UI.")] = 5000,
    app_port: Annotated[
        int | None,
        typer.Option(
            help="Port of the inference app (default: MLOPS_SERVING__PORT, 8000).",
            show_default=False,
        ),
    ] = None,
    console_port: Annotated[int, typer.Option(help="Port of the Streamlit console.")] = 8501,
    mlflow_workers: Annotated[
        int, typer.Option(min=1, help="Worker processes of the MLflow server.")
    ] = 1,
    timeout: Annotated[
        float,
        typer.Option(min=1, help="Seconds each service has to become healthy after it starts."),
    ] = 180.0,
    grace: Annotated[
        float,
        typer.Option(min=0, help="Seconds each service has to stop before it is killed."),
    ] = 15.0,
) -> None:
    """Start the whole platform here and keep it running until Ctrl-C.

    Starts, in order and each health-checked: a Prefect server (UI and API), an MLflow
    tracking server that serves the artifacts, a runner that serves every CPU deployment
    with its schedules and event triggers (`mlops deploy --serve`), the inference app
    and the Streamlit console. Prints where each runs once all are healthy. Logs go to
    `<home>/logs/<service>.log`; `mlops status` (from another terminal) shows the stack.
    Ctrl-C (or SIGTERM) stops the services in reverse order.

    Example: `mlops up`, or with real backends:
    `mlops up --postgres postgresql://postgres@127.0.0.1:5432 --redis redis://127.0.0.1:6379/0`
    """
    _use_home(home)
    settings = load_settings()
    settings.ensure_home()

    options = StackOptions(
        host=host,
        prefect_port=prefect_port,
        mlflow_port=mlflow_port,
        app_port=app_port or settings.serving.port,
        console_port=console_port,
        postgres=postgres,
        database_prefix=database_prefix,
        redis=redis,
        mlflow_workers=mlflow_workers,
    )
    try:
        stack = build_stack(settings, options)
        preflight.check_not_running(stack.home)
        preflight.check_ports(stack, host)
        if options.redis:
            preflight.check_redis(options.redis)
        if options.postgres:
            created = preflight.ensure_databases(options.postgres, stack.databases)
            if created:
                console.print(f"created databases {', '.join(created)}", soft_wrap=True)
    except StackError as exc:
        raise fail(exc) from exc

    console.rule("[bold]mlops up")
    console.print(f"home: {stack.home}  logs: {stack.home / 'logs'}", soft_wrap=True)
    began = time.monotonic()

    def healthy(spec: ServiceSpec, health: Health) -> None:
        console.print(
            f"[green]✓[/green] {spec.name} healthy after {time.monotonic() - began:.0f}s "
            f"({health.detail})",
            highlight=False,
            soft_wrap=True,
        )

    def stopped(spec: ServiceSpec, code: int | None, seconds: float) -> None:
        how = f"signal {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"
        console.print(
            f"stopped {spec.name} in {seconds:.1f}s ({how})", highlight=False, soft_wrap=True
        )

    supervisor = Supervisor(
        stack,
        startup_timeout_s=timeout,
        grace_s=grace,
        on_healthy=healthy,
        on_stopped=stopped,
    )
    try:
        with supervisor:
            try:
                health = supervisor.start()
                _print_services(stack, supervisor, health)
                console.print("Ctrl-C stops everything; `mlops status` shows the stack.")
                supervisor.wait()
            except KeyboardInterrupt:
                console.print("stopping …")
    except StackError as exc:
        _print_log_tail(exc)
        raise fail(exc) from exc
    console.print("stack stopped")


def _print_services(stack: Stack, supervisor: Supervisor, health: dict[str, Health]) -> None:
    table = Table(title="mlops up: every service is healthy", title_justify="left")
    for column in ("service", "URL", "pid", "health", "log"):
        table.add_column(column, no_wrap=column != "health")
    for spec in stack.services:
        run = supervisor.running[spec.name]
        table.add_row(
            spec.name, spec.url, str(run.proc.pid), health[spec.name].detail, str(spec.log_path)
        )
    console.print(table)
    _print_backends(stack.backends)


def _print_backends(backends: dict[str, str]) -> None:
    table = Table(title="where the state lives", show_header=False, title_justify="left")
    for name, where in backends.items():
        table.add_row(name, where)
    console.print(table)


def _print_log_tail(exc: StackError, lines: int = 20) -> None:
    if exc.log_path is None or not exc.log_path.exists():
        return
    with exc.log_path.open(errors="replace") as log:
        tail = deque(log, maxlen=lines)
    err.rule(f"last {len(tail)} lines of {exc.log_path}", style="red")
    for line in tail:
        err.print(line.rstrip("\n"), markup=False, highlight=False)
    err.rule(style="red")


@stack_app.command()
def status(
    home: HomeOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON (for scripts).")
    ] = False,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds each health check may take.")
    ] = 3.0,
) -> None:
    """Show what runs where: each service of the stack, alive? healthy?, its URL and log.

    Reads `<home>/stack/state.json` (written by `mlops up`) and checks every service
    now. Exits 0 when the stack runs and every service is healthy, 1 otherwise.

    Example: `mlops status`, or `mlops status --json | jq '.services[].state'`
    """
    _use_home(home)
    settings = load_settings()
    try:
        found = report(settings.home, timeout_s=timeout)
    except StackError as exc:
        raise fail(exc) from exc
    if as_json:
        typer.echo(json.dumps(found.as_dict(), indent=2))
        raise typer.Exit(0 if found.healthy else 1)
    if found.status == "not started":
        console.print(f"no stack has been started from {found.home} (run `mlops up`)")
        raise typer.Exit(1)
    style = "green" if found.healthy else "yellow"
    since = found.stopped_at if found.status in ("stopped", "failed") else found.started_at
    console.print(
        f"stack in {found.home}: [{style}]{found.status}[/{style}] since {since} "
        f"(mlops up pid {found.supervisor_pid})",
        highlight=False,
        soft_wrap=True,
    )
    if found.error:
        err.print(f"error: {found.error}", style="red", markup=False, highlight=False)
    table = Table(show_header=True)
    for column in ("service", "state", "URL", "pid", "detail", "log"):
        table.add_column(column, no_wrap=column != "detail")
    colors = {"healthy": "green", "unhealthy": "red", "stopped": "dim"}
    for svc in found.services:
        state = f"[{colors[svc.state]}]{svc.state}[/{colors[svc.state]}]"
        detail = svc.health.detail if svc.health else ""
        table.add_row(svc.name, state, svc.url, str(svc.pid), detail, svc.log)
    console.print(table)
    _print_backends(found.backends)
    raise typer.Exit(0 if found.healthy else 1)


if __name__ == "__main__":  # pragma: no cover - `python -m mlops.cli.stack up`
    stack_app()
