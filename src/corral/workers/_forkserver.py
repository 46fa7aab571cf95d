"""The fork-server start method: one template process imports the handler module once,
then forks each worker on request (``open_pool(..., start_method="forkserver")``).

A spawned worker pays for an interpreter start and the handler module's imports; a
forked one pays for a fork. The price: whatever the template holds at fork time is
copied into every worker, so the handler module must not start threads or open
connections when it is imported (docs/pool.md, "Start methods").

The template is a child of the parent (PR_SET_PDEATHSIG against it); each worker is a
child of the template (PR_SET_PDEATHSIG against the template) in its own process group.
The template reaps workers and reports their exit statuses over the control socket.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import attrs
import trio

from corral._errors import CorralError
from corral.workers._launch import Launch, PythonModule
from corral.workers._process import PORTABLE, Process, _grow_pipe, open_pidfd
from corral.workers._protocol import child_src_dir


class ForkServerError(CorralError):
    """The fork server (template process) failed: it could not import the handler module,
    or it died. Workers cannot be started until the pool starts a new one."""


def _bootstrap() -> str:
    return f"import sys;sys.path.insert(0,{child_src_dir()!r});from _corral_child._zygote import main;main()"


class ForkedProcess(Process):
    """A worker forked by the template: not our child, so its exit is seen on a pidfd
    and its status comes from the template's report."""

    def __init__(self, server: ForkServer, pid: int, stdin_fd: int, stdout_fd: int, stderr_fd: int) -> None:
        # Deliberately not Process.__init__: nothing to spawn, the fds already exist.
        self._server = server
        self.pid = pid
        os.set_blocking(stdin_fd, False)
        os.set_blocking(stdout_fd, False)
        self.stdin_fd = stdin_fd
        self.stdout_fd = stdout_fd
        self.stderr = trio.lowlevel.FdStream(stderr_fd)
        self._pidfd = open_pidfd(pid)
        self.returncode = None
        self._exited = trio.Event()

    def _status(self) -> int:
        status = self._server.statuses.pop(self.pid, None)
        if status is None:
            return -signal.SIGKILL  # the template did not report it (it died too)
        return os.waitstatus_to_exitcode(status)

    async def watch(self) -> None:
        if self._pidfd is not None:
            await trio.lowlevel.wait_readable(self._pidfd)
        else:
            while not self.has_exited():
                await trio.sleep(0.01)
        self.signal_group(signal.SIGKILL)  # leftovers of its group
        with trio.move_on_after(1.0):
            await self._server.wait_reported(self.pid)
        self.returncode = self._status()
        self._exited.set()

    def has_exited(self) -> bool:
        if self.returncode is not None:
            return True
        if self._pidfd is not None:
            readable, _, _ = select.select([self._pidfd], [], [], 0)
            return bool(readable)
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        return False

    def kill_now(self) -> None:
        if self.returncode is None:
            self.signal_group(signal.SIGKILL)
            if self._pidfd is not None:
                select.select([self._pidfd], [], [], 2.0)
            self.returncode = self._status()
            self._exited.set()


