"""`make demo` runs `corral demo`: it ends by itself, or in order on Ctrl-C, with a summary."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def _demo(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ)  # carries the leak-check mark of tests/conftest.py
    return subprocess.Popen(
        [sys.executable, "-m", "corral", "demo", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def test_demo_ends_by_itself_with_a_summary() -> None:
    proc = _demo("--seconds", "3")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "WorkerCrashed" in out  # the first injected fault
    assert "summary:" in out and "calls served" in out
    assert "pool closed" in out


def test_demo_stops_in_order_on_ctrl_c() -> None:
    proc = _demo("--seconds", "60")
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "Ctrl-C" in out and "summary:" in out
