"""``corral run`` reloads its config: the pure diff (rules and a property), the plan
carried out on real supervisors of real processes, and ``corral run`` itself driven by
real signals (SIGHUP, ``corral run --reload``). Every process is checked in /proc."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import corral
from corral.procman import Config, Console, LogSettings, ProcessConfig, SupervisorConfig
from corral.procman._control import Owner, PidFileBusy, claim, pid_file, read_owner, release, send_reload
from corral.procman._reload import Plan, diff, without
from corral.procman._serve import reload
from tests.test_procman import alive, config, corral_cmd, log_text, pids, running, wait_until

# -- the diff, pure ------------------------------------------------------------------

LOGS = LogSettings(Path("/tmp/logs"))


def proc(id: str, *command: str, **kwargs: object) -> ProcessConfig:
    return ProcessConfig(id, command or ("sleep", "100"), **kwargs)  # type: ignore[arg-type]


def sup(id: str | None, *children: ProcessConfig | SupervisorConfig, **kwargs: object) -> SupervisorConfig:
    return SupervisorConfig(id, id or "root", children, **kwargs)  # type: ignore[arg-type]


def cfg(*children: ProcessConfig | SupervisorConfig, logs: LogSettings = LOGS, **root: object) -> Config:
    return Config(sup(None, *children, **root), logs)


def steps(plan: Plan) -> list[tuple[str, str | None, str, tuple[str, ...], str]]:
    return [(s.action, s.parent, s.id, s.before, s.why) for s in plan.steps]


def test_diff_stops_first_in_reverse_then_restarts_and_starts_in_config_order() -> None:
    old = cfg(proc("a"), proc("gone1"), sup("inner", proc("x"), proc("y"), proc("gone2")), proc("c"))
    new = cfg(
        proc("new1"),
        proc("a"),
        sup("inner", proc("x", "sleep", "5"), proc("y"), proc("new2")),
        proc("c", env=(("K", "v"),)),
    )
    assert steps(diff(old, new)) == [
        ("stop", "inner", "gone2", (), ""),  # the reverse of the start order: inner's last child first
        ("stop", None, "gone1", (), ""),
        ("start", None, "new1", ("a", "inner", "c"), ""),
        ("restart", "inner", "x", ("y",), "command changed"),
        ("start", "inner", "new2", (), ""),
        ("restart", None, "c", (), "env changed"),
    ]
    assert diff(old, new).summary() == (
        "reload: stopped gone2; stopped gone1; started new1; restarted x (command changed); "
        "started new2; restarted c (env changed)"
    )


def test_diff_of_the_same_config_is_no_changes() -> None:
    old = cfg(proc("a", env=(("A", "1"), ("B", "2"))), sup("s", proc("x")))
    same = cfg(proc("a", env=(("B", "2"), ("A", "1"))), sup("s", proc("x")))  # env order means nothing
    assert diff(old, same).steps == ()
    assert diff(old, same).summary() == "reload: no changes"


def test_diff_restarts_a_nested_supervisor_whose_own_options_changed() -> None:
    old = cfg(sup("s", proc("x")), proc("p"))
    new = cfg(sup("s", proc("x"), proc("y"), strategy=corral.Strategy.ONE_FOR_ALL), proc("p"))
    assert steps(diff(old, new)) == [("restart", None, "s", ("p",), "strategy changed")]
    # Its children that the new file drops or puts elsewhere are stopped with the removals.
    kind = cfg(proc("x"), proc("s"), proc("p"))  # a supervisor became a process; x moved up
    assert steps(diff(old, kind)) == [
        ("stop", "s", "x", (), ""),
        ("start", None, "x", ("s", "p"), ""),
        ("restart", None, "s", ("p",), "type changed"),
    ]


def test_diff_restarts_the_fewest_moved_children() -> None:
    old = cfg(proc("a"), proc("b"), proc("c"), proc("d"))
    new = cfg(proc("b"), proc("c"), proc("d", "true"), proc("a"))
    assert steps(diff(old, new)) == [
        ("restart", None, "d", (), "command changed"),
        ("restart", None, "a", (), "moved"),
    ]


@pytest.mark.parametrize(
    ("root", "logs", "field"),
    [
        ({"strategy": corral.Strategy.REST_FOR_ONE}, LOGS, "supervisor.strategy"),
        ({"max_restarts": 9}, LOGS, "supervisor.max_restarts"),
        ({"backoff": corral.Backoff()}, LOGS, "supervisor.backoff"),
        ({"auto_shutdown": corral.AutoShutdown.ANY_SIGNIFICANT}, LOGS, "supervisor.auto_shutdown"),
        ({}, LogSettings(Path("/elsewhere")), "supervisor.log_dir"),
        ({}, LogSettings(LOGS.dir, max_bytes=5), "supervisor.log_max_bytes"),
        ({}, LogSettings(LOGS.dir, backups=1), "supervisor.log_backups"),
    ],
)
def test_diff_refuses_a_change_of_the_root_options_or_log_settings(
    root: dict[str, object], logs: LogSettings, field: str
) -> None:
    with pytest.raises(corral.InvalidSpec) as info:
        diff(cfg(proc("a")), cfg(proc("a"), logs=logs, **root))
    assert info.value.field == field
    assert "restart corral run" in str(info.value)


def test_without_drops_children_wherever_they_are() -> None:
    tree = cfg(proc("a"), sup("s", proc("x"), proc("y")))
    assert without(tree, ["x", "a"]) == cfg(sup("s", proc("y")))
    assert without(tree, []) is tree


# The property: a model of the running tree (supervisor id -> ordered child ids) that
# applies the plan as ProcessTree.apply does ends up as the new config's tree, and a
# child whose config is the same and whose place is right is never in the plan.

POOL = ["a", "b", "c", "d", "e", "f", "g"]


@st.composite
def trees(draw: st.DrawFn) -> Config:
    ids = draw(st.permutations(POOL))[: draw(st.integers(0, len(POOL)))]

    def children(depth: int) -> tuple[ProcessConfig | SupervisorConfig, ...]:
        found: list[ProcessConfig | SupervisorConfig] = []
        while ids and draw(st.integers(0, 3)) > 0:
            cid = ids.pop()
            if depth < 2 and draw(st.booleans()):
                strategy = draw(st.sampled_from([corral.Strategy.ONE_FOR_ONE, corral.Strategy.REST_FOR_ONE]))
                found.append(sup(cid, *children(depth + 1), strategy=strategy))
            else:
                found.append(proc(cid, draw(st.sampled_from(["true", "false"]))))
        return tuple(found)

    return cfg(*children(0))


def shape(config: Config) -> dict[str | None, list[str]]:
    found: dict[str | None, list[str]] = {}

    def walk(s: SupervisorConfig) -> None:
        found[s.id] = [c.id for c in s.children if c.id is not None]
        for c in s.children:
            if isinstance(c, SupervisorConfig):
                walk(c)

    walk(config.root)
    return found


def children_of(config: Config) -> dict[str, tuple[str | None, ProcessConfig | SupervisorConfig]]:
    found: dict[str, tuple[str | None, ProcessConfig | SupervisorConfig]] = {}

    def walk(s: SupervisorConfig) -> None:
        for c in s.children:
            assert c.id is not None
            found[c.id] = (s.id, c)
            if isinstance(c, SupervisorConfig):
                walk(c)

    walk(config.root)
    return found


def drop(model: dict[str | None, list[str]], sup_id: str) -> None:
    """A supervisor stopped: its children, at any depth, with it."""
    for child in model.pop(sup_id, []):
        drop(model, child)


@settings(max_examples=300, deadline=None)
@given(trees(), trees())
def test_applying_the_plan_gives_the_new_tree_and_touches_nothing_else(old: Config, new: Config) -> None:
    plan = diff(old, new)
    model = shape(old)
    for step in plan.steps:
        siblings = model[step.parent]
        if step.action != "start":
            siblings.remove(step.id)
            drop(model, step.id)
        if step.action != "stop":
            assert step.child is not None and step.id not in siblings
            assert not any(step.id in children for children in model.values())  # one of each id
            at = next((siblings.index(s) for s in step.before if s in siblings), len(siblings))
            siblings.insert(at, step.id)
            if isinstance(step.child, SupervisorConfig):  # started from its new config
                model.update(shape(Config(step.child, LOGS)))
    assert model == shape(new)
    # Nothing is touched without a reason.
    before, after = children_of(old), children_of(new)
    for step in plan.steps:
        if step.action == "stop":
            assert (
                step.id not in after
                or after[step.id][0] != before[step.id][0]
                or step.parent != after[step.id][0]
            )
        elif step.action == "start":
            assert step.id not in before or before[step.id][0] != after[step.id][0]
        else:
            assert before[step.id][0] == after[step.id][0]
            assert step.why == "moved" or before[step.id][1] != after[step.id][1]
    for action in ("stop", "start", "restart"):
        chosen = [s.id for s in plan.steps if s.action == action]
        assert len(chosen) == len(set(chosen))


# -- the plan, carried out on real supervisors -----------------------------------------


TREE = """
[supervisor]
strategy = "rest_for_one"
[[child]]
id = "a"
command = ["sleep", "100"]
[[child]]
id = "inner"
type = "supervisor"
  [[child.child]]
  id = "x"
  command = ["sleep", "100"]
