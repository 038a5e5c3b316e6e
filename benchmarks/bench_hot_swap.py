"""Hot swap under load: promotions (some of a corrupt model) while the app serves wrk.

The model is the one ``benchmarks/bench_serving.py`` uses (the platform's demo, cached
under ``benchmarks/.work/serving/``). Ten new versions of it are registered the way the
training flow registers (``mlflow.register_model`` of the same logged ONNX model, the
contract tags copied from the champion): eight good ones, and two "corrupt" ones whose
``onnx_sha256`` tag does not match their ``model.onnx``. The app (the same settings as
in ``bench_serving.py``: Redis online store, auth, request log, metrics) serves inline
one-row requests to wrk (16 connections, one per thread, so that each answer is timed
against its own request by a Lua hook: start time, latency, status and the
``X-Model-Version`` header of every answer), for at least ``--requests`` requests. During
the run the ``champion`` alias is moved to each new version in turn
(``MlflowClient.set_registered_model_alias``), each move followed by ``POST
/model/reload`` with the token; the app's own poller is pushed out of the way
(``--reload-poll-s``, default an hour), so that every swap is the one the benchmark
times. At the end the alias goes back to the version it was on.

A promotion's window runs from ``--window`` seconds before the alias moves to
``--window`` seconds after the reload answers; a request is "during swaps" when its
time in flight overlaps a window, "steady" otherwise. The p99s are judged after wrk's
own correction for coordinated omission (``stats_correct``: an answer slower than a
connection's mean interval also stands for the requests an open-loop client would have
sent meanwhile), applied to the timed samples, so that a pause stalling all
connections at once counts as it would for real clients; the p99s as timed are shown
beside them.

Goals: 0 failed requests (non-2xx or socket errors), and the p99 during swaps under 2x
the steady p99 of the same run. Checked too: each corrupt version is refused (and never
answers a request), each good one is loaded.

Examples::

    .venv/bin/python benchmarks/bench_hot_swap.py                  # 20k+ requests, 10 swaps
    .venv/bin/python benchmarks/bench_hot_swap.py --quick          # smoke run: 5k requests
    .venv/bin/python benchmarks/bench_hot_swap.py --requests 50000 --min-gap 3
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import secrets
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import mlflow
import numpy as np
from _serving import servers, wrk
from _serving.demo_model import (
    Setup,
    app_env,
    feature_rows,
    inline_body,
    start_run,
)
from feast_env import format_table, verdict

from mlops.registry import CHAMPION, mlflow_uris
from mlops.tags import Tags

GOAL_P99_RATIO = 2.0
SWAP_TAG = "bench.hot_swap"


@dataclass(frozen=True)
class Promotion:
    """One move of the champion alias and the app's answer to the reload."""

    version: str
    corrupt: bool
    alias_at: float
    answered_at: float
    http_status: int
    status: str
    serving: str

    @property
    def expected(self) -> str:
        return "refused" if self.corrupt else "loaded"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20_000, help="requests at least")
    parser.add_argument("--promotions", type=int, default=10, help="versions promoted")
    parser.add_argument("--corrupt", type=int, default=2, help="of which corrupt")
    parser.add_argument(
        "--min-gap",
        type=float,
        default=2.0,
        help="seconds between promotions at least (the run lasts longer when needed)",
    )
    parser.add_argument(
        "--window", type=float, default=0.5, help="seconds either side of a promotion"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="uvicorn workers of the app (a reload reaches one of them; the others follow "
        "by their poller, --reload-poll-s)",
    )
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (threads)")
    parser.add_argument(
        "--reload-poll-s",
        type=float,
        default=3600.0,
        help="the app's poll of the champion alias (MLOPS_SERVING__RELOAD_POLL_S)",
    )
    parser.add_argument(
        "--request-log-url",
        default=None,
        help="the app's request log (MLOPS_REQUEST_LOG__URL); default SQLite in the home",
    )
    parser.add_argument("--entities", type=int, default=2_000, help="demo: cards simulated")
    parser.add_argument("--days", type=int, default=30, help="demo: days of transactions")
    parser.add_argument("--epochs", type=int, default=2, help="demo: training epochs")
    parser.add_argument("--seed", type=int, default=0, help="demo and body sampling seed")
    parser.add_argument("--fresh", action="store_true", help="make the setup again")
    parser.add_argument("--quick", action="store_true", help="smoke run: 5k requests, 1.5 s gaps")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.min_gap = 5_000, 1.5
    if not 0 <= args.corrupt <= args.promotions:
        parser.error("--corrupt must be between 0 and --promotions")

    started = time.perf_counter()
    work, setup = start_run(args)
    token = secrets.token_urlsafe(24)
    env = {
        **app_env(setup),
        "MLOPS_SERVING__API_TOKEN": token,
        "MLOPS_SERVING__REQUIRE_TOKEN_FOR_PREDICT": "true",
        "MLOPS_SERVING__RELOAD_POLL_S": str(args.reload_poll_s),
    }
    if args.request_log_url:
        env["MLOPS_REQUEST_LOG__URL"] = args.request_log_url
    _, rows = feature_rows(setup, n=64, seed=args.seed)
    bodies = wrk.write_bodies(
        work / "bodies" / "hot-swap-inline-1.jsonl",
        [json.dumps(inline_body(setup.feature_names, [row])) for row in rows],
    )
    headers = {"Authorization": f"Bearer {token}"}
    samples_path = work / "hot-swap-samples.txt"
    samples_path.unlink(missing_ok=True)
    plain = wrk.request_script(
        work / "hot-swap-warmup.lua", bodies=bodies, url_path="/predict", headers=headers
    )
    sampling = wrk.sampling_script(
        work / "hot-swap.lua",
        bodies=bodies,
        url_path="/predict",
        headers=headers,
        samples=samples_path,
    )
    plan = register_versions(setup, promotions=args.promotions, corrupt=args.corrupt)
    print(
        "registered versions "
        + ", ".join(f"{v}{' (corrupt)' if bad else ''}" for v, bad in plan)
        + f" of {setup.model_name}; champion stays {setup.version} until the run",
        flush=True,
    )
    server = servers.ours(workers=args.workers, env=env, log_dir=work / "logs", cwd=work)
    promotions: list[Promotion] = []
    client = setup.client()
    try:
        with servers.running(server) as base:
            reload_route = httpx.post(f"{base}/model/reload", headers=headers, timeout=60.0)
            if reload_route.status_code in (404, 405):
                print(
                    f"POST /model/reload is missing (HTTP {reload_route.status_code}): the "
                    "promotions only move the alias, and the app swaps by its poller at best"
                )
            warm = wrk.run(base, plain, duration_s=3, connections=args.connections, threads=2)
            duration = max(args.requests / warm.rps * 1.1, (args.promotions + 1) * args.min_gap)
            print(
                f"warm-up: {warm.rps:,.0f} req/s; the run: {duration:.0f} s, "
                f"{args.promotions} promotions {duration / (args.promotions + 1):.1f} s apart",
                flush=True,
            )
            load, promotions = run_with_promotions(
                base,
                sampling,
                plan=plan,
                setup=setup,
                client=client,
                headers=headers,
                duration_s=duration,
                connections=args.connections,
            )
    finally:
        client.set_registered_model_alias(setup.model_name, CHAMPION, setup.version)
    samples = wrk.read_samples(samples_path)
    report(
        samples,
        load,
        promotions,
        window=args.window,
        wanted=args.requests,
        connections=args.connections,
    )
    print(f"\ntotal time {time.perf_counter() - started:.0f} s (app log {server.log_path})")


