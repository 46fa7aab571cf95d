"""The reaper: whatever a worker started dies with the parent, even by SIGKILL.

A worker dies with its parent (stdin EOF, and PR_SET_PDEATHSIG where available), but
the processes its handlers started live in its process group, and nothing kills that
group when the parent is SIGKILLed: they would be re-parented to init and run on. So
each pool runs one tiny reaper process, in its own process group and without
PDEATHSIG. The pool tells it over a pipe which worker groups exist (``+pgid`` when a
worker is spawned, ``-pgid`` once its group is gone); when the pipe closes (the pool
closed, or the parent died in any way), the reaper SIGKILLs every group still listed,
then exits.

Limit: a process that leaves its group (``setsid()``, a daemonizing double fork) is
beyond a group kill; docs/pool.md says so next to the promise.
"""

from __future__ import annotations

import os
import subprocess

# POSIX sh, so that it starts in a millisecond: it costs the pool's start-up nothing.
# Each live group is a variable g_<pgid>; at EOF every one still set is killed.
_SCRIPT = """
trap '' INT HUP
while read -r line; do
  pgid=${line#?}
  case $line in
    +*) eval "g_$pgid=1" ;;
    -*) unset "g_$pgid" ;;
  esac
done
for pgid in $(set | sed -n 's/^g_\\([0-9][0-9]*\\)=.*/\\1/p'); do
  kill -s KILL -- "-$pgid" 2>/dev/null
done
"""


class Reaper:
    """One pool's reaper process; ``add``/``discard`` are one small pipe write each."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._fd: int | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(
            ["/bin/sh", "-c", _SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            process_group=0,  # a terminal's signals to our group are not for it
        )
        assert self._proc.stdin is not None
        self._fd = self._proc.stdin.fileno()

    def _send(self, line: bytes) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, line)
        except OSError:
            self._fd = None  # it died: nothing more to tell it

    def add(self, pgid: int) -> None:
        if self._proc is None:  # started with the first worker: a lazy pool has none
            self.start()
        self._send(b"+%d\n" % pgid)

    def discard(self, pgid: int) -> None:
        self._send(b"-%d\n" % pgid)

    def close(self) -> None:
        """Let it go: it kills what is still listed (nothing, after an orderly close)."""
        proc, self._proc, self._fd = self._proc, None, None
        if proc is None:
            return
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