[[child]]
id = "c"
command = ["sleep", "100"]
"""


async def test_apply_descends_into_a_nested_supervisor_and_its_restart_runs_the_new_file(
    tmp_path: Path,
) -> None:
    old = config(tmp_path, TREE)
    new = config(
        tmp_path,
        TREE.replace('  id = "x"', '  id = "x0"\n  command = ["sleep", "99"]\n  [[child.child]]\n  id = "x"'),
    )
    with trio.fail_after(10):
        async with running(old) as (tree, _):
            inner, before = tree.nested["inner"], pids(tree)
            x = {i.id: i.value for i in inner.which_children()}["x"]
            plan = diff(tree.config, new)
            assert [s.text() for s in plan.steps] == ["started x0"]
            assert await tree.apply(plan, new) == ["started x0"]
            assert tree.nested["inner"] is inner and pids(tree) == before  # not restarted
            assert [(i.id, i.value) for i in inner.which_children()][1] == ("x", x)
            assert [i.id for i in inner.which_children()] == ["x0", "x"]
            # When its parent restarts it, it is built again from the new config.
            await tree.root.terminate_child("inner")
            await tree.root.restart_child("inner")
            assert tree.nested["inner"] is not inner
            assert [i.id for i in tree.nested["inner"].which_children()] == ["x0", "x"]
            assert not alive(x)  # type: ignore[arg-type]


async def test_apply_leaves_a_stopped_nested_supervisor_to_start_from_the_new_file(tmp_path: Path) -> None:
    old = config(tmp_path, TREE)
    new = config(tmp_path, TREE.replace('  command = ["sleep", "100"]', '  command = ["sleep", "99"]'))
    with trio.fail_after(10):
        async with running(old) as (tree, _):
            await tree.root.terminate_child("inner")
            plan = diff(tree.config, new)
            assert [s.text() for s in plan.steps] == ["restarted x (command changed)"]
            assert await tree.apply(plan, new) == ["inner is not running: it will start as the file says"]
            await tree.root.restart_child("inner")
            [x] = tree.nested["inner"].which_children()
            assert x.spec.args[0].command == ("sleep", "99")


async def test_apply_reports_a_child_that_could_not_start_and_forgets_it(tmp_path: Path) -> None:
    script = tmp_path / "prog"
    script.write_text("#!/bin/sh\nexec sleep 100\n")
    script.chmod(0o755)
    old = config(tmp_path, '[[child]]\nid = "a"\ncommand = ["sleep", "100"]\n')
    new = config(
        tmp_path,
        '[[child]]\nid = "a"\ncommand = ["sleep", "100"]\n[[child]]\nid = "p"\ncommand = ["./prog"]\n',
    )
    script.chmod(0o644)  # no longer executable: the start fails
    with trio.fail_after(10):
        async with running(old) as (tree, _):
            plan = diff(tree.config, new)
            [outcome] = await tree.apply(plan, new)
            assert outcome.startswith("could not start p: ")
            assert [c.id for c in tree.config.root.children] == ["a"]  # the next reload starts it
            script.chmod(0o755)
            retry = diff(tree.config, new)
            assert [s.text() for s in retry.steps] == ["started p"]
            assert await tree.apply(retry, new) == ["started p"]


async def test_a_changed_child_under_rest_for_one_is_restarted_alone(tmp_path: Path) -> None:
    """As OTP's release handling: a reload's restart is not a crash, so the children
    after it (which rest_for_one would restart after a crash) run on."""
    text = '[supervisor]\nstrategy = "rest_for_one"\n' + "".join(
        f'[[child]]\nid = "{c}"\ncommand = ["sleep", "100"]\n' for c in "abc"
    )
    new = config(
        tmp_path, text.replace('id = "b"\ncommand = ["sleep", "100"]', 'id = "b"\ncommand = ["sleep", "99"]')
    )
    with trio.fail_after(10):
        async with running(config(tmp_path, text)) as (tree, _):
            before = pids(tree)
            assert await tree.apply(diff(tree.config, new), new) == ["restarted b (command changed)"]
            after = pids(tree)
            assert (after["a"], after["c"]) == (before["a"], before["c"]) and after["b"] != before["b"]


async def test_a_change_of_the_root_options_is_rejected_and_nothing_changes(tmp_path: Path) -> None:
    app = tmp_path / "app.toml"
    app.write_text('[[child]]\nid = "a"\ncommand = ["sleep", "100"]\n')
    old = corral.procman.load_config(app, log_dir=tmp_path / "logs")
    app.write_text(
        '[supervisor]\nstrategy = "one_for_all"\n[[child]]\nid = "b"\ncommand = ["sleep", "100"]\n'
    )
    err = io.StringIO()
    with trio.fail_after(10):
        async with running(old) as (tree, _):
            before = pids(tree)
            await reload(tree, Console(io.StringIO(), err, width=0), app, tmp_path / "logs")
            assert pids(tree) == before and tree.config is not None
    lines = [line[9:] for line in err.getvalue().splitlines()]
    assert lines == [
        f"corral | SIGHUP: reloading {app}",
        f"corral | reload rejected: {app}: supervisor.strategy: changed from 'one_for_one' to "
        "'one_for_all'; the root supervisor's options and the log settings are fixed while "
        "corral run runs: restart corral run to change them (or undo this change to reload "
        "the rest); still running the previous config",
    ]


# -- the pid file ---------------------------------------------------------------------


def test_the_pid_file_is_claimed_released_and_a_live_owner_refuses_a_second(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "corral.pid"
    claim(path, tmp_path / "app.toml")
    owner = read_owner(path)
    assert owner is not None and owner.pid == os.getpid() and owner.alive()
    assert owner.config == str(tmp_path / "app.toml")
    other = Owner(os.getppid(), "0", "other.toml")  # a live pid, but not started then: stale
    assert not other.alive()
    release(path)
    assert not path.exists()
    with subprocess.Popen(["sleep", "100"]) as sleeper:  # a live process that wrote it
        try:
            started = Path(f"/proc/{sleeper.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
            path.write_text(Owner(sleeper.pid, started, "other.toml").text())
            with pytest.raises(PidFileBusy, match=f"pid {sleeper.pid}, other.toml"):
                claim(path, None)
        finally:
            sleeper.kill()


def test_reload_of_a_config_nobody_runs_or_with_a_stale_pid_file(tmp_path: Path) -> None:
    app = tmp_path / "app.toml"
    app.write_text('[[child]]\nid = "a"\ncommand = ["true"]\n')
    loaded = corral.procman.load_config(app)
    status, message = send_reload(loaded, "app.toml")
    assert status == 1 and "no pid file" in message and "corral run app.toml" in message
    dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True).stdout
    path = pid_file(loaded.logs)
    path.parent.mkdir()
    path.write_text(Owner(int(dead), "1", str(app)).text())
    status, message = send_reload(loaded, "app.toml")
    assert status == 1 and f"names pid {int(dead)}, which is gone" in message
    assert not path.exists()


# -- corral run, driven by real signals -------------------------------------------------


STARTED = re.compile(r"\| (\S+) (?:re)?started \(pid (\d+)\)")


@attrs.define
class Running:
    """A ``corral run`` subprocess and its config file; reads its console from files."""

    proc: trio.Process
    app: Path
    err: Path
    tmp: Path

    def text(self) -> str:
        return self.err.read_text()

    def pids(self) -> dict[str, int]:
        """Each command's latest pid, from the console's "<id> started (pid N)" lines."""
        return {name: int(pid) for name, pid in STARTED.findall(self.text())}

    async def wait_for(self, fragment: str, count: int = 1) -> None:
        await wait_until(lambda: self.text().count(fragment) >= count, timeout=10)

    async def reload(self, text: str, count: int = 1) -> None:
        """Write the new config, SIGHUP, and wait until the reload's outcome is printed."""
        self.app.write_text(text)
        self.proc.send_signal(signal.SIGHUP)
        await wait_until(lambda: self.text().count("| reload") >= count, timeout=10)


