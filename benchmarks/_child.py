"""Running a benchmark's measurement in a fresh child process (its own peak memory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_child(script: str, *args: str) -> dict[str, object]:
    """Run ``script --child ARGS`` with this Python; the JSON object on its last line."""
    out = subprocess.run(
        [sys.executable, script, "--child", *args],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result
