"""Remote workers through a real OpenSSH server on loopback (``.ci/sshd-setup``).

The "remote" host is this machine, so remote processes can be checked by pid. They are
not our descendants (sshd starts them), so the autouse leak check cannot see them: each
test checks the remote worker, its process group and what it spawned explicitly.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import corral
from corral import CircuitBreaker, InvalidSpec, RemoteError, WorkerCrashed, open_pool
from corral.workers._remote import remote_bootstrap
from corral.workers._worker import Worker, WorkerState
from tests.proc_util import MARK_ENV, alive, read_line, wait_gone

ROOT = Path(__file__).resolve().parent.parent
SETUP = ROOT / ".ci" / "sshd-setup"
SSHD_DIR = Path(os.environ.get("CORRAL_SSHD_DIR", "/tmp/corral-sshd"))
# The remote interpreter: a system python3 (no corral, no venv) when there is one.
REMOTE_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
BASIC = "tests.handlers_basic"
FAULTS = "tests.handlers_faults"


# -- the server ------------------------------------------------------------------------


def _read_env() -> dict[str, str] | None:
    try:
        text = (SSHD_DIR / "env").read_text()
    except OSError:
        return None
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _answers(env: dict[str, str]) -> bool:
    try:
        done = subprocess.run(
            ["ssh", "-F", env["CORRAL_SSH_CONFIG"], env["CORRAL_SSH_HOST"], "true"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture(scope="module")
def sshd() -> dict[str, str]:
    """The loopback sshd of .ci/sshd-setup; started here if CI did not start it."""
    env = _read_env()
    if env is not None and _answers(env):
        return env
    # The server must not carry this session's process mark (it outlives the tests).
    clean = {k: v for k, v in os.environ.items() if k != MARK_ENV}
    clean["CORRAL_SSHD_DIR"] = str(SSHD_DIR)
    try:
        done = subprocess.run(
            ["sh", str(SETUP)], env=clean, stdin=subprocess.DEVNULL, capture_output=True, timeout=120
        )
        output = (done.stdout + done.stderr).decode(errors="replace").strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        output = f"{SETUP} did not finish: {exc}"
    env = _read_env()
    if env is None or not _answers(env):
        try:
            reason = (SSHD_DIR / "skip").read_text().strip()
        except OSError:
            reason = output or "no reason given"
        pytest.skip(f"no loopback sshd for the ssh tests ({SETUP}): {reason}")
    return env


def host(server: dict[str, str], **kw: Any) -> corral.SSH:
    """An SSH launcher for the loopback server (its client config names key and port)."""
    kw.setdefault("python", REMOTE_PYTHON)
    kw.setdefault("cwd", str(ROOT))
    return corral.SSH(server["CORRAL_SSH_HOST"], options=["-F", server["CORRAL_SSH_CONFIG"]], **kw)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- remote processes (same machine: /proc) ------------------------------------------


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, pgrp) of a live process, None if it is gone or a zombie."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data[data.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[2])


def group_members(pgid: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None and st[1] == pgid:
                pids.append(int(name))
    return pids


async def wait_group_gone(pgid: int, timeout: float = 2.0) -> list[int]:
    deadline = trio.current_time() + timeout
    while True:
        left = group_members(pgid)
        if not left or trio.current_time() >= deadline:
            return left
        await trio.sleep(0.02)


@pytest.fixture
def reap() -> Iterator[list[int]]:
    """Remote pids a test saw: whatever is left of them (a failed test) is killed after it."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if _stat(pid) is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


# -- the launcher, without a server ----------------------------------------------------


def test_argv_puts_user_options_before_the_defaults() -> None:
    ssh = corral.SSH("h", port=2200, user="u", identity_file="/k", options=["-o", "ServerAliveInterval=60"])
    argv = ssh.argv()
    assert argv[:7] == ["ssh", "-p", "2200", "-l", "u", "-i", "/k"]
    # ssh keeps the first value: the user's 60 beats our default.
    ours = argv.index(f"ServerAliveInterval={ssh.alive_interval}")
    assert argv.index("ServerAliveInterval=60") < ours
    assert argv[-3:-1] == ["h", "--"]
    assert "BatchMode=yes" in argv and "ControlPath=none" in argv and "-T" in argv