@asynccontextmanager
async def corral_run(tmp_path: Path, text: str, ids: str) -> AsyncIterator[Running]:
    """``corral run app.toml`` until every one of ``ids`` started; stopped on the way out
    (SIGTERM, status 0), and then no command it ever started may be alive."""
    app, out, err = tmp_path / "app.toml", tmp_path / "stdout", tmp_path / "stderr"
    app.write_text(text)
    with open(out, "wb") as fout, open(err, "wb") as ferr:  # noqa: ASYNC230 - test setup
        proc = await trio.lowlevel.open_process(
            corral_cmd("run", "-q", "app.toml"), stdout=fout, stderr=ferr, cwd=str(tmp_path)
        )
    handle = Running(proc, app, err, tmp_path)
    try:
        with trio.fail_after(15):
            for name in ids.split():
                await handle.wait_for(f"| {name} started (pid ")
            yield handle
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0, handle.text()
    finally:
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
    every = [int(pid) for _, pid in STARTED.findall(handle.text())]
    assert every and not [p for p in every if alive(p)]
    assert not (tmp_path / "logs" / "corral.pid").exists()


def environ(pid: int) -> bytes:
    return b"\0" + Path(f"/proc/{pid}/environ").read_bytes()


def slow(name: str) -> str:
    """A command that takes 0.5 s to stop after its SIGTERM."""
    script = "trap 'sleep 0.5; exit 0' TERM; while :; do sleep 0.05; done"
    return f'id = "{name}"\ncommand = ["sh", "-c", "{script}"]'


