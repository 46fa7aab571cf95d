"""The paths macOS takes, exercised on Linux.

macOS has no pidfd, no PR_SET_PDEATHSIG and no F_SETPIPE_SZ: there a worker's exit is
polled, a worker notices its parent's death by stdin EOF and the parent check, and the
pool's reaper ends what the handlers started. ``CORRAL_PORTABLE=1`` selects exactly
those paths on Linux; this test runs the process tests (orphans, the parent's SIGKILL,
crash, cancel, close) again in that mode, in a fresh pytest.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SELECTION = [
    "tests/test_no_orphans.py",
    "tests/test_worker.py::test_crash_is_worker_crashed",
    "tests/test_worker.py::test_cancelled_call_returns_promptly_and_worker_is_ready_again",
    "tests/test_worker.py::test_cancelled_call_of_a_stubborn_handler_kills_the_worker_after_grace",
    "tests/test_pool_faults.py::test_crash_fails_one_call_and_the_worker_is_replaced",
    "tests/test_pool_faults.py::test_cancelled_call_worker_is_interrupted_and_reused",
    "tests/test_pool.py::test_graceful_close_lets_a_running_call_finish",
    "tests/test_pool.py::test_cancelling_the_surrounding_scope_stops_everything_promptly",
    "tests/test_pool.py::test_close_after_drain_timeout_stops_a_stuck_call",
    "tests/test_forkserver.py::test_forked_workers_share_the_template_import_and_own_their_group",
    "tests/test_forkserver.py::test_the_pool_survives_its_template_being_killed",
]


def test_process_tests_pass_without_the_linux_accelerations() -> None:
    env = {**os.environ, "CORRAL_PORTABLE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SELECTION],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout
