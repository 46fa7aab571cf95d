"""``corral run``: config validation, real processes under real supervisors, the CLI.

Every process check reads /proc (Linux): pids, process groups, zombies. No mocks.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

import corral
from corral.procman import (
    Config,
    Console,
    ProcessConfig,
    ProcessExited,
    ProcessTree,
    RotatingLog,
    SupervisorConfig,
    build_tree,
    load_config,
    loads_config,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "procman.toml"


# -- helpers -----------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """[state, ppid, pgrp, ...] of a process, or None when it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return data[data.rfind(")") + 2 :].split()


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def group_members(pgid: int) -> set[int]:
    """Live processes in process group ``pgid``."""
    found = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None and int(st[2]) == pgid and st[0] not in ("Z", "X"):
                found.add(int(name))
    return found


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


def config(tmp_path: Path, text: str) -> Config:
    return loads_config(text, base_dir=tmp_path, log_dir=tmp_path / "logs")


def log_text(tmp_path: Path, child_id: str) -> str:
    path = tmp_path / "logs" / f"{child_id}.log"
    return path.read_text() if path.exists() else ""


@asynccontextmanager
async def running(cfg: Config) -> AsyncIterator[tuple[ProcessTree, list[corral.SupervisorEvent]]]:
    tree = build_tree(cfg)
    events: list[corral.SupervisorEvent] = []
    for sup in tree.supervisors:
        sup.subscribe(events.append)
    async with trio.open_nursery() as nursery:
        await nursery.start(tree.root.run)
        try:
            yield tree, events
        finally:
            with trio.fail_after(10):
                await tree.root.stop()


def pids(tree: ProcessTree) -> dict[object, object]:
    return {info.id: info.value for info in tree.root.which_children()}


# -- configuration -----------------------------------------------------------------

OK_CHILD = 'id = "ok"\ncommand = ["true"]\n'

