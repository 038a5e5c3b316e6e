"""Feast, the reference feature store, in a virtual environment of its own.

The benchmarks compare our feature store with Feast on the same machine and data in
the same run, but the product must never depend on Feast: so Feast lives in a separate
venv (``benchmarks/.work/feast-venv``, git-ignored) that :func:`ensure_feast_venv`
creates on first use, and the Feast side of each benchmark is a script under
``benchmarks/_feast/`` that :func:`run_feast` runs with that venv's python. The scripts
import Feast and its dependencies only, never ``mlops``; they print progress on stderr
and one JSON object on the last line of stdout.

Pin: ``feast[redis]==0.67.0``, the latest release when this was written (November
2026); it installs from wheels on Python 3.11 with pip (about a minute with the venv
and the pip upgrade) and works in all three benchmarks
(apply, ``materialize`` into Redis, ``get_online_features``, and
``get_historical_features`` on the file offline store). Its dependencies are pinned too,
by ``benchmarks/_feast/constraints.txt`` (the set it resolved to then), so every run
compares with the same Feast. To try another version, change ``FEAST_VERSION`` and
remove or regenerate the constraints file: the stamp file records the spec and the
constraints, so the venv is rebuilt when either changes.

Usage from the project venv::

    python benchmarks/feast_env.py          # create the venv now (idempotent)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
WORK_DIR = BENCH_DIR / ".work"
DEFAULT_VENV = WORK_DIR / "feast-venv"
FEAST_SCRIPTS = BENCH_DIR / "_feast"
CONSTRAINTS = FEAST_SCRIPTS / "constraints.txt"

FEAST_VERSION = "0.67.0"
FEAST_SPEC = f"feast[redis]=={FEAST_VERSION}"
BASE_PYTHON = "python3.11"
_STAMP = ".feast-installed"
_TAIL_LINES = 40


class FeastError(RuntimeError):
    """The Feast venv could not be made, or a Feast-side script failed."""


def _log(message: str) -> None:
    print(f"[feast-env] {message}", file=sys.stderr, flush=True)


def venv_python(path: Path) -> Path:
    return Path(path) / "bin" / "python"


def ensure_feast_venv(path: Path = DEFAULT_VENV) -> Path:
    """The python executable of a venv at ``path`` with ``FEAST_SPEC`` installed.

    Idempotent: a stamp file in the venv records the installed spec and constraints;
    when they match, nothing is done. Otherwise the venv is (re)created with
    ``python3.11 -m venv`` and Feast is pip-installed into it, with progress on stderr.
    """
    path = Path(path)
    python = venv_python(path)
    stamp = path / _STAMP
    constraints = ["-c", str(CONSTRAINTS)] if CONSTRAINTS.exists() else []
    wanted = FEAST_SPEC + "\n" + (CONSTRAINTS.read_text() if constraints else "")
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    base = shutil.which(BASE_PYTHON)
    if base is None:
        raise FeastError(f"{BASE_PYTHON} is not on PATH: it is needed to create the Feast venv")
    started = time.perf_counter()
    if path.exists():
        _log(f"removing stale venv {path}")
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    steps: list[tuple[str, list[str]]] = [
        (f"creating venv {path} ({BASE_PYTHON})", [base, "-m", "venv", str(path)]),
        ("upgrading pip", [str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"]),
        (
            f"installing {FEAST_SPEC} (about 20 s)",
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                *constraints,
                FEAST_SPEC,
            ],
        ),
    ]
    for label, command in steps:
        _log(label)
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-_TAIL_LINES:]
            raise FeastError(
                f"{label} failed (exit {done.returncode}): {' '.join(command)}\n" + "\n".join(tail)
            )
    check = subprocess.run(
        [str(python), "-c", "import feast; print(feast.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    if check.returncode != 0 or check.stdout.strip() != FEAST_VERSION:
        raise FeastError(
            f"feast does not import in {path}: {check.stdout.strip()} {check.stderr.strip()}"
        )
    stamp.write_text(wanted)
    _log(f"feast {FEAST_VERSION} ready in {time.perf_counter() - started:.0f} s: {python}")
    return python


def run_feast(
    script: str,
    args: list[str],
    *,
    timeout_s: float | None = None,
    max_rss_mb: float | None = None,
    venv: Path = DEFAULT_VENV,
) -> dict[str, Any]:
    """Run ``benchmarks/_feast/<script>`` with the Feast venv's python; its JSON result.

    The script's stderr is passed through as it comes; its stdout is captured and its
    last line parsed as one JSON object. The result gets ``peak_rss_mb`` (the peak
    resident memory of the subprocess, from ``wait4``) and ``wall_s`` added. Raises
    :class:`FeastError` with the tail of the output when the script fails, prints no
    JSON, runs past ``timeout_s`` or grows past ``max_rss_mb`` of resident memory (then
    it is killed, with its children, before it can starve the machine).
    """
    python = ensure_feast_venv(venv)
    path = FEAST_SCRIPTS / script
    if not path.exists():
        raise FeastError(f"no Feast-side script {path}")
    env = {**os.environ, "FEAST_USAGE": "False", "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)  # the Feast side must never see the project's packages
    command = [str(python), str(path), *args]
    started = time.perf_counter()
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(FEAST_SCRIPTS),
        start_new_session=True,  # its own process group, so a timeout kills it all
    )
    assert proc.stdout is not None and proc.stderr is not None
    out_lines: list[str] = []
    err_tail: deque[str] = deque(maxlen=_TAIL_LINES)

    def pump_stdout() -> None:
        assert proc.stdout is not None
        out_lines.extend(proc.stdout)

    def pump_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            err_tail.append(line.rstrip("\n"))
            sys.stderr.write("    | " + line)
            sys.stderr.flush()

    pumps = [threading.Thread(target=f, daemon=True) for f in (pump_stdout, pump_stderr)]
    for t in pumps:
        t.start()
    timed_out = threading.Event()
    over_memory = threading.Event()
    finished = threading.Event()

    def kill() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)

    def on_timeout() -> None:
        timed_out.set()
        kill()

    def watch_memory() -> None:
        assert max_rss_mb is not None
        while not finished.wait(0.25):
            if _rss_mb(proc.pid) > max_rss_mb:
                over_memory.set()
                kill()
                return

    timer = threading.Timer(timeout_s, on_timeout) if timeout_s else None
    if timer:
        timer.start()
    if max_rss_mb:
        threading.Thread(target=watch_memory, daemon=True).start()
    try:
        # wait4 rather than proc.wait(): it also gives the child's resource usage.
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        finished.set()
        if timer:
            timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    for t in pumps:
        t.join(timeout=10)
    wall_s = time.perf_counter() - started
    peak_rss_mb = usage.ru_maxrss / 1024  # Linux reports KiB
    tail = "\n".join([*err_tail, *(line.rstrip("\n") for line in out_lines[-10:])])
    tail = f"command: {' '.join(command)}\n{tail}"
    where = script
    if over_memory.is_set():
        raise FeastError(
            f"Feast {where}: stopped at {max_rss_mb:,.0f} MB of resident memory after "
            f"{wall_s:.0f} s (the limit; peak RSS {peak_rss_mb:,.0f} MB)\nlast output:\n{tail}"
        )
    if timed_out.is_set():
        raise FeastError(
            f"Feast {where}: timed out after {timeout_s:.0f} s "
            f"(peak RSS {peak_rss_mb:,.0f} MB)\nlast output:\n{tail}"
        )
    if proc.returncode != 0:
        reason = "killed (out of memory?)" if proc.returncode in (-9, 137) else "failed"
        raise FeastError(
            f"Feast {where}: {reason}, exit {proc.returncode} after {wall_s:.0f} s "
            f"(peak RSS {peak_rss_mb:,.0f} MB)\nlast output:\n{tail}"
        )
    last = next((line for line in reversed(out_lines) if line.strip()), "")
    try:
        result = json.loads(last)
    except json.JSONDecodeError as exc:
        raise FeastError(
            f"Feast {where}: the last line of stdout is not JSON ({exc}); output:\n{tail}"
        ) from exc
    if not isinstance(result, dict):
        raise FeastError(f"Feast {where}: expected a JSON object, got {last[:200]}")
    result.setdefault("peak_rss_mb", peak_rss_mb)
    result["wall_s"] = wall_s
    return result


def _rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# --- reporting helpers shared by the bench_*.py scripts -------------------------------
def work_dir(name: str) -> Path:
    """``benchmarks/.work/<name>`` (git-ignored), created."""
    path = WORK_DIR / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def format_table(header: list[str], rows: list[list[str]], *, left: int = 1) -> str:
    """A plain text table: the first ``left`` columns and the last one left-aligned
    when it is text (a note), the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    last_is_text = not any(str(r[-1])[:1].isdigit() for r in rows)

    def line(cells: list[str]) -> str:
        out = []
        for i, (cell, width) in enumerate(zip(cells, widths, strict=True)):
            text_col = i < left or (last_is_text and i == len(cells) - 1)
            out.append(str(cell).ljust(width) if text_col else str(cell).rjust(width))
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> None:
    python = ensure_feast_venv()
    print(f"{FEAST_SPEC}: {python}")


if __name__ == "__main__":
    main()
