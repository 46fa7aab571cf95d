"""`make demo` runs `corral demo`: it ends by itself, or in order on Ctrl-C, with a summary
that lists every fault injected, the rolling upgrade mid-run, and what the pool did."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time

from corral._demo import UPGRADE_AT, Upgrade, _schedule, _timeline, natural


def _demo(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ)  # carries the leak-check mark of tests/conftest.py
    return subprocess.Popen(
        [sys.executable, "-m", "corral", "demo", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def test_demo_ends_by_itself_with_a_summary_of_every_fault_and_the_upgrade() -> None:
    # 14 s: the six faults come 2.2 s apart, so that each is dealt with before the next
    # even on a loaded machine (at 9 s, a slow recovery from the failing restarts left
    # the last fault "not reached" when two suites ran at once on two cores), and the
    # upgrade (~2 s, the next fault waits for it) still leaves the last fault time to end.
    proc = _demo("--seconds", "14")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "starting: 100% loading model v1: warm-up done" in out  # start-up progress (protocol 1.1)
    assert "pool closed" in out
    # the upgrade's steps, as the pool's events tell them, then the new code answering
    assert "upgrade v1 -> v2: started: 3 worker(s), surge 1, unavailable 0" in out, out
    assert "upgrade v1 -> v2: new worker READY (1 of 3)" in out, out
    assert "starting: 100% loading model v2: warm-up done" in out, out
    assert "upgrade v1 -> v2: done: 3 worker(s) replaced" in out, out
    assert "a call now answers from model v2" in out, out
    summary = out[out.index("summary:") :]
    # it went through with no failed call, and every worker at the end runs v2
    assert "rolling upgrade v1 -> v2" in summary, summary
    assert "done after" in summary and "3 of 3 replaced; workers at the end: 3 on v2\n" in summary, summary
    assert "callers with an error: none (0 calls failed while it ran)" in summary, summary
    for fault in _schedule(14):  # each one listed, each one dealt with
        assert fault.label in summary, (fault.label, summary)
    assert summary.count("back in service after") == 6, summary
    assert summary.count("replaced it") == 5 and "interrupted and kept" in summary, summary
    assert "2 failed starts first" in summary, summary
    assert "all listed above; every other call was served" in summary, summary
    # one snapshot for the last lines and the summary: the counts agree
    [served] = re.findall(r"load stopped: served=(\d+)", out)
    assert f"calls served      {served}\n" in summary, summary


def test_faults_are_spread_over_the_run() -> None:
    times = [f.at for f in _schedule(20.0)]
    assert times[0] < 2.0 and times[-1] < 18.0 and times[-1] > 15.0, times
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) - min(gaps) < 1e-9, gaps


def test_the_upgrade_comes_between_the_third_and_fourth_fault() -> None:
    for seconds in (12.0, 20.0, 60.0):
        faults = _schedule(seconds)
        assert faults[2].at < seconds * UPGRADE_AT < faults[3].at
        upgrade = Upgrade(at=seconds * UPGRADE_AT)
        assert _timeline(faults, upgrade) == [*faults[:3], upgrade, *faults[3:]]


def test_workers_sort_naturally() -> None:
    assert sorted(["w10", "w5", "w1", "w20", "w2"], key=natural) == ["w1", "w2", "w5", "w10", "w20"]


def test_demo_stops_in_order_on_ctrl_c() -> None:
    proc = _demo("--seconds", "60")
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "Ctrl-C" in out and "summary:" in out
    assert "rolling upgrade v1 -> v2 (surge 1, probation 0.3 s): not reached" in out, out
