"""Stopping a child process: politely, then for sure."""

from __future__ import annotations

import subprocess


def terminate(proc: subprocess.Popen[bytes], *, timeout_s: float = 15.0) -> int:
    """SIGTERM ``proc`` if it still runs, SIGKILL it when it has not exited after
    ``timeout_s``; returns its exit code. Never leaves a zombie behind."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
