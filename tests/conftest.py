"""Shared fixtures.

``_no_leaks`` (autouse): after every test, no process started by the test session may
remain (descendants, or re-parented processes carrying our environment mark) and the
number of open fds must not have grown.
"""

from __future__ import annotations

import gc
import os
import signal
import time
from collections.abc import Iterator

import pytest

from tests import proc_util

proc_util.install_mark()

_FD_TOLERANCE = 0  # trio.run closes its epoll and wakeup fds before teardown


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    procs_before = set(proc_util.our_processes())
    fds_before = proc_util.open_fds()
    yield
    problems: list[str] = []
    deadline = time.monotonic() + 2.0
    while True:
        leftover = {p: d for p, d in proc_util.our_processes().items() if p not in procs_before}
        if not leftover or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    if leftover:
        problems.append(f"processes left behind: {leftover}")
        for pid in leftover:  # clean up so the next test starts clean
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
    grown = _new_fds(fds_before)
    if len(grown) > _FD_TOLERANCE:
        gc.collect()
        grown = _new_fds(fds_before)
        if len(grown) > _FD_TOLERANCE:
            problems.append(f"fds leaked: {grown}")
        else:
            problems.append(f"fds closed only by the garbage collector: {grown}")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


def _new_fds(before: dict[int, str]) -> dict[int, str]:
    return {fd: target for fd, target in proc_util.open_fds().items() if before.get(fd) != target}
