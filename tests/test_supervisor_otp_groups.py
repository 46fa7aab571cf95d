"""one_for_all / rest_for_one restart the whole group, as OTP's restart_multiple_children:
members that were stopped (terminate_child, a TRANSIENT normal exit) start again with it."""

from __future__ import annotations

import trio

import corral
from tests.sup_helpers import Kids, settle


async def test_one_for_all_restarts_a_terminated_member_with_the_group() -> None:
    kids = Kids()
    with trio.fail_after(5):
        async with corral.open_supervisor(
            kids.specs("a", "b", "c"), strategy=corral.Strategy.ONE_FOR_ALL
        ) as sup:
            await sup.terminate_child("b")
            await kids.crash("c")
            await settle()
            states = {i.id: i.state for i in sup.which_children()}
            assert states == dict.fromkeys("abc", corral.ChildState.RUNNING)
            assert kids.starts["b"] == 2


async def test_rest_for_one_restarts_a_transient_that_ended_normally_after_the_dead_one() -> None:
    kids = Kids()
    specs = [
        kids.spec("a"),
        kids.spec("b"),
        kids.spec("t", restart=corral.Restart.TRANSIENT),
        kids.spec("d"),
    ]
    with trio.fail_after(5):
        async with corral.open_supervisor(specs, strategy=corral.Strategy.REST_FOR_ONE) as sup:
            await kids.exit("t", "normal")
            await settle()
            assert {i.id: i.state for i in sup.which_children()}["t"] is corral.ChildState.STOPPED
            await kids.crash("b")
            await settle()
            infos = {i.id: i for i in sup.which_children()}
            assert infos["t"].state is corral.ChildState.RUNNING  # back with its group
            assert kids.starts["a"] == 1  # before the dead child: untouched
            assert kids.starts["t"] == 2 and kids.starts["d"] == 2


async def test_temporary_members_do_not_come_back() -> None:
    kids = Kids()
    specs = [kids.spec("a"), kids.spec("tmp", restart=corral.Restart.TEMPORARY), kids.spec("c")]
    with trio.fail_after(5):
        async with corral.open_supervisor(specs, strategy=corral.Strategy.ONE_FOR_ALL) as sup:
            await kids.crash("c")
            await settle()
            assert [i.id for i in sup.which_children()] == ["a", "c"]