def register_versions(setup: Setup, *, promotions: int, corrupt: int) -> list[tuple[str, bool]]:
    """Register ``promotions`` versions of the champion's logged model, ``corrupt`` of them
    with a wrong ``onnx_sha256`` tag, spread through the order; ``(version, corrupt)``."""
    client = setup.client()
    champion = client.get_model_version(setup.model_name, setup.version)
    contract = {
        key: value
        for key, value in (champion.tags or {}).items()
        if key in (*Tags.REQUIRED_FOR_SERVING, Tags.DATA_WINDOW, Tags.GIT_SHA)
    }
    bad_at = {round((k + 1) * promotions / (corrupt + 1)) - 1 for k in range(corrupt)}
    plan = []
    for i in range(promotions):
        bad = i in bad_at
        tags = {**contract, SWAP_TAG: "corrupt" if bad else "good"}
        if bad:  # a tag that does not match model.onnx: the app must refuse it
            tags[Tags.ONNX_SHA256] = "0" * 64
        with (
            mlflow_uris(setup.tracking_uri, setup.tracking_uri),
            contextlib.redirect_stderr(io.StringIO()),  # MLflow's "Created version" lines
        ):
            version = mlflow.register_model(champion.source, setup.model_name, tags=tags)
        plan.append((str(version.version), bad))
    return plan


