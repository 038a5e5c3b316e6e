"""wrk, the load generator: Lua scripts written by the benchmark, runs, parsed output.

wrk (4.1, ``apt-get install wrk``) keeps ``--connections`` connections busy, each
sending its next request as soon as the previous answer is in (a closed loop), spread
over ``--threads`` threads. Its Lua hooks are LuaJIT, so scripts can call
``clock_gettime`` through the FFI.

Two scripts:

- :func:`request_script`: cycles through request bodies read from a file (one JSON body
  per line), each pre-formatted once in ``init``: the load of the throughput runs, whose
  figures come from wrk's own report (``--latency``), parsed by :func:`parse`;
- :func:`sampling_script`: the same, and for every answer one line ``start latency
  status model_version`` (``CLOCK_MONOTONIC`` seconds, which is Python's
  ``time.monotonic()``), gathered from the threads in ``done`` and written to a file.
  A request and its answer can only be paired when a thread has one connection, so it
  is meant for runs with as many threads as connections.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

WRK = "wrk"

_LUA_PRELUDE = """\
-- written by benchmarks/_serving/wrk.py: POST the bodies of a file, one per line, in turn
local bodies_path = {bodies}
local path = {path}
local headers = {headers}
local requests = {{}}
local index = 0

function init(args)
  for line in io.lines(bodies_path) do
    if #line > 0 then
      requests[#requests + 1] = wrk.format("POST", path, headers, line)
    end
  end
end

function request()
  index = index % #requests + 1
  return requests[index]
end
"""

_LUA_SAMPLING = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct {{ long tv_sec; long tv_nsec; }} bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local clock = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(1, clock)  -- CLOCK_MONOTONIC
  return tonumber(clock.tv_sec) + tonumber(clock.tv_nsec) * 1e-9
end

local threads = {{}}
local started = 0
samples = {{}}

function setup(thread)
  threads[#threads + 1] = thread
end

local next_request = request
function request()
  started = now()
  return next_request()
end

function response(status, headers, body)
  local version = headers["x-model-version"] or headers["X-Model-Version"] or "-"
  samples[#samples + 1] = string.format("%.6f %.6f %d %s", started, now() - started, status,
                                        version)
end

function done(summary, latency, requests)
  local out = assert(io.open({samples_path}, "w"))
  for _, thread in ipairs(threads) do
    for _, line in ipairs(thread:get("samples")) do
      out:write(line, "\\n")
    end
  end
  out:close()
end
"""

_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run reported."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    output: str

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors


@dataclass(frozen=True)
class Sample:
    """One answer of a sampling run."""

    start: float
    latency_s: float
    status: int
    version: str

    @property
    def end(self) -> float:
        return self.start + self.latency_s


def available() -> str | None:
    """The path of ``wrk``, or None when it is not installed."""
    return shutil.which(WRK)


def lua_string(text: str) -> str:
    """``text`` as a double-quoted Lua string literal (printable ASCII only)."""
    if not all(32 <= ord(ch) < 127 for ch in text):
        raise ValueError(f"not printable ASCII, cannot go into the Lua script: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _lua_headers(headers: dict[str, str]) -> str:
    return "{" + ", ".join(f"[{lua_string(k)}] = {lua_string(v)}" for k, v in headers.items()) + "}"


def write_bodies(path: Path, bodies: list[str]) -> Path:
    """One compact JSON body per line (they must hold no newline)."""
    if any("\n" in body for body in bodies):
        raise ValueError("a request body holds a newline: bodies go one per line")
    path.write_text("".join(body + "\n" for body in bodies))
    return path


def request_script(path: Path, *, bodies: Path, url_path: str, headers: dict[str, str]) -> Path:
    """Write the Lua script that POSTs the bodies of ``bodies`` to ``url_path`` in turn."""
    path.write_text(
        _LUA_PRELUDE.format(
            bodies=lua_string(str(bodies)),
            path=lua_string(url_path),
            headers=_lua_headers({"Content-Type": "application/json", **headers}),
        )
    )
    return path


def sampling_script(
    path: Path, *, bodies: Path, url_path: str, headers: dict[str, str], samples: Path
) -> Path:
    """:func:`request_script` plus one line per answer written to ``samples`` at the end."""
    request_script(path, bodies=bodies, url_path=url_path, headers=headers)
    with path.open("a") as script:
        script.write(_LUA_SAMPLING.format(samples_path=lua_string(str(samples))))
    return path


def run(
    url: str,
    script: Path,
    *,
    duration_s: float,
    connections: int = 16,
    threads: int = 2,
    timeout_s: float = 10.0,
) -> WrkResult:
    """Run wrk with ``--latency`` for ``duration_s`` seconds; its parsed report."""
    command = [
        WRK,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={max(1, round(timeout_s))}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=duration_s + 120
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"wrk failed (exit {done.returncode}): {' '.join(command)}\n{done.stdout}{done.stderr}"
        )
    return parse(done.stdout)


def parse(text: str) -> WrkResult:
    """Requests, duration, RPS, p50/p99 and errors from wrk's ``--latency`` report."""
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", text)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if total is None or rps is None:
        raise ValueError(f"cannot read wrk's report:\n{text}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    return WrkResult(
        requests=int(total.group(1)),
        seconds=float(total.group(2)) * _UNITS_MS[total.group(3)] / 1e3,
        rps=float(rps.group(1)),
        p50_ms=_percentile_ms(text, "50"),
        p99_ms=_percentile_ms(text, "99"),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in sockets.groups()) if sockets else 0,
        output=text,
    )


def _percentile_ms(text: str, which: str) -> float:
    found = re.search(rf"^\s+{which}%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.MULTILINE)
    if found is None:
        raise ValueError(f"wrk's report has no {which}% latency (run with --latency):\n{text}")
    return float(found.group(1)) * _UNITS_MS[found.group(2)]


def read_samples(path: Path) -> list[Sample]:
    """The lines a sampling run wrote, in order of start time."""
    samples = []
    for line in path.read_text().splitlines():
        start, latency, status, version = line.split(" ", 3)
        samples.append(Sample(float(start), float(latency), int(status), version))
    return sorted(samples, key=lambda s: s.start)