def test_remote_command_quotes_for_the_remote_shell() -> None:
    ssh = corral.SSH(
        "h", module="app.handlers", python="/opt/py 3/bin/python", cwd="~/my app", env={"A": "x y"}
    )
    command = ssh.remote_command()
    assert command.startswith("cd ~/'my app' && exec env 'A=x y' '/opt/py 3/bin/python' -c '")
    assert command.endswith(" app.handlers")
    assert corral.SSH("h", cwd="/srv/app").remote_command().startswith("cd /srv/app && exec python3 -c ")


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"host": ""}, "ssh.host"),
        ({"host": "-oProxyCommand=x"}, "ssh.host"),
        ({"host": "h", "weight": 0}, "ssh.weight"),
        ({"host": "h", "weight": True}, "ssh.weight"),
        ({"host": "h", "port": 70000}, "ssh.port"),
        ({"host": "h", "options": "-v"}, "ssh.options"),
        ({"host": "h", "env": {"A B": "x"}}, "ssh.env"),
        ({"host": "h", "connect_timeout": 0}, "ssh.connect_timeout"),
        ({"host": "h", "user": "-x"}, "ssh.user"),
    ],
)
def test_invalid_ssh_specs_are_refused(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpec, match=field.replace(".", r"\.")):
        corral.SSH(**kw)


async def test_bootstrap_runs_the_runtime_without_corral_installed(tmp_path: Path) -> None:
    """The same program serves a Command (containers): the module comes from argv."""
    (tmp_path / "plain_handlers.py").write_text(
        "from corral_child import progress\n"
        "def add(a, b):\n    return a + b\n"
        "def count(n):\n    progress(0.5, 'half')\n    yield from range(n)\n"
    )
    command = corral.Command([REMOTE_PYTHON, "-c", remote_bootstrap(), "plain_handlers"], cwd=str(tmp_path))
    with trio.fail_after(10):
        async with open_pool(command, size=1) as pool:
            assert await pool.call("add", 2, 3) == 5
            assert await pool.call("add", 2, b=5) == 7  # protocol 1.1 over the bootstrap too
            reports: list[corral.Progress] = []
            async with pool.stream("count", 3, on_progress=reports.append) as chunks:
                assert [c async for c in chunks] == [0, 1, 2]
            assert [r.text for r in reports] == ["half"]


# -- against the server ----------------------------------------------------------------


async def test_worker_over_ssh_handshakes_and_serves(sshd: dict[str, str], reap: list[int]) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            worker = Worker(host(sshd, module=BASIC))
            await nursery.start(worker.run)
            assert worker.state is WorkerState.READY
            assert await worker.call("add", 2, 3) == 5
            assert await worker.call("echo", b"\x00\xff" * 1000) == b"\x00\xff" * 1000  # 8-bit clean
            with pytest.raises(RemoteError, match="nope"):
                await worker.call("boom", "nope")
            assert await worker.call("print_noise") == "quiet"  # prints cannot corrupt the channel
            remote = await worker.call("getpid")
            reap.append(remote)
            assert remote != worker.pid  # worker.pid is the local ssh client
            assert _stat(remote) is not None
            worker.stop()
        assert worker.info().state is WorkerState.STOPPED
        assert await wait_group_gone(remote) == []


async def test_pool_spreads_workers_over_hosts_by_weight(sshd: dict[str, str]) -> None:
    hosts = [host(sshd, env={"TAG": "a"}), host(sshd, env={"TAG": "b"}, weight=2)]
    with trio.fail_after(30):
        async with open_pool(BASIC, size=3, hosts=hosts) as pool:
            tags: list[str] = []
            leased = trio.Event()

            async def hold() -> None:
                async with pool.checkout() as lease:
                    tags.append(await lease.call("environ", "TAG"))
                    if len(tags) == 3:
                        leased.set()
                    await leased.wait()

            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(hold)
            assert sorted(tags) == ["a", "b", "b"]
            assert pool.statistics().circuit.count("closed") == 2


