"""One OS process in its own process group, with raw pipes wrapped for Trio.

We spawn with ``subprocess.Popen`` from the Trio thread (vfork: a millisecond) rather
than trio's ``open_process``, which spawns from a worker thread: Linux's
PR_SET_PDEATHSIG fires when the *thread* that forked dies, and trio's idle threads do.
Exit is awaited on a pidfd where the kernel has them, else by polling.

``CORRAL_PORTABLE=1`` turns the Linux-only accelerations off (pidfds, 1 MiB pipes,
PR_SET_PDEATHSIG in the worker), so that the paths macOS takes are exercised on Linux
too: tests/test_portable.py runs the process tests that way.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from corral.workers._launch import Launch, Launcher

#: The paths other platforms take, selected on Linux (see the module docstring).
PORTABLE = os.environ.get("CORRAL_PORTABLE") == "1"
_HAVE_PIDFD = hasattr(os, "pidfd_open") and not PORTABLE


def open_pidfd(pid: int) -> int | None:
    """A pidfd for ``pid`` (Linux 5.3+): readable once the process exits, for any
    process, child or not. None where the kernel has none: callers poll instead."""
    if not _HAVE_PIDFD:
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


_PIPE_SIZE = 1 << 20


def _grow_pipe(fd: int) -> None:
    """Ask for a 1 MiB pipe (Linux; pages are only used as data flows): a large frame
    then crosses in a few writes instead of sixteen 64 KiB round trips through the
    scheduler. Harmless where refused (capped by /proc/sys/fs/pipe-max-size)."""
    setpipe = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setpipe is None or PORTABLE:
        return
    try:
        fcntl.fcntl(fd, setpipe, _PIPE_SIZE)
    except OSError:
        pass


async def spawn_process(launcher: Launcher, worker_id: str, launch: Launch) -> Process:
    """Start a worker's process: the launcher's own ``spawn`` if it has one (the fork
    server's, the pool's), else a local ``Process``."""
    spawn = getattr(launcher, "spawn", None)
    if spawn is not None:
        proc: Process = await spawn(worker_id, launch)
        return proc
    return Process(launch.argv, env=launch.env, cwd=launch.cwd)


class Process:
    """A spawned worker process: its pid, its three pipes, and how to end it."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        for fd in (in_w, out_w):
            _grow_pipe(fd)
        try:
            full_env = dict(os.environ)
            if env:
                full_env.update(env)
            full_env["CORRAL_PARENT_PID"] = str(os.getpid())
            if PORTABLE:
                full_env["CORRAL_PDEATHSIG"] = "0"
            self._popen = subprocess.Popen(
                list(argv),
                stdin=in_r,
                stdout=out_w,
                stderr=err_w,
                env=full_env,
                cwd=cwd,
                process_group=0,
                close_fds=True,
            )
        except BaseException:
            for fd in (in_r, in_w, out_r, out_w, err_r, err_w):
                os.close(fd)
            raise
        for fd in (in_r, out_w, err_w):
            os.close(fd)
        self.pid = self._popen.pid
        # Requests and replies use the raw non-blocking fds: the worker's hot path does
        # its own os.write/os.read with one wait_readable per call. stderr is a stream.
        os.set_blocking(in_w, False)
        os.set_blocking(out_r, False)
        self.stdin_fd: int | None = in_w
        self.stdout_fd: int | None = out_r
        self.stderr = trio.lowlevel.FdStream(err_r)
        self._pidfd: int | None = open_pidfd(self.pid)
        self.returncode: int | None = None
        self._exited = trio.Event()

    @property
    def exited(self) -> bool:
        return self.returncode is not None

    def signal_group(self, sig: int) -> None:
        """Signal the whole process group (the worker and anything it spawned)."""
        if self.returncode is not None:
            return  # reaped: the pgid may belong to someone else now
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def has_exited(self) -> bool:
        """Cheap check (no reaping) whether the process is already dead."""
        if self.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    async def watch(self) -> None:
        """Wait for the exit, end the group's leftovers, reap. Run by exactly one task;
        everyone else awaits ``exited_event``."""
        if self._pidfd is not None:
            await trio.lowlevel.wait_readable(self._pidfd)
        else:
            while self._popen.poll() is None:
                await trio.sleep(0.01)
        # The leader is dead but not reaped, so its pgid is still ours: end the group.
        self.signal_group(signal.SIGKILL)
        self.returncode = self._popen.wait()
        self._exited.set()

    @property
    def exited_event(self) -> trio.Event:
        return self._exited

    def kill_now(self) -> None:
        """Synchronous last resort: SIGKILL the group and reap (used in shielded cleanup)."""
        if self.returncode is None:
            self.signal_group(signal.SIGKILL)
            try:
                self.returncode = self._popen.wait(timeout=2.0)
            except subprocess.TimeoutExpired:  # pragma: no cover - unkillable (D state)
                pass
            self._exited.set()

    async def aclose(self) -> None:
        """Close our pipe ends and the pidfd. The process must be gone already."""
        for name in ("stdin_fd", "stdout_fd"):
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                trio.lowlevel.notify_closing(fd)
                os.close(fd)
        await self.stderr.aclose()
        if self._pidfd is not None:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def describe_exit(self) -> tuple[int | None, str | None]:
        """(exit_code, signal name) of a finished process."""
        rc = self.returncode
        if rc is None:
            return None, None
        if rc < 0:
            try:
                return None, signal.Signals(-rc).name
            except ValueError:
                return None, f"signal {-rc}"
        return rc, None

    def rss_bytes(self) -> int | None:
        """Resident set size from /proc (Linux), for memory-based recycling."""
        try:
            with open(f"/proc/{self.pid}/statm", "rb") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None