def run_with_promotions(
    base: str,
    script: Path,
    *,
    plan: list[tuple[str, bool]],
    setup: Setup,
    client: mlflow.MlflowClient,
    headers: dict[str, str],
    duration_s: float,
    connections: int,
) -> tuple[wrk.WrkResult, list[Promotion]]:
    """wrk for ``duration_s`` (one thread per connection), promotions evenly through it."""
    command = [
        wrk.WRK,
        f"-t{connections}",
        f"-c{connections}",
        f"-d{round(duration_s)}s",
        "--timeout=10s",
        "--latency",
        "-s",
        str(script),
        base,
    ]
    t0 = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    promotions = []
    try:
        for i, (version, bad) in enumerate(plan):
            time.sleep(max(0.0, t0 + duration_s * (i + 1) / (len(plan) + 1) - time.monotonic()))
            alias_at = time.monotonic()
            client.set_registered_model_alias(setup.model_name, CHAMPION, version)
            answer = httpx.post(f"{base}/model/reload", headers=headers, timeout=60.0)
            answered_at = time.monotonic()
            try:
                body = answer.json()
            except ValueError:
                body = {}
            promotion = Promotion(
                version=version,
                corrupt=bad,
                alias_at=alias_at,
                answered_at=answered_at,
                http_status=answer.status_code,
                status=str(body.get("status", "-")),
                serving=str(body.get("serving", "-")),
            )
            promotions.append(promotion)
            print(
                f"  {alias_at - t0:5.1f} s: champion -> v{version}"
                f"{' (corrupt)' if bad else ''}: reload HTTP {answer.status_code} "
                f"{promotion.status}, serving {promotion.serving}, "
                f"{(answered_at - alias_at) * 1e3:.0f} ms",
                flush=True,
            )
        output, _ = proc.communicate(timeout=duration_s + 120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}): {' '.join(command)}\n{output}")
    return wrk.parse(output), promotions