async def test_a_remote_pool_can_be_held_to_json(sshd: dict[str, str]) -> None:
    """codec="json": the parent never unpickles what a remote host sends."""
    with trio.fail_after(30):
        async with open_pool(BASIC, size=1, hosts=[host(sshd)], codec="json") as pool:
            assert await pool.call("echo", [1, "two"]) == [1, "two"]
            with pytest.raises(TypeError):
                await pool.run_sync(sorted, [2, 1])


async def test_killing_the_ssh_connection_mid_call(sshd: dict[str, str], reap: list[int]) -> None:
    """The call fails with WorkerCrashed; the remote worker and what it spawned are gone
    within 2 s; the replacement serves."""
    with trio.fail_after(30):
        async with open_pool(FAULTS, size=1, hosts=[host(sshd)]) as pool:
            remote = await pool.call("getpid")
            grandchild = await pool.call("spawn_grandchild")
            reap += [remote, grandchild]
            assert _stat(grandchild) == (remote, remote)  # in the worker's own group
            local = pool.workers()[0].pid
            assert local is not None

            async def kill_soon() -> None:
                await trio.sleep(0.3)
                os.kill(local, signal.SIGKILL)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(kill_soon)
                start = trio.current_time()
                with pytest.raises(WorkerCrashed) as info:
                    await pool.call("slow_echo", "x", 30)
                assert trio.current_time() - start < 5
            assert info.value.signal == "SIGKILL"
            assert await wait_gone([remote, grandchild], 2.0) == []
            assert await wait_group_gone(remote) == []
            replacement = await pool.call("getpid")
            assert replacement != remote and _stat(replacement) is not None
        assert await wait_group_gone(replacement) == []


async def test_a_silent_host_fails_the_call_within_the_keepalive_window(
    sshd: dict[str, str], reap: list[int]
) -> None:
    """A partition: the server stops answering (its sshd session is SIGSTOPped). The ssh
    client gives up after 3 keepalives; once the server side notices, the worker dies."""
    with trio.fail_after(30):
        async with open_pool(BASIC, size=1, hosts=[host(sshd, alive_interval=1)]) as pool:
            remote = await pool.call("getpid")
            reap.append(remote)
            session = _stat(remote)
            assert session is not None
            sshd_session = session[0]
            os.kill(sshd_session, signal.SIGSTOP)
            try:
                start = trio.current_time()
                with pytest.raises(WorkerCrashed):
                    await pool.call("sleep", 30)
                assert trio.current_time() - start < 10
            finally:
                os.kill(sshd_session, signal.SIGCONT)
            assert await wait_group_gone(remote, 5.0) == []
            assert await pool.call("getpid") != remote


async def test_a_host_that_refuses_opens_its_circuit(sshd: dict[str, str]) -> None:
    bad = host(sshd, port=closed_port())
    breaker = CircuitBreaker(threshold=2, cooldown=60)
    with trio.fail_after(30):
        async with open_pool(BASIC, size=4, hosts=[bad, host(sshd)], circuit_breaker=breaker) as pool:
            assert f"{bad.name}: open" in pool.statistics().circuit
            assert pool.circuit_state is corral.CircuitState.CLOSED  # the healthy host
            pids = {await pool.call("getpid") for _ in range(20)}
            assert len(pids) <= 4 and all(_stat(p) for p in pids)
            # A crash is replaced on the host that answers, not on the one whose circuit is open.
            async with pool.checkout() as lease:
                victim = await lease.call("getpid")
                os.kill(victim, signal.SIGKILL)
                with pytest.raises(WorkerCrashed):
                    await lease.call("getpid")
            while len(pool.workers()) < 4 or pool.statistics().workers_by_state["READY"] < 4:
                await trio.sleep(0.05)
            assert victim not in {await pool.call("getpid") for _ in range(20)}
            assert f"{bad.name}: open" in pool.statistics().circuit


