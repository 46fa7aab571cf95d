"""One OS command as a supervised child: spawn it in its own process group, pump its
stdout/stderr lines into its log, forward a stop request as ``stop_signal``, and make
sure no process of the group outlives the child (``SIGKILL`` in shielded cleanup).

``run_process`` is the ``start`` function of every command's ``ChildSpec``; its exit
code is the child's exit reason (0 normal, anything else ``ProcessExited``, abnormal).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Sequence

import trio

from corral.procman._config import LogSettings, ProcessConfig
from corral.procman._logs import ERR, NOTE, OUT, Console, RotatingLog
from corral.supervisor import Shutdown, current_child
from corral.workers._process import open_pidfd

DRAIN_SECONDS = 1.0  # after the process exited: how long its pipes may still deliver output
KILL_WAIT_SECONDS = 5.0  # after SIGKILL: how long to wait for the kernel to end the leader
MAX_LINE = 64 * 1024  # a longer line without a newline is cut into pieces of this size


def show_command(command: Sequence[str], limit: int = 100) -> str:
    """A one-line, human-readable rendering of a command (not for a shell)."""
    parts = []
    for part in command:
        flat = " ".join(part.split())
        parts.append(f'"{flat}"' if flat != part or not flat or '"' in flat else flat)
    text = " ".join(parts)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ProcessExited(Exception):
    """A command ended by itself with a nonzero exit code or a signal (abnormal exit)."""

    def __init__(self, child_id: str, code: int | None, signal_name: str | None) -> None:
        self.child_id = child_id
        self.code = code
        self.signal = signal_name
        super().__init__(describe_returncode(code if signal_name is None else None, signal_name))


def describe_returncode(code: int | None, signal_name: str | None) -> str:
    return f"killed by {signal_name}" if signal_name is not None else f"exit code {code}"


def _split_returncode(rc: int) -> tuple[int | None, str | None]:
    if rc >= 0:
        return rc, None
    try:
        return None, signal.Signals(-rc).name
    except ValueError:
        return None, f"signal {-rc}"


class _Pipe:
    """One output pipe of the process: reads chunks, hands on whole lines."""

    def __init__(self, fd: int, emit: Callable[[list[str]], None]) -> None:
        os.set_blocking(fd, False)
        self.fd: int | None = fd
        self._emit = emit
        self._buf = b""
        self.eof = False

    def _feed(self, data: bytes) -> None:
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        while len(self._buf) > MAX_LINE:
            lines.append(self._buf[:MAX_LINE])
            self._buf = self._buf[MAX_LINE:]
        if lines:
            self._emit([line.decode("utf-8", "replace").rstrip("\r") for line in lines])

    def _read(self) -> bytes | None:
        """One non-blocking read: data, b"" at EOF, None when nothing is there yet."""
        assert self.fd is not None
        try:
            return os.read(self.fd, 65536)
        except BlockingIOError:
            return None

    async def pump(self) -> None:
        while not self.eof:
            assert self.fd is not None
            await trio.lowlevel.wait_readable(self.fd)
            self.drain_nowait()

    def drain_nowait(self) -> None:
        """Everything that is in the pipe right now (used after a kill, without waiting)."""
        while self.fd is not None and not self.eof:
            try:
                data = self._read()
            except OSError:
                data = b""
            if data is None:
                return
            if not data:
                self.eof = True
                return
            self._feed(data)

    def close(self) -> None:
        if self._buf:
            buf, self._buf = self._buf, b""
            self._emit([buf.decode("utf-8", "replace")])
        if self.fd is not None:
            fd, self.fd = self.fd, None
            trio.lowlevel.notify_closing(fd)
            os.close(fd)


class _Spawned:
    """The running command: a process-group leader with two output pipes."""

    def __init__(self, proc: ProcessConfig, on_lines: Callable[[list[str], str], None]) -> None:
        env = dict(os.environ)
        env.update(proc.env)
        env["CORRAL_CHILD_ID"] = proc.id
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            self.popen = subprocess.Popen(
                list(proc.command),
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                env=env,
                cwd=proc.cwd,
                process_group=0,  # its own group: signals reach everything it spawns
                close_fds=True,
            )
        except BaseException:
            for fd in (out_r, out_w, err_r, err_w):
                os.close(fd)
            raise
        os.close(out_w)
        os.close(err_w)
        self.pid = self.popen.pid
        self.returncode: int | None = None
        self.stdout = _Pipe(out_r, lambda lines: on_lines(lines, OUT))
        self.stderr = _Pipe(err_r, lambda lines: on_lines(lines, ERR))
        self._pidfd: int | None = open_pidfd(self.pid)

    def signal_group(self, sig: int) -> None:
        """Signal the whole group; never after reaping (the pgid could be reused)."""
        if self.returncode is not None:
            return
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    async def wait_exit(self) -> None:
        """Until the leader has exited (it is not reaped: its pgid stays ours)."""
        if self.returncode is not None:
            return
        if self._pidfd is not None:
            await trio.lowlevel.wait_readable(self._pidfd)
            return
        # No pidfd (old kernel): poll without reaping; WNOHANG never blocks.
        while os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:  # noqa: ASYNC222
            await trio.sleep(0.02)

    def reap(self) -> int:
        """End what is left of the group, then collect the leader's exit status."""
        if self.returncode is None:
            self.signal_group(signal.SIGKILL)
            self.returncode = self.popen.wait()
        return self.returncode

    def close(self) -> None:
        self.stdout.close()
        self.stderr.close()
        if self._pidfd is not None:
            fd, self._pidfd = self._pidfd, None
            trio.lowlevel.notify_closing(fd)
            os.close(fd)