def report(
    samples: list[wrk.Sample],
    load: wrk.WrkResult,
    promotions: list[Promotion],
    *,
    window: float,
    wanted: int,
    connections: int,
) -> None:
    """The promotions, steady vs during-swap latency, and the verdicts."""
    starts = np.array([s.start for s in samples])
    ends = np.array([s.end for s in samples])
    latency = ends - starts
    # the mean time between two requests of one connection: wrk's "expected interval"
    expected = connections * load.seconds / max(1, len(samples))
    fixed_starts, fixed_ends, fixed_latency = corrected(starts, ends, latency, expected)
    windows = [(p.alias_at - window, p.answered_at + window) for p in promotions]
    during = in_windows(starts, ends, windows)
    fixed_during = in_windows(fixed_starts, fixed_ends, windows)
    failed_status = sum(1 for s in samples if s.status != 200)
    failed = failed_status + load.socket_errors

    t0 = samples[0].start if samples else 0.0
    print()
    print(
        format_table(
            ["#", "version", "model", "at s", "reload ms", "HTTP", "answer", "serving", "expected"],
            [
                [
                    str(i + 1),
                    p.version,
                    "corrupt" if p.corrupt else "good",
                    f"{p.alias_at - t0:.1f}",
                    f"{(p.answered_at - p.alias_at) * 1e3:.0f}",
                    str(p.http_status),
                    p.status,
                    p.serving,
                    p.expected,
                ]
                for i, p in enumerate(promotions)
            ],
        )
    )

    def p99(values: np.ndarray) -> float:
        return float(np.percentile(values, 99)) * 1e3 if len(values) else float("nan")

    def row(name: str, mask: np.ndarray, fixed_mask: np.ndarray) -> list[str]:
        values = latency[mask]
        if not len(values):
            return [name, "0", "n/a", "n/a", "n/a", "n/a"]
        return [
            name,
            f"{len(values):,}",
            f"{np.percentile(values, 50) * 1e3:.2f}",
            f"{p99(values):.2f}",
            f"{values.max() * 1e3:.2f}",
            f"{p99(fixed_latency[fixed_mask]):.2f}",
        ]

    everything = np.ones(len(latency), dtype=bool)
    print()
    print(
        f"hot swap under load: {len(samples):,} requests answered in {load.seconds:.1f} s "
        f"({load.rps:,.0f} req/s), wrk -c {connections} -t {connections}, each request timed "
        f"by the Lua hook; windows ±{window:g} s around each promotion. 'corrected': wrk's "
        f"own correction for coordinated omission (an answer slower than {expected * 1e3:.1f} "
        "ms, a connection's mean interval, stands for the requests an open-loop client would "
        "have sent meanwhile)"
    )
    print(
        format_table(
            ["requests", "answers", "p50 ms", "p99 ms", "max ms", "p99 ms corrected"],
            [
                row("steady", ~during, ~fixed_during),
                row("during swaps", during, fixed_during),
                row("all", everything, np.ones(len(fixed_latency), dtype=bool)),
            ],
        )
    )
    answered = Counter(s.version for s in samples)
    print(
        "versions answering, by first answer: "
        + ", ".join(f"v{v} ({answered[v]:,})" for v in dict.fromkeys(s.version for s in samples))
    )
    corrupt = {p.version for p in promotions if p.corrupt}
    corrupt_served = sum(1 for s in samples if s.version in corrupt)

    print(
        f"goal: 0 failed requests: {failed} ({failed_status} non-200 answers, "
        f"{load.socket_errors} socket errors) -> {verdict(failed == 0)}"
    )
    steady, swapping = p99(fixed_latency[~fixed_during]), p99(fixed_latency[fixed_during])
    if np.isfinite(steady) and np.isfinite(swapping):
        ratio = swapping / steady
        raw = p99(latency[during]) / p99(latency[~during])
        print(
            f"goal: p99 during swaps < {GOAL_P99_RATIO:g}x steady p99 (corrected): "
            f"{swapping:.2f} vs {steady:.2f} ms = {ratio:.2f}x (as timed: {raw:.2f}x) -> "
            f"{verdict(ratio < GOAL_P99_RATIO)}"
        )
    else:
        print("goal: p99 during swaps < 2x steady p99: n/a (no steady or no swap requests)")
    answers_ok = all(p.status == p.expected for p in promotions)
    print(
        "check: every corrupt version refused and every good one loaded: "
        + ", ".join(f"v{p.version} {p.status}" for p in promotions)
        + f" -> {verdict(answers_ok and len(promotions) > 0)}"
    )
    print(
        f"check: no request answered by a corrupt version: {corrupt_served} -> "
        f"{verdict(corrupt_served == 0)}"
    )
    print(
        f"check: at least {wanted:,} requests: {len(samples):,} -> "
        f"{verdict(len(samples) >= wanted)}"
    )


def corrected(
    starts: np.ndarray, ends: np.ndarray, latency: np.ndarray, expected: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The samples plus those wrk's ``stats_correct`` adds (wrk 4.1, ``src/stats.c``).

    An answer of latency ``L >= 2 * expected`` adds ``L - j * expected`` for j = 1, 2, …
    while that is above ``expected``: the requests an open-loop client sending at the
    run's rate would have sent while this one was waiting. Each added sample starts
    ``j * expected`` later than its answer and ends with it.
    """
    extra = np.where(latency >= 2 * expected, np.ceil(latency / expected - 1) - 1, 0)
    extra = np.maximum(extra, 0).astype(np.int64)
    source = np.repeat(np.arange(len(latency)), extra)
    j = np.arange(len(source)) - np.repeat(np.cumsum(extra) - extra, extra) + 1
    shift = j * expected
    return (
        np.concatenate([starts, starts[source] + shift]),
        np.concatenate([ends, ends[source]]),
        np.concatenate([latency, latency[source] - shift]),
    )


def in_windows(
    starts: np.ndarray, ends: np.ndarray, windows: list[tuple[float, float]]
) -> np.ndarray:
    """True where a request's time in flight overlaps one of the windows."""
    during = np.zeros(len(starts), dtype=bool)
    for lo, hi in windows:
        during |= (starts <= hi) & (ends >= lo)
    return during


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted (the servers were stopped)")