async def test_closing_the_pool_leaves_no_remote_processes(sshd: dict[str, str], reap: list[int]) -> None:
    with trio.fail_after(30):
        async with open_pool(FAULTS, size=2, hosts=[host(sshd), host(sshd)]) as pool:
            remotes: set[int] = set()
            spawned: list[int] = []
            async with pool.checkout() as a, pool.checkout() as b:
                for lease in (a, b):
                    remotes.add(await lease.call("getpid"))
                    spawned.append(await lease.call("spawn_grandchild"))
            reap += [*remotes, *spawned]
            assert len(remotes) == 2
        assert await wait_gone([*remotes, *spawned], 2.0) == []
        for pgid in remotes:
            assert await wait_group_gone(pgid) == []


async def test_a_cancelled_call_replaces_the_ssh_worker(sshd: dict[str, str], reap: list[int]) -> None:
    """ssh cannot forward SIGINT: cancelling a call ends the connection and its worker."""
    with trio.fail_after(30):
        async with open_pool(BASIC, size=1, hosts=[host(sshd)]) as pool:
            remote = await pool.call("getpid")
            reap.append(remote)
            start = trio.current_time()
            with trio.move_on_after(0.3):
                await pool.call("sleep", 30)
            assert trio.current_time() - start < 1
            assert await wait_group_gone(remote) == []
            assert await pool.call("getpid") != remote


_PARENT = textwrap.dedent(
    """
    import os, sys, trio, corral
    from corral.workers._worker import Worker

    async def main():
        ssh = corral.SSH(sys.argv[1], options=["-F", sys.argv[2]], python=sys.argv[3],
                         cwd=sys.argv[4], module="tests.handlers_faults")
        async with trio.open_nursery() as nursery:
            worker = Worker(ssh)
            await nursery.start(worker.run)
            remote = await worker.call("getpid")
            grandchild = await worker.call("spawn_grandchild")
            print(worker.pid, remote, grandchild, flush=True)
            await worker.call("slow_echo", "x", 60)

    trio.run(main)
    """
)


async def test_a_crashed_parent_ends_the_remote_worker_mid_call(
    sshd: dict[str, str], reap: list[int]
) -> None:
    """SIGKILL the parent while its remote worker is busy: the worker never reads stdin
    again, yet it, its process group and the local ssh client are gone within 2 s."""
    args = [sshd["CORRAL_SSH_HOST"], sshd["CORRAL_SSH_CONFIG"], REMOTE_PYTHON, str(ROOT)]
    parent = await trio.lowlevel.open_process(
        [sys.executable, "-c", _PARENT, *args], stdout=subprocess.PIPE, cwd=str(ROOT)
    )
    assert parent.stdout is not None
    try:
        with trio.fail_after(20):
            line = await read_line(parent.stdout)
            local, remote, grandchild = (int(x) for x in line.split())
            reap += [remote, grandchild]
            assert alive(local) and alive(remote) and alive(grandchild)
            await trio.sleep(0.2)  # the long call is running
            parent.kill()
            await parent.wait()
            assert await wait_gone([local, remote, grandchild], 2.0) == []
            assert await wait_group_gone(remote) == []
    finally:
        with trio.CancelScope(shield=True):
            parent.kill()
            await parent.wait()
            await parent.stdout.aclose()


async def test_start_to_ready_over_ssh_is_bounded(sshd: dict[str, str]) -> None:
    """Not a benchmark: start-to-READY of local and ssh workers, printed for the record (-s)."""

    async def measure(launcher: Any) -> float:
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            worker = Worker(launcher)
            await nursery.start(worker.run)
            elapsed = time.perf_counter() - start
            worker.stop()
        return elapsed

    with trio.fail_after(30):
        local = min([await measure(corral.PythonModule(BASIC)) for _ in range(3)])
        remote = min([await measure(host(sshd, module=BASIC)) for _ in range(3)])
    print(f"start-to-READY: local {local * 1000:.0f} ms, ssh over loopback {remote * 1000:.0f} ms")
    assert remote < 5