async def run_process(
    proc: ProcessConfig,
    logs: LogSettings,
    console: Console | None = None,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one command as a supervised child; ``started(pid)`` once it is spawned.

    Exit code 0 returns (normal exit); any other code or a signal raises
    ``ProcessExited`` (abnormal); an exit after a stop request raises ``Shutdown``.
    On a stop request ``stop_signal`` goes to the process group; when the supervisor
    cancels us (grace over, or the tree torn down from outside) the group gets
    ``SIGKILL`` in shielded cleanup. No process of the group outlives this call.
    """
    ctx = current_child()
    log = RotatingLog(logs.path(proc.id), logs.max_bytes, logs.backups, console)

    def note(text: str) -> None:
        log.write_lines([text], NOTE)

    try:
        spawned = _Spawned(proc, log.write_lines)
    except BaseException as exc:
        note(f"cannot start {show_command(proc.command)}: {exc!r}")
        log.close()
        raise
    note(f"started pid {spawned.pid}: {show_command(proc.command)}")
    stop_sent = False
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(spawned.stdout.pump)
            nursery.start_soon(spawned.stderr.pump)
            stop_scope = trio.CancelScope()

            async def forward_stop() -> None:
                nonlocal stop_sent
                with stop_scope:
                    await ctx.stop_requested.wait()
                    stop_sent = True
                    note(f"stop requested: {proc.stop_signal.name} to the process group")
                    spawned.signal_group(proc.stop_signal)

            nursery.start_soon(forward_stop)
            task_status.started(spawned.pid)
            await spawned.wait_exit()
            stop_scope.cancel()
            spawned.reap()  # SIGKILLs what is left of the group first, so the pipes reach EOF
            with trio.move_on_after(DRAIN_SECONDS):
                while not (spawned.stdout.eof and spawned.stderr.eof):
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()  # a process that escaped the group may hold a pipe
    finally:
        with trio.CancelScope(shield=True):
            if spawned.returncode is None:  # cancelled: grace over, or torn down from outside
                spawned.signal_group(signal.SIGKILL)
                with trio.move_on_after(KILL_WAIT_SECONDS):
                    await spawned.wait_exit()
                spawned.reap()
                note(f"SIGKILL to the process group (pid {spawned.pid})")
            spawned.stdout.drain_nowait()
            spawned.stderr.drain_nowait()
            spawned.close()
            assert spawned.returncode is not None
            note(f"exited: {describe_returncode(*_split_returncode(spawned.returncode))}")
            log.close()
    assert spawned.returncode is not None
    code, sig = _split_returncode(spawned.returncode)
    if stop_sent:
        raise Shutdown(f"stopped: {describe_returncode(code, sig)}")
    if code != 0:
        raise ProcessExited(proc.id, code, sig)