INVALID = [
    # (toml, field named, fragment of the message)
    ('[[child]]\nid = "a"\ncommand = "sleep 10"', "child[0].command", '["sleep", "10"]'),
    (
        f'[[child]]\n{OK_CHILD}[[child]]\nid = "b"\ncommand = ["true"]\n'
        '[[child]]\nid = "c"\ncommand = ["true"]\nrestart = "always"',
        "child[2].restart",
        "'permanent', 'transient', 'temporary'",
    ),
    ('[[child]]\nid = "a"\ncommand = ["true"]\nshutdown = -1', "child[0].shutdown", "brutal_kill"),
    ('[[child]]\nid = "a"\ncommand = ["true"]\nshutdown = "forever"', "child[0].shutdown", "infinity"),
    ('[[child]]\ncommand = ["true"]', "child[0].id", "missing"),
    ('[[child]]\nid = "a b"\ncommand = ["true"]', "child[0].id", "log file"),
    ('[[child]]\nid = "a"\ncommand = []', "child[0].command", "non-empty list"),
    ('[[child]]\nid = "a"\ncommand = ["true"]\nrestrat = "temporary"', "child[0].restrat", "unknown key"),
    (
        '[[child]]\nid = "a"\ncommand = ["true"]\nsignificant = true',
        "child[0].significant",
        "permanent child cannot be significant",
    ),
    (
        '[[child]]\nid = "a"\ncommand = ["true"]\nrestart = "transient"\nsignificant = true',
        "child[0].significant",
        "auto_shutdown",
    ),
    ('[[child]]\nid = "a"\ncommand = ["true"]\nstop_signal = "SIGFOO"', "child[0].stop_signal", "SIGTERM"),
    ('[[child]]\nid = "a"\ncommand = ["true"]\nenv = { PORT = 8080 }', "child[0].env.PORT", "quote it"),
    ('[[child]]\nid = "a"\ncommand = ["no-such-program-xyz"]', "child[0].command[0]", "not found on PATH"),
    ('[[child]]\nid = "a"\ncommand = ["true"]\ncwd = "nowhere"', "child[0].cwd", "not a directory"),
    ('[[child]]\nid = "a"', "child[0].command", "missing"),
    ('[supervisor]\nstrategy = "one_for_some"', "supervisor.strategy", "'rest_for_one'"),
    ("[supervisor]\nmax_seconds = 0", "supervisor.max_seconds", "> 0"),
    ("[supervisor]\nmax_restarts = -1", "supervisor.max_restarts", ">= 0"),
    ("[supervisor]\nbackoff = { jitter = 2 }", "supervisor.backoff.jitter", "[0, 1]"),
    ("[supervisor]\nbackoff = { start = 1 }", "supervisor.backoff.start", "unknown key"),
    ("[supervisor]\nlog_max_bytes = 0", "supervisor.log_max_bytes", ">= 1"),
    ("[supervisor]\ncolour = true", "supervisor.colour", "unknown key"),
    (f'[[child]]\n{OK_CHILD}[[process]]\nid = "p"\ncommand = ["true"]', "process", "not both"),
    (
        f'[[child]]\n{OK_CHILD}[[child]]\nid = "sub"\ntype = "supervisor"\n'
        '[[child.child]]\nid = "ok"\ncommand = ["true"]',
        "child[1].child[0].id",
        "duplicate id 'ok' (already used at child[0])",
    ),
    (
        '[[child]]\nid = "sub"\ntype = "supervisor"\nstrategy = "all_for_one"',
        "child[0].strategy",
        "one_for_all",
    ),
    (
        '[[child]]\nid = "sub"\ntype = "supervisor"\n[[child.child]]\nid = "x"\ncommand = ["true"]\n'
        'restart = "temporary"\nsignificant = true',
        "child[0].child[0].significant",
        "auto_shutdown",
    ),
    ('[[child]]\nid = "sub"\ntype = "daemon"', "child[0].type", '"supervisor"'),
    ('[[child]]\nid = "a"\ncommand = ["true"]\nstrategy = "one_for_all"', "child[0].strategy", "unknown"),
    ("[[child]\n", "toml", "not valid TOML"),
    ('[[supervisor]]\nstrategy = "one_for_all"', "supervisor", 'type = "supervisor"'),
]


@pytest.mark.parametrize(("text", "field", "fragment"), INVALID)
def test_invalid_configs_name_the_field(tmp_path: Path, text: str, field: str, fragment: str) -> None:
    with pytest.raises(corral.InvalidSpec) as info:
        config(tmp_path, text)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert fragment in str(info.value)


def test_the_example_parses_into_the_tree_it_describes() -> None:
    cfg = load_config(EXAMPLE)
    root = cfg.root
    assert root.name == "procman-example"
    assert root.strategy is corral.Strategy.ONE_FOR_ONE
    assert root.backoff == corral.Backoff(initial=0.5, maximum=4, multiplier=2)
    assert [c.id for c in root.children] == ["migrate", "pipeline", "flaky", "stubborn"]
    pipeline = root.children[1]
    assert isinstance(pipeline, SupervisorConfig)
    assert pipeline.strategy is corral.Strategy.REST_FOR_ONE
    assert pipeline.shutdown == corral.INFINITY
    assert [c.id for c in pipeline.children] == ["source", "sink"]
    migrate, stubborn = root.children[0], root.children[3]
    assert isinstance(migrate, ProcessConfig) and migrate.restart is corral.Restart.TEMPORARY
    assert isinstance(stubborn, ProcessConfig) and stubborn.shutdown == 1.0
    assert cfg.logs.dir == EXAMPLE.parent / "logs"
    assert (cfg.logs.max_bytes, cfg.logs.backups) == (1_000_000, 3)