@attrs.define(eq=False)
class ForkServer:
    """The template process and its control socket. Run it with ``nursery.start(fs.run)``.

    Every wait on the template is bounded by ``timeout`` (the pool's init_timeout): a
    template that does not become ready, or does not answer a fork, is killed; its
    ``run`` then ends with ``ForkServerError`` and the pool starts a new one. A fork
    waiting for a template that dies fails at once with ``ForkServerError``.
    """

    module: str | None
    python: str = sys.executable
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    timeout: float = 30.0
    statuses: dict[int, int] = attrs.Factory(dict)
    _reported: dict[int, trio.Event] = attrs.Factory(dict)
    _sock: socket.socket | None = None
    _forks: dict[str, _Fork] = attrs.Factory(dict)  # fork requests waiting for a reply
    _ready: trio.Event = attrs.Factory(trio.Event)
    _first: dict[str, Any] = attrs.Factory(dict)
    _dead: BaseException | None = None
    _proc: subprocess.Popen[bytes] | None = None
    pid: int | None = None

    async def run(self, *, task_status: trio.TaskStatus[ForkServer] = trio.TASK_STATUS_IGNORED) -> None:
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ)
        env.update(self.env or {})
        env["CORRAL_ZYGOTE_FD"] = str(child_sock.fileno())
        env["CORRAL_PARENT_PID"] = str(os.getpid())
        if PORTABLE:
            env["CORRAL_PDEATHSIG"] = "0"
        env["CORRAL_SYS_PATH"] = json.dumps([p if p else os.getcwd() for p in sys.path])
        argv = [self.python, "-c", _bootstrap()] + ([self.module] if self.module else [])
        try:
            # From the Trio thread on purpose (see _process.py: PDEATHSIG follows the thread).
            proc = subprocess.Popen(  # noqa: ASYNC220
                argv,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.cwd,
                pass_fds=(child_sock.fileno(),),
                process_group=0,
            )
        finally:
            child_sock.close()
        self.pid = proc.pid
        self._proc = proc
        self._sock = parent_sock
        ctl = trio.socket.from_stdlib_socket(parent_sock)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read, ctl, nursery.cancel_scope)
                with trio.move_on_after(self.timeout) as waited:
                    await self._ready.wait()
                if waited.cancelled_caught:
                    self._end(ForkServerError(f"the fork server was not ready within {self.timeout} s"))
                    nursery.cancel_scope.cancel()
                else:
                    task_status.started(self)
                    await trio.sleep_forever()  # until _read sees the template go
        finally:
            self._end(ForkServerError("the fork server exited"))
            # Synchronous and bounded: the template dies at once on SIGKILL (stopped too).
            ctl.close()
            self.kill()
            proc.wait()
        if self._first.get("op") == "error":
            raise ForkServerError(f"the fork server could not start: {self._first.get('message')}")
        raise ForkServerError(f"the fork server (pid {proc.pid}) exited: {self._dead}")

    def fresh(self) -> ForkServer:
        """A new template with the same settings (this one died)."""
        return ForkServer(self.module, self.python, self.env, self.cwd, self.timeout)

    def kill(self) -> None:
        """Kill the template (and whatever is left of its group): its ``run`` ends."""
        if self.pid is not None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _end(self, error: BaseException) -> None:
        """The template is gone or given up: every waiting fork fails now."""
        if self._dead is None:
            self._dead = error
        for fork in self._forks.values():
            fork.done.set()
        self._forks.clear()
        for event in self._reported.values():
            event.set()

    async def _read(self, ctl: trio.socket.SocketType, scope: trio.CancelScope) -> None:
        while True:
            try:
                data = await ctl.recv(65536)
            except OSError:
                data = b""
            if not data:
                self._end(ForkServerError("the fork server exited"))
                scope.cancel()
                return
            msg = json.loads(data)
            op = msg.get("op")
            if op == "exit":
                self.statuses[msg["pid"]] = msg["status"]
                self._reported.pop(msg["pid"], trio.Event()).set()
            elif op == "ready" or (op == "error" and not self._ready.is_set()):
                self._first = msg
                if op == "ready":
                    self._ready.set()
                else:
                    self._end(ForkServerError(f"the fork server could not start: {msg.get('message')}"))
            else:
                fork = self._forks.pop(str(msg.get("id")), None)
                if fork is not None:
                    fork.reply = msg
                    fork.done.set()
                elif op == "forked":  # its caller gave up: the process is nobody's
                    _kill_group(int(msg["pid"]))

    @property
    def alive(self) -> bool:
        """Ready to fork: it imported the module, and it has not died."""
        return self._ready.is_set() and self._dead is None

    async def wait_reported(self, pid: int) -> None:
        if pid in self.statuses or self._dead is not None:
            return
        await self._reported.setdefault(pid, trio.Event()).wait()

    async def fork(self, worker_id: str, env: Mapping[str, str] | None) -> ForkedProcess:
        """A new worker process, forked from the template, with fresh pipes."""
        if self._sock is None or not self.alive:
            raise ForkServerError(str(self._dead or "the fork server is not running"))
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        for fd in (in_w, out_w):
            _grow_pipe(fd)
        payload = json.dumps({"op": "fork", "id": worker_id, "env": dict(env or {})}).encode()
        self._forks[worker_id] = fork = _Fork()
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            socket.send_fds(self._sock, [payload], [in_r, out_w, err_w])
            with trio.move_on_after(self.timeout):
                await fork.done.wait()
        except BaseException:
            self._forks.pop(worker_id, None)
            for fd in (in_w, out_r, err_r):
                os.close(fd)
            raise
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        self._forks.pop(worker_id, None)
        reply = fork.reply
        if reply.get("op") != "forked":
            for fd in (in_w, out_r, err_r):
                os.close(fd)
            if not fork.done.is_set():  # it stopped answering: replace it
                self.kill()
                raise ForkServerError(f"the fork server did not answer within {self.timeout} s; replaced")
            raise ForkServerError(f"fork failed: {reply.get('message') or self._dead}")
        return ForkedProcess(self, reply["pid"], in_w, out_r, err_r)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class _Fork:
    """One fork request waiting for the template's reply."""

    __slots__ = ("done", "reply")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.reply: dict[str, Any] = {}


@attrs.define(eq=False)
class ForkServerLauncher:
    """The launcher seam for forked workers: same handshake, a different spawn.
    ``server`` is replaced when a template dies."""

    base: PythonModule
    server: ForkServer

    def launch(self, worker_id: str) -> Launch:
        return self.base.launch(worker_id)

    async def spawn(self, worker_id: str, launch: Launch) -> Process:
        # A template that just died is being replaced: wait for it (at most the
        # pool's init_timeout) rather than fail every restart and trip the breaker.
        with trio.move_on_after(self.server.timeout):
            while not self.server.alive:
                await trio.sleep(0.01)
        return await self.server.fork(worker_id, launch.env)
