"""``corral run``'s reload when things go wrong around it: a reload into a nested
supervisor that is down, restarting or waiting out its backoff, a reload during a
group restart's backoff, Ctrl-C or a stop during a reload, a config given through a
symlink, two ``corral run`` starting at once (docs/procman.md, "Reloading").

Each test states a documented promise (or an operator's obvious expectation). They are
bounded (``trio.fail_after`` / ``timeout=``) and kill only the processes they start.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

import corral
from corral.procman import Console
from corral.procman._reload import diff
from corral.procman._serve import serve
from corral.procman._tree import ProcessTree
from tests.test_procman import alive, config, corral_cmd, log_text, running, wait_until
from tests.test_procman_reload import corral_run, sleeper, toml

if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip("reads /proc")


def ids(sup: corral.Supervisor) -> list[object]:
    return [info.id for info in sup.which_children()]


# -- reloads into a nested supervisor that is not running ----------------------------

NOT_RUNNING = """
[[child]]
id = "a"
command = ["sleep", "100"]
[[child]]
id = "p"
type = "supervisor"
restart = "temporary"
auto_shutdown = "any_significant"
  [[child.child]]
  id = "once"
  command = ["true"]
  restart = "temporary"
  significant = true
"""

WITH_S = (
    NOT_RUNNING
    + """  [[child.child]]
  id = "s"
  type = "supervisor"
    [[child.child.child]]
    id = "s1"
    command = ["sleep", "100"]
"""
)


async def test_every_reload_leaves_a_supervisor_whose_parent_is_down_to_the_file(tmp_path: Path) -> None:
    """Docs: "A nested supervisor that is not running (a temporary one that ended, ...)
    is left alone: it starts from the new file when it starts". A first reload adds a
    nested supervisor s into such a p (a note); a second reload that changes a child of
    s, which has never run, leaves it alone too, and the note names p, the one that is
    down (s has no supervisor object yet: looking it up was a KeyError)."""
    with trio.fail_after(15):
        async with running(config(tmp_path, NOT_RUNNING)) as (tree, _):
            await wait_until(lambda: not tree.nested["p"].running)  # p shut itself down
            first = config(tmp_path, WITH_S)
            assert await tree.apply(diff(tree.config, first), first) == [
                "p is not running: it will start as the file says"
            ]
            second = config(tmp_path, WITH_S.rsplit('["sleep", "100"]', 1)[0] + '["sleep", "99"]\n')
            outcomes = await tree.apply(diff(tree.config, second), second)
            assert outcomes == ["p is not running: it will start as the file says"]


async def test_a_second_reload_into_a_supervisor_that_is_down_keeps_corral_running(tmp_path: Path) -> None:
    """The same, driven by SIGHUP: ``corral run`` runs on and its command a is untouched
    (the KeyError ended the reload task, and with it the whole tree)."""
    async with corral_run(tmp_path, NOT_RUNNING, "a") as run:
        await run.wait_for("| p exited")
        a = run.pids()["a"]
        await run.reload(WITH_S)
        assert "| reload: p is not running: it will start as the file says\n" in run.text()
        run.app.write_text(WITH_S.rsplit('["sleep", "100"]', 1)[0] + '["sleep", "99"]\n')
        run.proc.send_signal(signal.SIGHUP)
        with trio.move_on_after(5):
            await run.proc.wait()
        assert run.proc.returncode is None, run.text()[-1500:]  # still running ...
        assert alive(a)  # ... and a untouched


async def test_a_reload_that_raises_is_reported_and_the_tree_runs_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever goes wrong inside a reload, ``corral run`` says so and runs on: a reload
    must never bring the tree down."""

    async def broken(self: ProcessTree, plan: object, config: object) -> list[str]:
        raise RuntimeError("a bug in the reload")

    monkeypatch.setattr(ProcessTree, "apply", broken)
    app = tmp_path / "app.toml"
    app.write_text(toml(sleeper("a")))
    tree = corral.procman.build_tree(corral.procman.load_config(app))
    err = io.StringIO()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            status: list[int] = []

            async def run() -> None:
                status.append(await serve(tree, Console(io.StringIO(), err, width=1)))

            nursery.start_soon(run)
            await wait_until(lambda: "a started" in err.getvalue())
            os.kill(os.getpid(), signal.SIGHUP)
            await wait_until(lambda: "reload failed" in err.getvalue())
            assert tree.root.running
            os.kill(os.getpid(), signal.SIGTERM)
    assert status == [0]
    assert "reload failed: RuntimeError('a bug in the reload'); the tree runs on\n" in err.getvalue()