def toml(*children: str, root: str = "") -> str:
    return root + "".join(f"[[child]]\n{c}\n" for c in children)


def sleeper(name: str, extra: str = "") -> str:
    return f'id = "{name}"\ncommand = ["sleep", "100"]\n{extra}'


async def test_reload_adds_a_child_in_place(tmp_path: Path) -> None:
    rest_for_one = '[supervisor]\nstrategy = "rest_for_one"\n'
    async with corral_run(tmp_path, toml(sleeper("a"), sleeper("c"), root=rest_for_one), "a c") as run:
        before = run.pids()
        await run.reload(toml(sleeper("a"), sleeper("b"), sleeper("c"), root=rest_for_one))
        assert "| reload: started b\n" in run.text()
        after = run.pids()
        assert (after["a"], after["c"]) == (before["a"], before["c"]) and alive(after["b"])
        os.kill(after["b"], signal.SIGKILL)  # rest_for_one: b is before c now, after a
        await run.wait_for("| c restarted (pid ")
        assert run.pids()["a"] == before["a"] and run.pids()["c"] != before["c"]
        mark = len(run.text())
    stop = run.text()[mark:]
    assert stop.index("| c exited") < stop.index("| b exited") < stop.index("| a exited")


async def test_reload_stops_a_removed_child_with_its_stop_signal(tmp_path: Path) -> None:
    polite = (
        'id = "b"\ncommand = ["sh", "-c", "trap \'echo bye; exit 0\' INT; echo up; '
        'while :; do sleep 0.05; done"]\nstop_signal = "SIGINT"'
    )
    async with corral_run(tmp_path, toml(sleeper("a"), polite, sleeper("c")), "a b c") as run:
        before = run.pids()
        await wait_until(lambda: "out up" in log_text(tmp_path, "b"))
        await run.reload(toml(sleeper("a")))
        assert "| reload: stopped c; stopped b\n" in run.text()  # reverse start order
        assert run.pids()["a"] == before["a"] and alive(before["a"])
        assert not alive(before["b"]) and not alive(before["c"])
        assert "--- stop requested: SIGINT to the process group\n" in log_text(tmp_path, "b")
        assert "out bye\n" in log_text(tmp_path, "b")
        assert "| b exited: stopped: exit code 0 (stopped)" in run.text()


