"""start_child into a group waiting for its restart (one_for_all, rest_for_one with a
backoff): the child joins that restart. Its first start is a start, not a restart; one
that fails refuses the child, as start_child would, and never costs the supervisor its
restart intensity (nor corral run's tree, when a reload adds the child)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

import corral
from corral.procman._reload import diff
from tests.sup_helpers import Kids, supervising
from tests.test_procman import config, running, wait_until


@pytest.mark.parametrize("strategy", [corral.Strategy.ONE_FOR_ALL, corral.Strategy.REST_FOR_ONE])
async def test_a_joined_child_that_cannot_start_does_not_bring_the_supervisor_down(
    autojump_clock: trio.testing.MockClock, strategy: corral.Strategy
) -> None:
    """start_child of a child whose start fails raises ChildStartError and leaves the
    supervisor as it was. Added while the group waits out a backoff, the same child is
    joined to the restart instead: its failed start becomes a counted failed restart,
    retried until the restart intensity is spent, and the whole supervisor dies."""
    kids = Kids()
    kids.fail_init["bad"] = 10**6
    backoff = corral.Backoff(initial=1.0, maximum=1.0, jitter=0)
    sup = corral.Supervisor(kids.specs("a", "b"), strategy=strategy, backoff=backoff, max_restarts=3)
    with trio.fail_after(30):
        async with supervising(sup) as outcome:
            # without a pending restart: refused, the supervisor untouched
            with pytest.raises(corral.ChildStartError):
                await sup.start_child(kids.spec("bad"))
            assert sup.running
            await kids.crash("a")
            try:
                await sup.start_child(kids.spec("bad"))
            except corral.ChildStartError:
                pass
            await trio.sleep(10)
            assert sup.running, await outcome.wait()


async def test_a_joined_child_is_not_reported_as_restarted(autojump_clock: trio.testing.MockClock) -> None:
    """A child that joins a pending group restart starts for the first time: its
    ChildInfo.restarts stays 0 and its ChildStarted says restart=False."""
    kids = Kids()
    backoff = corral.Backoff(initial=1.0, maximum=1.0, jitter=0)
    sup = corral.Supervisor(kids.specs("a", "b"), strategy=corral.Strategy.ONE_FOR_ALL, backoff=backoff)
    events: list[corral.SupervisorEvent] = []
    sup.subscribe(events.append)
    with trio.fail_after(5):
        async with supervising(sup):
            await kids.crash("a")
            assert await sup.start_child(kids.spec("c")) is None
            await trio.sleep(1.5)
            c = next(i for i in sup.which_children() if i.id == "c")
            started = [e for e in events if isinstance(e, corral.ChildStarted) and e.child_id == "c"]
            assert (c.restarts, [e.restart for e in started]) == (0, [False])


async def test_a_reload_during_a_backoff_adding_a_command_that_cannot_start_keeps_the_tree(
    tmp_path: Path,
) -> None:
    """Outside a backoff, a reload adding a command that cannot start says 'could not
    start p' and the tree runs on (test_apply_reports_a_child_that_could_not_start_...).
    During a one_for_all backoff the same reload 'starts p' (start_child joins the
    pending restart, returns None), then p's failed starts are counted restarts and
    the root gives up: the whole tree is brought down by a reload."""
    script = tmp_path / "prog"
    script.write_text("#!/bin/sh\nexec sleep 100\n")
    script.chmod(0o755)
    crash_once = "if [ -e crashed ]; then exec sleep 100; fi; touch crashed; exit 1"
    text = f"""
[supervisor]
strategy = "one_for_all"
backoff = {{ initial = 1.0, maximum = 1.0, jitter = 0 }}
[[child]]
id = "a"
command = ["sh", "-c", "{crash_once}"]
"""
    new = config(tmp_path, text + '[[child]]\nid = "p"\ncommand = ["./prog"]\n')
    script.chmod(0o644)  # no longer executable: its start fails
    with trio.fail_after(20):
        async with running(config(tmp_path, text)) as (tree, events):
            await wait_until(lambda: any(isinstance(e, corral.ChildRestarting) for e in events))
            outcomes = await tree.apply(diff(tree.config, new), new)
            await trio.sleep(4)
            assert tree.root.running, (outcomes, [type(e).__name__ for e in events])