def test_option_spellings(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    cfg = config(
        tmp_path,
        """
        [supervisor]
        auto_shutdown = "any_significant"
        [[process]]
        id = "a"
        command = ["true"]
        shutdown = "brutal_kill"
        stop_signal = "int"
        cwd = "work"
        restart = "transient"
        significant = true
        [[process]]
        id = "b"
        command = ["true"]
        shutdown = "infinity"
        stop_signal = "SIGQUIT"
        """,
    )
    a, b = cfg.root.children
    assert isinstance(a, ProcessConfig) and isinstance(b, ProcessConfig)
    assert b.cwd == str(tmp_path)  # by default: the config file's folder
    assert (a.shutdown, a.stop_signal, a.cwd) == (0.0, signal.SIGINT, str(tmp_path / "work"))
    assert (b.shutdown, b.stop_signal) == (corral.INFINITY, signal.SIGQUIT)


def test_rotating_log_keeps_the_configured_backups(tmp_path: Path) -> None:
    log = RotatingLog(tmp_path / "x.log", max_bytes=200, backups=2)
    for i in range(60):
        log.write_lines([f"line {i:03d}"], "out")
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["x.log", "x.log.1", "x.log.2"]
    assert all(p.stat().st_size <= 200 for p in tmp_path.iterdir())
    assert "line 059" in (tmp_path / "x.log").read_text()
    assert "line 000" not in "".join(p.read_text() for p in tmp_path.iterdir())


def test_rotating_log_without_backups_starts_over_and_counts_bytes(tmp_path: Path) -> None:
    log = RotatingLog(tmp_path / "x.log", max_bytes=120, backups=0)
    for i in range(40):
        log.write_lines([f"{i:02d} h\u00e9h\u00e9 \u65e5\u672c"], "err")  # 2- and 3-byte characters
    log.close()
    log.write_lines(["after close"], "out")  # dropped
    assert [p.name for p in tmp_path.iterdir()] == ["x.log"]
    data = (tmp_path / "x.log").read_bytes()
    assert 0 < len(data) <= 120 and data.endswith("39 h\u00e9h\u00e9 \u65e5\u672c\n".encode())
    assert b"after close" not in data


def test_console_marks_stderr_lines_as_the_log_does(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    console = Console(out, err, width=4)
    log = RotatingLog(tmp_path / "web.log", max_bytes=10_000, backups=1, console=console)
    log.write_lines(["hello"], "out")
    log.write_lines(["oops"], "err")
    log.write_lines(["started pid 1: x"], "---")  # corral's notes stay in the file
    log.close()
    console.say("web started (pid 1)")
    assert [line[9:] for line in out.getvalue().splitlines()] == ["web    | hello", "web    | err oops"]
    assert err.getvalue()[9:] == "corral | web started (pid 1)\n"
    logged = [line[24:] for line in (tmp_path / "web.log").read_text().splitlines()]
    assert logged == ["out hello", "err oops", "--- started pid 1: x"]


def test_cattrs_is_imported_only_to_load_a_config() -> None:
    code = (
        "import sys, corral, corral.procman; assert 'cattrs' not in sys.modules; "
        "corral.procman.loads_config(''); assert 'cattrs' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=20)


# -- real processes under real supervisors -------------------------------------------


async def test_a_crashing_permanent_child_is_restarted_and_its_output_logged(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        """
        [supervisor]
        max_restarts = 20
        [[child]]
        id = "crashy"
        command = ["sh", "-c", "echo \\"hi $$ $CORRAL_CHILD_ID $GREETING\\"; echo oops >&2; sleep .2; exit 7"]
        env = { GREETING = "hi there" }
        """,
    )
    with trio.fail_after(10):
        async with running(cfg) as (tree, events):
            first = pids(tree)["crashy"]
            assert isinstance(first, int)
            await wait_until(lambda: any(isinstance(e, corral.ChildStarted) and e.restart for e in events))
            second = pids(tree)["crashy"]
            assert isinstance(second, int) and second != first
            info = tree.root.which_children()[0]
            assert info.restarts >= 1 and info.last_exit is not None
            exc = info.last_exit.exception
            assert isinstance(exc, ProcessExited) and (exc.code, exc.signal) == (7, None)
            assert str(exc) == "exit code 7"
            await wait_until(lambda: f"hi {second} " in log_text(tmp_path, "crashy"))
    text = log_text(tmp_path, "crashy")
    assert f"out hi {first} crashy hi there\n" in text
    assert "err oops\n" in text
    assert "--- exited: exit code 7\n" in text
    assert f"--- started pid {second}: sh -c" in text
    assert not alive(first) and not alive(second)


async def test_rest_for_one_with_real_processes(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        """
        [supervisor]
        strategy = "rest_for_one"
        [[child]]
        id = "a"
        command = ["sleep", "100"]
        [[child]]
        id = "b"
        command = ["sleep", "100"]
        [[child]]
        id = "c"
        command = ["sleep", "100"]
        """,
    )
    with trio.fail_after(10):
        async with running(cfg) as (tree, events):
            before = pids(tree)
            del events[:]
            os.kill(before["b"], signal.SIGKILL)  # type: ignore[arg-type]
            await wait_until(lambda: sum(isinstance(e, corral.ChildStarted) for e in events) == 2)
            after = pids(tree)
            assert after["a"] == before["a"]
            assert after["b"] != before["b"] and after["c"] != before["c"]
            assert not alive(before["c"])  # type: ignore[arg-type]
            story = [
                (type(e).__name__, getattr(e, "child_id", None))
                for e in events
                if isinstance(e, corral.ChildExited | corral.ChildStarted)
            ]
            assert story == [
                ("ChildExited", "b"),
                ("ChildExited", "c"),
                ("ChildStarted", "b"),
                ("ChildStarted", "c"),
            ]
            crash = events[0]
            assert isinstance(crash, corral.ChildExited) and not crash.requested
            assert str(crash.exit.exception) == "killed by SIGKILL"
            bystander = next(e for e in events if isinstance(e, corral.ChildExited) and e.child_id == "c")
            assert bystander.requested


async def test_stop_is_graceful_when_the_command_handles_sigterm(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        """
        [[child]]
        id = "polite"
        command = ["sh", "-c", "trap 'echo bye; exit 0' TERM; echo ready; while true; do sleep 0.05; done"]
        shutdown = 5
        """,
    )
    with trio.fail_after(10):
        async with running(cfg) as (tree, _):
            pid = pids(tree)["polite"]
            assert isinstance(pid, int)
            await wait_until(lambda: "out ready" in log_text(tmp_path, "polite"))
            started = trio.current_time()
            await tree.root.stop()
            assert trio.current_time() - started < 2.0
            info = tree.root.which_children()[0]
    assert info.last_exit is not None and info.last_exit.reason == "shutdown"
    assert str(info.last_exit.exception) == "stopped: exit code 0"
    text = log_text(tmp_path, "polite")
    assert "--- stop requested: SIGTERM to the process group\n" in text
    assert "out bye\n" in text
    assert "SIGKILL" not in text
    assert group_members(pid) == set()


async def test_a_command_ignoring_sigterm_is_killed_after_its_grace(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        """
        [[child]]
        id = "stubborn"
        command = ["sh", "-c", "trap '' TERM; sleep 100 & sleep 100 & echo ready; wait"]
        shutdown = 0.5
        """,
    )
    with trio.fail_after(10):
        async with running(cfg) as (tree, _):
            pid = pids(tree)["stubborn"]
            assert isinstance(pid, int)
            await wait_until(lambda: "out ready" in log_text(tmp_path, "stubborn"))
            members = group_members(pid)
            assert len(members) == 3  # sh and its two sleeps, all in the child's own group
            started = trio.current_time()
            await tree.root.stop()
            elapsed = trio.current_time() - started
    assert 0.5 <= elapsed < 2.0
    assert group_members(pid) == set()
    assert not any(alive(p) for p in members)
    text = log_text(tmp_path, "stubborn")
    assert f"--- SIGKILL to the process group (pid {pid})\n" in text
    assert "--- exited: killed by SIGKILL\n" in text


async def test_no_orphans_when_the_leader_exits_or_the_tree_is_cancelled(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        """
        [[child]]
        id = "leaver"
        command = ["sh", "-c", "sleep 100 & echo left; exit 0"]
        restart = "temporary"
        [[child]]
        id = "tree"
        command = ["sh", "-c", "sleep 100 & sleep 100 & echo ready; wait"]
        shutdown = "infinity"
        """,
    )
    tree_ = build_tree(cfg)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(tree_.root.run)
            first = {info.id: info.value for info in tree_.root.which_children()}
            leaver, holder = first["leaver"], first["tree"]
            assert isinstance(leaver, int) and isinstance(holder, int)
            # The leader exited normally: what it left in its group is killed with it.
            await wait_until(lambda: "--- exited: exit code 0" in log_text(tmp_path, "leaver"))
            await wait_until(lambda: group_members(leaver) == set(), timeout=2)
            await wait_until(lambda: "out ready" in log_text(tmp_path, "tree"))
            assert len(group_members(holder)) == 3
            # Cancelled from outside (no graces, even with shutdown = infinity): SIGKILL.
            nursery.cancel_scope.cancel()
    assert group_members(holder) == set()
    assert "--- SIGKILL to the process group" in log_text(tmp_path, "tree")


async def test_a_nested_supervisor_escalates_and_is_restarted(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        """
        [supervisor]
        max_restarts = 5
        [[child]]
        id = "steady"
        command = ["sleep", "100"]
        [[child]]
        id = "inner"
        type = "supervisor"
        max_restarts = 1
        max_seconds = 5
          [[child.child]]
          id = "boom"
          command = ["sh", "-c", "exit 1"]
        """,
    )
    with trio.fail_after(10):
        async with running(cfg) as (tree, events):
            steady = pids(tree)["steady"]
            await wait_until(
                lambda: any(
                    isinstance(e, corral.ChildExited)
                    and e.child_id == "inner"
                    and isinstance(e.exit.exception, corral.RestartIntensityExceeded)
                    for e in events
                )
            )
            assert pids(tree)["steady"] == steady  # one_for_one at the root


async def test_a_command_that_cannot_start_fails_the_tree_start(tmp_path: Path) -> None:
    script = tmp_path / "prog"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    cfg = config(tmp_path, '[[child]]\nid = "p"\ncommand = ["./prog"]\n')
    script.chmod(0o644)  # no longer executable: spawning fails before started()
    tree = build_tree(cfg)
    with trio.fail_after(5), pytest.raises(corral.ChildStartError) as info:
        await tree.root.run()
    assert isinstance(info.value.__cause__, PermissionError)
    assert "cannot start ./prog" in log_text(tmp_path, "p")


# -- the command line --------------------------------------------------------------


def corral_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "corral", *args]


def test_cli_check_and_invalid_config(tmp_path: Path) -> None:
    ok = subprocess.run(
        corral_cmd("run", "--check", str(EXAMPLE)), capture_output=True, text=True, timeout=20
    )
    assert ok.returncode == 0, ok.stderr
    assert "rest_for_one" in ok.stdout and "- stubborn [permanent, shutdown 1 s, SIGTERM]" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[[child]]\nid = "a"\ncommand = "sleep 1"\n')
    res = subprocess.run(corral_cmd("run", str(bad)), capture_output=True, text=True, timeout=20)
    assert res.returncode == 2
    assert "child[0].command: must be a list of strings" in res.stderr
    helped = subprocess.run(corral_cmd("run", "--help"), capture_output=True, text=True, timeout=20)
    assert helped.returncode == 0 and "[[child.child]]" in helped.stdout


def test_a_config_that_is_not_utf8_is_refused_clearly(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('# café\n[[child]]\nid = "a"\ncommand = ["true"]\n'.encode("latin-1"))
    for args in (("run", "--check", str(latin1)), ("run", str(latin1))):
        res = subprocess.run(corral_cmd(*args), capture_output=True, text=True, timeout=20)
        assert res.returncode == 2, res.stderr
        assert "is not UTF-8 text" in res.stderr and "Traceback" not in res.stderr, res.stderr


@asynccontextmanager
async def cli(tmp_path: Path, *args: str) -> AsyncIterator[tuple[trio.Process, Path, Path]]:
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with open(out, "wb") as fout, open(err, "wb") as ferr:  # noqa: ASYNC230 - test setup
        proc = await trio.lowlevel.open_process(
            corral_cmd("run", "--log-dir", str(tmp_path / "logs"), *args),
            stdout=fout,
            stderr=ferr,
            cwd=str(ROOT),
        )
    try:
        yield proc, out, err
    finally:
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


def started_pids(logs: Path) -> set[int]:
    found = set()
    for path in logs.glob("*.log*"):
        for line in path.read_text().splitlines():
            if " --- started pid " in line:
                found.add(int(line.split(" --- started pid ")[1].split(":")[0]))
    return found


async def test_cli_runs_the_example_and_stops_in_order_on_sigint(tmp_path: Path) -> None:
    async with cli(tmp_path, str(EXAMPLE)) as (proc, out, err):
        await wait_until(lambda: "stubborn started" in err.read_text(), timeout=10)
        await wait_until(lambda: "flaky restarted" in err.read_text(), timeout=10)
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            rc = await proc.wait()
    messages = err.read_text()
    assert rc == 0, messages
    assert "SIGINT: stopping the tree in reverse order" in messages
    assert messages.rstrip().endswith("all stopped")
    # reverse start order: stubborn, flaky, then the pipeline (sink before source)
    tail = messages[messages.index("SIGINT") :]
    order = [tail.index(f"| {name} exited") for name in ("stubborn", "flaky", "sink", "source", "pipeline")]
    assert order == sorted(order), tail
    assert "stubborn exited: SIGKILL to the process group (shutdown grace over) (stopped)" in tail
    assert "restarting flaky in" in messages
    assert "migrate  | migrated" in out.read_text()
    assert "out tick 1" in (tmp_path / "logs" / "source.log").read_text()
    children = started_pids(tmp_path / "logs")
    assert len(children) >= 6
    assert not any(alive(p) for p in children)


async def test_cli_sigterm_exits_0_and_a_tree_that_gives_up_exits_1(tmp_path: Path) -> None:
    steady = tmp_path / "steady.toml"
    steady.write_text('[[child]]\nid = "s"\ncommand = ["sleep", "100"]\n')
    async with cli(tmp_path, str(steady)) as (proc, _, err):
        await wait_until(lambda: "s started" in err.read_text(), timeout=10)
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(5):
            assert await proc.wait() == 0
    doomed = tmp_path / "doomed.toml"
    doomed.write_text(
        '[supervisor]\nmax_restarts = 1\n[[child]]\nid = "d"\ncommand = ["sh", "-c", "exit 1"]\n'
    )
    async with cli(tmp_path, "-q", str(doomed)) as (proc, _, err):
        with trio.fail_after(10):
            assert await proc.wait() == 1
    assert "giving up: supervisor 'doomed': more than 1 restart(s)" in err.read_text()
    assert not any(alive(p) for p in started_pids(tmp_path / "logs"))


def test_pids_are_reaped_quickly() -> None:
    # Sanity check of the /proc helpers used above.
    proc = subprocess.Popen(["sleep", "100"], process_group=0)
    try:
        assert alive(proc.pid) and group_members(proc.pid) == {proc.pid}
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 2
    while alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not alive(proc.pid)


def test_the_docs_show_the_example_as_it_is() -> None:
    doc = (ROOT / "docs" / "procman.md").read_text()
    assert f"```toml\n{EXAMPLE.read_text()}```" in doc