async def test_reload_restarts_changed_children_in_order(tmp_path: Path) -> None:
    async with corral_run(tmp_path, toml(sleeper("a"), sleeper("b"), sleeper("c")), "a b c") as run:
        before = run.pids()
        await run.reload(
            toml(
                sleeper("a"),
                'id = "b"\ncommand = ["sleep", "200"]',
                sleeper("c", 'env = { MODE = "new" }'),
            )
        )
        text = run.text()
        assert "| reload: restarted b (command changed); restarted c (env changed)\n" in text
        after = run.pids()
        assert after["a"] == before["a"]
        assert after["b"] != before["b"] and after["c"] != before["c"]
        assert not alive(before["b"]) and not alive(before["c"])
        story = text[text.index("SIGHUP: reloading") :]
        order = [story.index(f"| {e}") for e in ("b exited", "b started", "c exited", "c started")]
        assert order == sorted(order)
        assert b"\0MODE=new\0" in environ(after["c"])


async def test_reload_rejects_an_invalid_config_and_changes_nothing(tmp_path: Path) -> None:
    async with corral_run(tmp_path, toml(sleeper("a"), sleeper("b")), "a b") as run:
        before = run.pids()
        await run.reload(toml(sleeper("a"), sleeper("b", 'restart = "always"'), sleeper("c")))
        assert (
            "| reload rejected: app.toml: child[1].restart: must be one of 'permanent', "
            "'transient', 'temporary', got 'always'; still running the previous config\n"
        ) in run.text()
        assert run.pids() == before and all(alive(p) for p in before.values())
        # Still the previous config: a valid file later is compared with it.
        await run.reload(toml(sleeper("a"), sleeper("b"), sleeper("c")), count=2)
        assert "| reload: started c\n" in run.text()


