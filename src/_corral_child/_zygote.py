"""The fork server ("zygote"): import the handler module once, then fork workers.

Started by the parent as ``python -c <bootstrap> [module]`` with a SOCK_SEQPACKET
control socket on the fd named by ``CORRAL_ZYGOTE_FD``. Standard library only.

Control messages (one JSON packet each):
- parent -> zygote: ``{"op": "fork", "id": str, "env": {str: str}}`` carrying three
  file descriptors (the worker's stdin, stdout, stderr) as SCM_RIGHTS.
- zygote -> parent: first ``{"op": "ready", "pid": int}`` once the handler module is
  imported (or ``{"op": "error", "id": "", "message": str}`` and exit code 3 if the
  import failed); then, per fork, ``{"op": "forked", "id": str, "pid": int}`` or
  ``{"op": "error", "id": str, "message": str}``; and, whenever a worker exits,
  ``{"op": "exit", "pid": int, "status": int}`` (the raw wait status).

Each forked worker gets its own process group, PR_SET_PDEATHSIG against the zygote
(which has it against the parent), its fds on 0/1/2, and then runs the ordinary
runtime (``_runtime.main``): the handshake is the same as for a spawned worker.

Forking is only safe from a single-threaded process with no open connections the
workers would share: the zygote runs no threads, and the handler module must not start
any (or open sockets) at import time. docs/pool.md says when to prefer spawn.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import sys

from _corral_child import _runtime


def _send(ctl: socket.socket, obj: dict[str, object]) -> None:
    try:
        ctl.send(json.dumps(obj).encode())
    except OSError:
        os._exit(0)  # the parent is gone


def _reap(ctl: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(ctl, {"op": "exit", "pid": pid, "status": status})


def _child(ctl: socket.socket, wake_r: int, wake_w: int, fds: list[int], env: dict[str, str]) -> None:
    """In the forked worker: become a fresh worker process, then run the runtime."""
    try:
        os.setpgid(0, 0)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        ctl.close()
        os.close(wake_r)
        os.close(wake_w)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.environ.update(env)
        os.environ["CORRAL_PARENT_PID"] = str(os.getppid())  # the zygote
    except BaseException as exc:  # nothing else may run in a half-made child
        try:
            os.write(2, f"corral zygote: worker setup failed: {exc!r}\n".encode())
        finally:
            os._exit(4)
    _runtime.main(sys.argv[1:2])


def main() -> None:
    ctl = socket.socket(fileno=int(os.environ.pop("CORRAL_ZYGOTE_FD")))
    ctl.setblocking(True)
    if sys.platform == "linux" and os.environ.get("CORRAL_PDEATHSIG", "1") != "0":
        _runtime._set_pdeathsig()
    if _runtime.parent_gone(os.environ.get("CORRAL_PARENT_PID")):
        os._exit(0)
    path = os.environ.pop("CORRAL_SYS_PATH", None)
    if path:
        sys.path[:] = json.loads(path)
    module = sys.argv[1] if len(sys.argv) > 1 else None
    if module:
        try:
            __import__(module)  # once, here: every worker inherits it
        except BaseException as exc:
            _send(ctl, {"op": "error", "id": "", "message": f"cannot import {module!r}: {exc!r}"})
            os._exit(3)
    _send(ctl, {"op": "ready", "pid": os.getpid()})

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # just wake the selector
    selector = selectors.DefaultSelector()
    selector.register(ctl, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj is ctl:
                try:
                    data, fds, _flags, _addr = socket.recv_fds(ctl, 65536, 3)
                except OSError:
                    os._exit(0)
                if not data:
                    os._exit(0)  # the parent closed the control socket: we are done
                request = json.loads(data)
                if len(fds) != 3:
                    for fd in fds:
                        os.close(fd)
                    _send(ctl, {"op": "error", "id": request.get("id"), "message": "expected 3 fds"})
                    continue
                pid = os.fork()
                if pid == 0:
                    _child(ctl, wake_r, wake_w, fds, request.get("env") or {})
                for fd in fds:
                    os.close(fd)
                _send(ctl, {"op": "forked", "id": request.get("id"), "pid": pid})
            else:
                try:
                    os.read(wake_r, 4096)
                except BlockingIOError:
                    pass
                _reap(ctl)