# -- Ctrl-C during a reload's stop ----------------------------------------------------


async def test_sigint_during_a_reload_stop_honours_the_stopping_childs_grace(tmp_path: Path) -> None:
    """Docs: "Ctrl-C (or SIGTERM) during a reload interrupts it and stops the tree as
    ever" and "first Ctrl-C: orderly stop of the whole tree, reverse order, graces
    honoured". A command being stopped by the reload (it needs 1 s after its SIGTERM,
    its grace is 10 s) keeps its grace: the reload finishes that step, does no more,
    and the tree stops (cancelling the step would SIGKILL the command at once)."""
    db = (
        'id = "db"\ncommand = ["sh", "-c", "trap \'sleep 1; echo clean; exit 0\' TERM; echo up; '
        'while :; do sleep 0.05; done"]\nshutdown = 10'
    )
    async with corral_run(tmp_path, toml(sleeper("a"), db), "a db") as run:
        await wait_until(lambda: "out up" in log_text(tmp_path, "db"))
        run.app.write_text(toml(sleeper("a")))
        run.proc.send_signal(signal.SIGHUP)
        await wait_until(lambda: "stop requested" in log_text(tmp_path, "db"))
        await trio.sleep(0.2)
        run.proc.send_signal(signal.SIGINT)
        assert await run.proc.wait() == 0
    db_log = log_text(tmp_path, "db")
    assert "SIGKILL" not in db_log, db_log
    assert "out clean" in db_log


# -- a nested supervisor restarting during a reload -----------------------------------


async def test_a_nested_supervisor_restarted_during_a_reload_keeps_what_it_started(tmp_path: Path) -> None:
    """A reload adds x to nested supervisor s and removes slow (elsewhere, 2 s to stop).
    While slow stops, s escalates once and its parent restarts it: it is built from the
    new file, so x starts then. The reload's own "start x" is then done already: it must
    not fail (AlreadyPresent), report "could not start x" and drop x from the tree's
    config while x runs (a later file without x would say "no changes" and leave x
    running, a command the file does not have)."""
    crash_once = "if [ -e crashed ]; then exec sleep 100; fi; touch crashed; sleep 0.7; exit 1"
    old_text = f"""
[supervisor]
max_restarts = 10
[[child]]
id = "s"
type = "supervisor"
max_restarts = 0
  [[child.child]]
  id = "c"
  command = ["sh", "-c", "{crash_once}"]
[[child]]
id = "t"
type = "supervisor"
  [[child.child]]
  id = "slow"
  command = ["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"]
  shutdown = 2
"""
    new_text = old_text.split('[[child]]\nid = "t"')[0] + (
        '  [[child.child]]\n  id = "x"\n  command = ["sleep", "100"]\n'
        '[[child]]\nid = "t"\ntype = "supervisor"\n'
    )
    new = config(tmp_path, new_text)
    assert [s.text() for s in diff(config(tmp_path, old_text), new).steps] == ["stopped slow", "started x"]
    with trio.fail_after(20):
        async with running(config(tmp_path, old_text)) as (tree, _):
            await wait_until(lambda: "out ready" in log_text(tmp_path, "slow"))
            outcomes = await tree.apply(diff(tree.config, new), new)
            running_in_s = ids(tree.nested["s"])
            in_config = [p.id for p in tree.config.processes()]
            assert outcomes == ["stopped slow", "started x"], (outcomes, running_in_s, in_config)
            assert "x" in in_config and "x" in running_in_s  # the tree runs x, and says so


# -- the config given through a symlink (a release switch) --------------------------


