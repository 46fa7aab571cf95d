"""Handlers that misbehave on purpose (tests/test_worker.py, tests/test_pool*.py).

Stdlib only and cheap to import; heavier modules are imported inside the handlers.
"""

import os
import sys
import time

from tests.handlers_basic import add, big, echo, getpid, modules, sleep

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["add", "big", "echo", "getpid", "modules", "sleep"]

_grandchildren: "list[Any]" = []


class CustomError(ValueError):
    """Picklable: arrives as RemoteError.__cause__."""


class UnpicklableError(Exception):
    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.hook = lambda: None  # pickling this exception fails


def raise_custom(msg: str) -> None:
    raise CustomError(msg)


def raise_unpicklable(msg: str) -> None:
    raise UnpicklableError(msg)


def square(x: int) -> int:
    """Module-level function for run_sync."""
    return x * x


def slow_echo(x: "Any", delay: float) -> "Any":
    time.sleep(delay)
    return x


def exit_with(code: int) -> None:
    print(f"exiting with {code} on purpose", file=sys.stderr, flush=True)
    os._exit(code)


def segfault() -> None:
    import ctypes

    print("about to dereference NULL", file=sys.stderr, flush=True)
    ctypes.string_at(0)


def kill_self(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(10)


def spawn_grandchild() -> int:
    """Start `sleep 1000` in the worker's process group; return its pid."""
    import subprocess

    proc = subprocess.Popen(["sleep", "1000"])
    _grandchildren.append(proc)
    return proc.pid


def stubborn_sleep(seconds: float) -> str:
    """Ignores the interrupt: keeps sleeping after KeyboardInterrupt."""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return "finished"
        try:
            time.sleep(left)
        except KeyboardInterrupt:
            print("interrupt ignored", file=sys.stderr, flush=True)


def noisy(tag: str) -> str:
    """Writes to stdout in every way a handler can; none of it may reach the channel."""
    print(f"{tag} print")
    sys.stdout.write(f"{tag} sys.stdout\n")
    sys.stdout.flush()
    os.write(1, f"{tag} fd1\n".encode())
    os.write(1, b"\x00\x00\x00\x07garbage\n")
    print(f"{tag} stderr", file=sys.stderr, flush=True)
    return tag


def _reply_fd() -> int:
    """The runtime's private reply fd: the write end of a pipe other than stderr's."""
    import fcntl
    import stat

    err_ino = os.fstat(2).st_ino
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2:
            continue
        try:
            st = os.fstat(fd)
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        except OSError:
            continue
        if stat.S_ISFIFO(st.st_mode) and flags & os.O_ACCMODE == os.O_WRONLY and st.st_ino != err_ino:
            return fd
    raise RuntimeError("reply fd not found")


def garbage_reply(kind: str) -> str:
    """Write something that is not a valid reply onto the protocol channel."""
    import pickle

    fd = _reply_fd()
    if kind == "huge":  # a length far beyond max_frame
        os.write(fd, b"\x7f\xff\xff\xff")
    elif kind == "junk":  # a well-framed payload that does not decode
        os.write(fd, b"\x00\x00\x00\x05\x80junk")
    elif kind == "stray":  # a valid reply for a request nobody sent
        payload = pickle.dumps(("ok", 987654, None), protocol=5)
        os.write(fd, len(payload).to_bytes(4, "big") + payload)
    return kind


def half_reply() -> None:
    """Exit in the middle of a reply frame: a header promising 100 bytes, then 3."""
    fd = _reply_fd()
    os.write(fd, b"\x00\x00\x00\x64abc")
    os._exit(0)


def stderr_flood(nbytes: int, newline: bool) -> int:
    """Write ``nbytes`` to stderr in one line (or in 100-byte lines)."""
    chunk = (b"x" * 99 + b"\n") if newline else b"x" * 100
    data = chunk * (nbytes // 100)
    view = memoryview(data)
    while view:
        view = view[os.write(2, view) :]
    os.write(2, b"\nflood done\n")
    return nbytes


def worker_only_object() -> object:
    """An instance of a class whose module exists only in this worker: it pickles here,
    and the parent cannot unpickle it."""
    import types

    module = sys.modules.get("corral_worker_only")
    if module is None:
        module = types.ModuleType("corral_worker_only")
        exec("class Thing:\n    pass\n", module.__dict__)
        sys.modules["corral_worker_only"] = module
    return module.Thing()