async def test_reload_with_no_changes_touches_nothing(tmp_path: Path) -> None:
    text = toml(sleeper("a"), 'id = "once"\ncommand = ["true"]\nrestart = "temporary"')
    async with corral_run(tmp_path, text, "a once") as run:
        await run.wait_for("| once exited: exit code 0")
        before = run.pids()
        await run.reload(text)
        assert "| reload: no changes\n" in run.text()
        assert run.pids() == before and alive(before["a"])


async def test_sighups_during_a_reload_make_one_more_reload(tmp_path: Path) -> None:
    async with corral_run(tmp_path, toml(sleeper("a"), slow("slow")), "a slow") as run:
        run.app.write_text(toml(sleeper("a")))
        run.proc.send_signal(signal.SIGHUP)
        await run.wait_for("SIGHUP: reloading")
        for _ in range(3):  # while slow takes its time to stop
            run.proc.send_signal(signal.SIGHUP)
            await trio.sleep(0.02)
        await run.wait_for("| reload: no changes")
        await trio.sleep(0.3)
        assert run.text().count("SIGHUP: reloading") == 2
        assert "| reload: stopped slow\n" in run.text()


async def test_sigint_during_a_reload_stops_the_tree_and_a_sighup_then_is_ignored(tmp_path: Path) -> None:
    async with corral_run(tmp_path, toml(slow("first"), sleeper("a"), slow("last")), "first a last") as run:
        run.app.write_text(toml(slow("first"), sleeper("a")))
        run.proc.send_signal(signal.SIGHUP)
        await run.wait_for("SIGHUP: reloading")  # last is taking its time to stop
        run.proc.send_signal(signal.SIGINT)
        await run.wait_for("| a exited")  # first is taking its time to stop
        run.proc.send_signal(signal.SIGHUP)
        assert await run.proc.wait() == 0
    text = run.text()
    assert "| SIGHUP: not reloading, the tree is stopping\n" in text
    assert "| reload:" not in text and text.rstrip().endswith("all stopped")
    story = text[text.index("SIGINT") :]
    assert story.index("| last exited") < story.index("| a exited") < story.index("| first exited")


