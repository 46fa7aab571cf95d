"""Process and fd bookkeeping for the worker/pool tests (Linux /proc, no mocks).

Every process the test session starts (workers, their grandchildren, helper parents)
inherits ``CORRAL_TEST_OWNER=<pytest pid>`` from the environment, so it is found even
after it was re-parented to init; plain descendants are found through the ppid chain.
"""

from __future__ import annotations

import os
import time

import trio

MARK_ENV = "CORRAL_TEST_OWNER"
_SELF = os.getpid()
_MARK = f"{MARK_ENV}={_SELF}".encode()


def install_mark() -> None:
    os.environ[MARK_ENV] = str(_SELF)


def _stat(pid: int) -> tuple[str, int, str] | None:
    """(state, ppid, comm) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    lpar, rpar = data.find("("), data.rfind(")")
    fields = data[rpar + 2 :].split()
    return fields[0], int(fields[1]), data[lpar + 1 : rpar]


def _marked(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return False
    return env.startswith(_MARK + b"\0") or (b"\0" + _MARK + b"\0") in env


def our_processes(root: int = _SELF) -> dict[int, str]:
    """Every live or zombie process that descends from ``root`` or carries our mark."""
    table: dict[int, tuple[str, int, str]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                table[int(name)] = st
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    if root == _SELF:
        found.update(pid for pid in table if pid != _SELF and _marked(pid))
    return {
        pid: f"{table[pid][2]} state={table[pid][0]} ppid={table[pid][1]}" for pid in found if pid in table
    }


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


async def wait_gone(pids: list[int] | set[int], timeout: float = 2.0) -> list[int]:
    """Poll until none of ``pids`` is alive; returns those still alive after ``timeout``."""
    deadline = trio.current_time() + timeout
    while True:
        left = [p for p in pids if alive(p)]
        if not left or trio.current_time() >= deadline:
            return left
        await trio.sleep(0.01)


def wait_gone_sync(pids: list[int] | set[int], timeout: float = 2.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if alive(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.01)


def open_fds() -> dict[int, str]:
    result: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            result[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # the fd of the listdir itself
    return result


async def read_line(stream: trio.abc.ReceiveStream) -> bytes:
    """The first line a helper process prints (it reports pids that way)."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = await stream.receive_some(1024)
        assert chunk, "the process exited before printing its line"
        line += chunk
    return line