def test_reload_through_a_symlinked_config_reaches_the_corral_run_of_the_link(tmp_path: Path) -> None:
    """An operator runs ``corral run current.toml`` where current.toml is a symlink to
    releases/v1/app.toml, switches the symlink to v2 and runs ``corral run --reload
    current.toml``: the very path the instance was started with, and the path its
    SIGHUP reads again, so the instance reloads v2. The pid file names the path as
    given (absolute, the link kept), not the file it pointed to at the start."""
    logs = tmp_path / "logs"
    for version, children in (("v1", ("a",)), ("v2", ("a", "b"))):
        folder = tmp_path / "releases" / version
        folder.mkdir(parents=True)
        (folder / "app.toml").write_text(
            f'[supervisor]\nlog_dir = "{logs}"\n' + toml(*(sleeper(c) for c in children))
        )
    current = tmp_path / "current.toml"
    current.symlink_to(tmp_path / "releases" / "v1" / "app.toml")
    err = tmp_path / "stderr"
    with open(err, "wb") as ferr:
        proc = subprocess.Popen(corral_cmd("run", "-q", "current.toml"), cwd=tmp_path, stderr=ferr)
    try:
        deadline = time.monotonic() + 15
        while "a started" not in err.read_text():
            assert time.monotonic() < deadline and proc.poll() is None, err.read_text()
            time.sleep(0.05)
        current.unlink()
        current.symlink_to(tmp_path / "releases" / "v2" / "app.toml")
        sent = subprocess.run(
            corral_cmd("run", "--reload", "current.toml"),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert sent.returncode == 0, sent.stderr
        deadline = time.monotonic() + 15
        while "| reload: " not in err.read_text():
            assert time.monotonic() < deadline and proc.poll() is None, err.read_text()
            time.sleep(0.05)
        assert "started b" in err.read_text()
        # The file the link pointed to at the start is not the one a SIGHUP reads now.
        other = subprocess.run(
            corral_cmd("run", "--reload", "releases/v1/app.toml"),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert other.returncode == 1 and f"runs {current}, not " in other.stderr, other.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# -- two corral run starting together --------------------------------------------------


CLAIM_AT = """
import sys, time
from pathlib import Path
from corral.procman._control import PidFileBusy, claim
at = float(sys.argv[2])
while time.time() < at:
    pass
try:
    claim(Path(sys.argv[1]), Path("/x/app.toml"))
    print("claimed", flush=True)
except PidFileBusy:
    print("busy", flush=True)
time.sleep(1)  # stay alive: a claim by a live process must refuse the other
"""


def test_of_two_corral_run_started_together_with_one_log_dir_one_is_refused(tmp_path: Path) -> None:
    """Docs: "A second corral run with the same log directory is refused (status 1)
    while the first runs", also when both start at the same moment: reading the pid file
    and then writing one's own would let both read "nobody" and both run, on the same
    log files (two real ``corral run app.toml`` started together did, 1 in 6 tries)."""
    both = 0
    for round in range(10):
        path = tmp_path / f"r{round}" / "corral.pid"
        at = time.time() + 0.7
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", CLAIM_AT, str(path), str(at)], stdout=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        got = [p.communicate(timeout=20)[0].strip() for p in procs]
        both += got == ["claimed", "claimed"]
    assert both == 0, f"{both} of 10 rounds let both claim the same pid file"


# -- rest_for_one: a reload while the group waits for its backoff --------------------


async def test_reload_during_a_rest_for_one_backoff_keeps_the_start_order(tmp_path: Path) -> None:
    """rest_for_one [a, b, c] with a backoff: a crashes, b and c are stopped, all three
    wait for a's restart. A reload that changes c starts c at once, before a and b
    (which it depends on, by rest_for_one), and a's restart then starts a and b after
    it: c is never started after its predecessors."""
    crash_once = "if [ -e crashed ]; then exec sleep 100; fi; touch crashed; exit 1"
    text = f"""
[supervisor]
strategy = "rest_for_one"
backoff = {{ initial = 1.0, maximum = 1.0, jitter = 0 }}
[[child]]
id = "a"
command = ["sh", "-c", "{crash_once}"]
[[child]]
id = "b"
command = ["sleep", "100"]
[[child]]
id = "c"
command = ["sleep", "100"]
"""
    new = config(
        tmp_path, text.replace('id = "c"\ncommand = ["sleep", "100"]', 'id = "c"\ncommand = ["sleep", "99"]')
    )
    with trio.fail_after(15):
        async with running(config(tmp_path, text)) as (tree, events):
            await wait_until(lambda: any(isinstance(e, corral.ChildRestarting) for e in events))
            assert await tree.apply(diff(tree.config, new), new) == ["restarted c (command changed)"]
            await wait_until(lambda: all(i.value is not None for i in tree.root.which_children()))
            mark = max(i for i, e in enumerate(events) if isinstance(e, corral.ChildRestarting))
            order = [e.child_id for e in events[mark:] if isinstance(e, corral.ChildStarted)]
            assert order == ["a", "b", "c"], order


# -- a SIGHUP as corral run finishes its stop -----------------------------------------


def test_a_sighup_while_corral_run_stops_does_not_kill_it(tmp_path: Path) -> None:
    """Docs: SIGHUP reloads, "the tree runs on"; a SIGHUP during the stop is "ignored:
    the tree is stopping". Also once the signal receiver is gone: trio hands the signals
    still pending back when it closes (after the tree stopped), and Python resets its
    handlers as it exits; SIGHUP's default action would kill corral run instead of its
    exiting 0 with "all stopped" (an operator's reload racing a systemd stop)."""
    (tmp_path / "app.toml").write_text(toml(sleeper("a")))
    killed = 0
    for _ in range(5):
        err = tmp_path / "stderr"
        with open(err, "wb") as ferr:
            proc = subprocess.Popen(corral_cmd("run", "-q", "app.toml"), cwd=tmp_path, stderr=ferr)
        try:
            deadline = time.monotonic() + 15
            while "a started" not in err.read_text():
                assert time.monotonic() < deadline and proc.poll() is None, err.read_text()
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 15
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    proc.send_signal(signal.SIGHUP)
                except ProcessLookupError:
                    break
                time.sleep(0.0005)
            killed += proc.wait(timeout=15) == -signal.SIGHUP
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert killed == 0, f"corral run died by SIGHUP in {killed} of 5 stops"


# -- removing a nested supervisor that waits for its restart ---------------------------


async def test_removing_a_backing_off_nested_supervisor_does_not_bring_the_tree_down(tmp_path: Path) -> None:
    """s escalated and waits 0.5 s (root backoff) for its restart; a reload removes s and
    slow (2 s to stop, stopped first: reverse order). While slow stops, s's restart timer
    fires, and s is no longer in the tree's config: its restart must not fail (each
    failed attempt is a counted restart, the root would give up and corral run exit 1
    with every command stopped, for a reload that only removed two children)."""
    crash = "if [ -e crashed ]; then exec sleep 100; fi; touch crashed; sleep 0.2; exit 1"  # once
    old_text = f"""
[supervisor]
max_restarts = 3
max_seconds = 10
backoff = {{ initial = 0.5, maximum = 0.5, jitter = 0 }}
[[child]]
id = "keep"
command = ["sleep", "100"]
[[child]]
id = "s"
type = "supervisor"
max_restarts = 0
  [[child.child]]
  id = "c"
  command = ["sh", "-c", "{crash}"]
[[child]]
id = "t"
type = "supervisor"
  [[child.child]]
  id = "slow"
  command = ["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"]
  shutdown = 2
"""
    new = config(
        tmp_path,
        "[supervisor]\nmax_restarts = 3\nmax_seconds = 10\n"
        "backoff = { initial = 0.5, maximum = 0.5, jitter = 0 }\n"
        '[[child]]\nid = "keep"\ncommand = ["sleep", "100"]\n'
        '[[child]]\nid = "t"\ntype = "supervisor"\n',
    )
    tree = corral.procman.build_tree(config(tmp_path, old_text))
    events: list[corral.SupervisorEvent] = []
    tree.subscribe(events.append)
    outcome: list[object] = []

    async def run_root() -> None:
        try:
            await tree.root.run()
            outcome.append("stopped")
        except corral.RestartIntensityExceeded as exc:
            outcome.append(exc)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_root)
            await wait_until(
                lambda: any(isinstance(e, corral.ChildRestarting) and e.child_id == "s" for e in events)
            )
            await wait_until(lambda: "out ready" in log_text(tmp_path, "slow"))
            steps = [s.text() for s in diff(tree.config, new).steps]
            assert steps == ["stopped slow", "stopped s"]
            await tree.apply(diff(tree.config, new), new)
            await trio.sleep(0.5)
            still = tree.root.running
            failed = [e for e in events if isinstance(e, corral.RestartFailed)]
            await tree.root.stop()
    assert still and not failed and outcome == ["stopped"], (outcome, failed)