def corral_sync(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(corral_cmd(*args), capture_output=True, text=True, timeout=20, cwd=tmp_path)


async def test_corral_run_reload_is_the_control_command(tmp_path: Path) -> None:
    async with corral_run(tmp_path, toml(sleeper("a")), "a") as run:
        before = run.pids()
        second = await trio.to_thread.run_sync(corral_sync, tmp_path, "run", "app.toml")
        assert second.returncode == 1 and "another corral run (pid" in second.stderr
        run.app.write_text(toml(sleeper("a", 'restart = "sometimes"')))
        bad = await trio.to_thread.run_sync(corral_sync, tmp_path, "run", "--reload", "app.toml")
        assert bad.returncode == 2
        assert bad.stderr.startswith("corral run --reload: app.toml: child[0].restart: must be one of")
        assert "nothing was sent" in bad.stderr
        run.app.write_text(toml(sleeper("a"), sleeper("b")))
        ok = await trio.to_thread.run_sync(corral_sync, tmp_path, "run", "--reload", "app.toml")
        assert ok.returncode == 0 and f"sent SIGHUP to corral run (pid {run.proc.pid})" in ok.stdout
        await run.wait_for("| reload")
        assert run.text().count("SIGHUP: reloading") == 1  # the invalid file was never sent
        assert "| reload: started b\n" in run.text() and run.pids()["a"] == before["a"]
    gone = corral_sync(tmp_path, "run", "--reload", "app.toml")
    assert gone.returncode == 1 and "no corral run is running app.toml" in gone.stderr


def test_the_help_tells_how_to_reload() -> None:
    helped = subprocess.run(corral_cmd("run", "--help"), capture_output=True, text=True, timeout=20)
    assert "--reload" in helped.stdout and "SIGHUP" in helped.stdout and "corral.pid" in helped.stdout
    both = subprocess.run(
        corral_cmd("run", "--check", "--reload", "x.toml"), capture_output=True, text=True, timeout=20
    )
    assert both.returncode == 2 and "not allowed with" in both.stderr


if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip("reads /proc")
