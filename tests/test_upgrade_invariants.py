"""pool.upgrade() against the pool's own rules: a lease stays exclusive, a caller moved
off a retiring worker keeps its turn and its checkout_timeout, a recycle or an empty
lazy pool during an upgrade, a rollback that keeps a worker being recycled, an eager pool
topping itself up whatever its restart type. Fake workers on MockClock. The property
test at the end runs random programs (calls, sessions, leases, end_session, crashes,
recycles, upgrades that pass, fail or are cancelled) and checks the invariants of
_checkout.py's docstring all along."""

from __future__ import annotations

import os
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import corral
from tests.fake_worker import Script, Versions


def run(main: Any) -> None:
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def check_invariants(pool: corral.Pool) -> None:
    """The invariants of _checkout.py's docstring, and the pool's own bounds."""
    slots, checkout = pool._slots, pool._checkout
    members = list(slots.members.values())
    for m in members:
        places = checkout.idle.count(m)
        assert places + m.holders <= m.worker.depth, (m.id, places, m.holders, m.worker.depth)
        if m.recycling:
            assert places == 0, (m.id, "recycling member has idle places")
    for m in checkout.idle:
        assert not m.forgotten, (m.id, "forgotten member in idle")
    assert checkout.held == sum(m.holders for m in members), (checkout.held, [m.holders for m in members])
    unset = sum(1 for w in checkout.waiters if not w.event.is_set())
    unset += sum(1 for m in members for w in m.session_waiters if not w.event.is_set())
    assert checkout.queued == unset, (checkout.queued, unset)


# -- a lease stays exclusive


def test_a_lease_stays_exclusive_on_a_retiring_worker_that_keeps_its_sessions() -> None:
    """A pipelining worker leased with session "a" (``checkout``: the worker is the
    lease's alone) is retired by an upgrade with sessions="wait": another caller of
    session "a" must wait for the lease to end, not run beside it."""
    versions = Versions(Script(pipelining=True))
    overlap: list[float] = []

    async def main() -> None:
        async with (
            corral.open_pool("v1", size=1, worker_factory=versions.factory) as pool,
            trio.open_nursery() as nursery,
        ):
            lease_done = trio.Event()

            async def leaser() -> None:
                async with pool.checkout(session="a") as lease:
                    await lease.call("sleep", 5.0)
                    lease_end = trio.current_time()
                lease_done.set()
                starts = [t for (_, t) in versions.script.made[0].calls]
                overlap.extend(t for t in starts[1:] if t < lease_end)

            nursery.start_soon(leaser)
            await trio.sleep(0.1)
            nursery.start_soon(lambda: pool.upgrade("v2", probation=0, sessions="wait", session_deadline=60))
            await trio.sleep(0.5)  # w1 now retiring, keeping session "a"
            assert pool._slots.members["w1"].keeps_sessions
            await pool.call("echo", 1, session="a")
            await lease_done.wait()
            pool.end_session("a")
        assert overlap == [], f"a call ran on the leased worker during the lease, at {overlap}"

    run(main)


# -- a caller moved off a worker keeps what is left of its checkout_timeout


def test_end_session_does_not_extend_a_queued_callers_checkout_timeout() -> None:
    """size=1, checkout_timeout=5: a caller of session "s" queues for its busy worker at
    t=0; end_session("s") at t=4 moves it, and it gets CheckoutTimeout at t=5: the wait
    for a worker is one wait, however often it is moved."""
    versions = Versions(Script())
    outcome: list[tuple[str, float]] = []

    async def main() -> None:
        async with corral.open_pool(
            "v1", size=1, worker_factory=versions.factory, checkout_timeout=5
        ) as pool:
            await pool.call("echo", 0, session="s")
            t0 = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: pool.call("sleep", 20.0))  # w1 busy (anonymous)
                await trio.sleep(0.01)

                async def queued() -> None:
                    try:
                        await pool.call("echo", 1, session="s")
                        outcome.append(("ok", trio.current_time() - t0))
                    except corral.CheckoutTimeout:
                        outcome.append(("CheckoutTimeout", trio.current_time() - t0))

                nursery.start_soon(queued)
                await trio.sleep(4)
                pool.end_session("s")
        assert outcome and outcome[0][0] == "CheckoutTimeout" and outcome[0][1] <= 5.1, outcome

    run(main)


# -- a moved caller keeps its turn


def test_end_session_does_not_turn_an_admitted_caller_away_as_saturated() -> None:
    """size=1, max_waiting=1: B waits for session "s"'s busy worker (admitted: 1 waiting);
    end_session("s") moves it while an anonymous caller C arrives in the same instant:
    B, admitted and waiting first, keeps its turn; C is the one over max_waiting."""
    versions = Versions(Script())
    errors: dict[str, str] = {}

    async def main() -> None:
        async with corral.open_pool(
            "v1", size=1, worker_factory=versions.factory, max_waiting=1, checkout_timeout=60
        ) as pool:
            await pool.call("echo", 0, session="s")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: pool.call("sleep", 2.0))
                await trio.sleep(0.01)

                async def caller(name: str, session: str | None) -> None:
                    try:
                        await pool.call("echo", 1, session=session)
                    except corral.CorralError as exc:
                        errors[name] = type(exc).__name__

                nursery.start_soon(caller, "B", "s")
                await trio.sleep(0.5)
                pool.end_session("s")
                await caller("C", None)  # enqueues before B, woken, runs again
        assert "B" not in errors, errors

    run(main)


# -- an empty lazy pool's upgrade judges the version


def test_an_upgrade_of_an_empty_lazy_pool_judges_the_new_version() -> None:
    """A lazy pool with no worker yet (or shrunk to min_size=0) upgraded to a version
    whose workers cannot start: the upgrade starts one new worker all the same, judges
    the version failing (UpgradeFailed, rolled back), and later calls are served."""
    versions = Versions(Script())
    versions.fail_version = "v2"
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with corral.open_pool("v1", size=2, lazy=True, worker_factory=versions.factory) as pool:
            try:
                rollout = await pool.upgrade("v2", probation=0.5)
                seen["upgrade"] = rollout.phase
            except corral.UpgradeFailed:
                seen["upgrade"] = "UpgradeFailed"
            try:
                seen["call"] = await pool.call("echo", 1)
            except corral.CorralError as exc:
                seen["call"] = type(exc).__name__
        assert seen == {"upgrade": "UpgradeFailed", "call": 1}, seen

    run(main)


# -- a rollback keeps a worker being recycled, and its recycle


def test_reinstating_a_worker_being_recycled_does_not_recycle_it_twice() -> None:
    """Pipelining, max_requests=1: w1's recycle waits for its lease to end when an
    upgrade retires w1 and its version fails at once. The rollback keeps w1 (it clears
    only the upgrade's flag), so its recycle goes on, once: one "recycle" event."""
    versions = Versions(Script(pipelining=True))
    versions.fail_version = "v2"
    recycles: list[str] = []

    def on_event(event: corral.WorkerEvent) -> None:
        if event.action == "recycle":
            recycles.append(event.worker_id)

    async def main() -> None:
        async with corral.open_pool(
            "v1", size=1, max_requests=1, worker_factory=versions.factory, on_event=on_event
        ) as pool:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: pool.call("sleep", 1.0))
                await trio.sleep(0.1)

                async def lease() -> None:
                    async with pool.checkout() as held:
                        await held.call("sleep", 4.0)

                nursery.start_soon(lease)
                await trio.sleep(1.4)  # w1 served its max: its recycle waits for the lease
                with pytest.raises(corral.UpgradeFailed):
                    await pool.upgrade("v2", surge=1, unavailable=1, probation=0)
                check_invariants(pool)
            await trio.sleep(5)
            check_invariants(pool)
            assert len(pool.workers()) == 1
        assert recycles == ["w1"], recycles

    run(main)


# -- a recycle during a rollout leaves the pool at its size


def test_a_recycle_during_a_rollout_leaves_the_pool_at_size() -> None:
    """size=3, surge=1, probation=0.5, starts take 0.2 s, max_requests=2. The third old
    worker, leased, serves its 2nd call as batch 3 starts its new worker: its recycle
    stops it and leaves the replacement to the upgrade, which counts the slots still
    starting too. The pool ends with exactly 3 workers."""
    versions = Versions(Script(start_delay=0.2))

    async def main() -> None:
        async with corral.open_pool("v1", size=3, max_requests=2, worker_factory=versions.factory) as pool:
            last = pool._slots.member_of(pool._slots.slots_of(pool._slots.release)[-1])
            assert last is not None
            async with trio.open_nursery() as nursery:
                entered = trio.Event()

                async def lease_on(target: str) -> None:
                    async with pool.checkout() as held:
                        entered.set()
                        if held.id == target:
                            await held.call("sleep", 0.0)
                            await held.call("sleep", 1.5)  # its 2nd: due when it ends
                        else:
                            await trio.sleep(0.01)

                for _ in range(3):  # one lease per worker: one of them is the last slot's
                    nursery.start_soon(lease_on, last.id)
                await entered.wait()
                await trio.sleep(0.02)
                rollout = await pool.upgrade("v2", surge=1, probation=0.5)
                assert rollout.phase == "done"
            await trio.sleep(10)
            ids = [(w.id, w.version) for w in pool.workers()]
            assert len(ids) == 3, ids

    run(main)


# -- random programs of calls, sessions, leases, crashes, recycles and upgrades


ACTION = st.one_of(
    st.tuples(st.just("call"), st.sampled_from([0.0, 0.3, 1.5]), st.sampled_from([None, "a", "b"])),
    st.tuples(st.just("lease"), st.sampled_from([0.2, 1.0]), st.sampled_from([None, "a", "b"])),
    st.tuples(st.just("end"), st.sampled_from(["a", "b"])),
    st.tuples(st.just("crash"), st.integers(0, 5)),
    st.tuples(
        st.just("upgrade"),
        st.sampled_from(["ok", "ok", "start_fails"]),
        st.integers(0, 2),  # surge
        st.integers(0, 1),  # unavailable
        st.sampled_from(["wait", "move"]),
        st.sampled_from([0.0, 0.5]),  # probation
    ),
    st.tuples(st.just("cancel_upgrade")),
    st.tuples(st.just("sleep"), st.sampled_from([0.0, 0.05, 0.5, 2.0])),
)
EXPECTED = (
    corral.SessionLost,
    corral.WorkerCrashed,
    corral.CheckoutTimeout,
    corral.UpgradeFailed,
    corral.RequestTimeout,
)


@settings(
    max_examples=int(os.environ.get("CORRAL_TEST_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    size=st.integers(1, 3),
    pipelining=st.booleans(),
    max_requests=st.sampled_from([None, None, 2, 5]),
    lazy=st.booleans(),
    program=st.lists(ACTION, max_size=25),
)
def test_random_programs_keep_the_checkout_invariants(
    size: int, pipelining: bool, max_requests: int | None, lazy: bool, program: list[tuple[Any, ...]]
) -> None:
    versions = Versions(Script(pipelining=pipelining))
    orig = versions.factory

    def factory(launcher, options, worker_id, on_state):  # type: ignore[no-untyped-def]
        worker = orig(launcher, options, worker_id, on_state)
        if versions.of[worker_id] == versions.fail_version:
            worker.script = Script(start_error=corral.WorkerCrashed("init failed"))
        return worker

    unexpected: list[BaseException] = []
    counter = {"v": 1}

    async def main() -> None:
        async with corral.open_pool(
            "v1",
            size=size,
            lazy=lazy,
            max_requests=max_requests,
            checkout_timeout=120,
            worker_factory=factory,
        ) as pool:
            upgrading: list[trio.CancelScope] = []
            upgrading_now: list[str] = []  # one upgrade() call at a time (a cancelled one returns at once)

            async def guard(fn: Any) -> None:
                try:
                    await fn()
                except EXPECTED:
                    pass
                except corral.CircuitOpen:
                    if not lazy:  # a lazy pool upgraded with no worker: test 5
                        raise
                except BaseException as exc:
                    if not isinstance(exc, trio.Cancelled):
                        unexpected.append(exc)
                    raise

            async def checker() -> None:
                while True:
                    check_invariants(pool)
                    specs = pool._slots.sup.count_children().specs + len(pool._slots.starting)
                    assert specs <= size + 2, (specs, size)
                    await trio.sleep(0.01)

            async with trio.open_nursery() as watch:
                watch.start_soon(checker)
                with trio.fail_after(600):
                    async with trio.open_nursery() as nursery:
                        for action in program:
                            kind = action[0]
                            if kind == "call":
                                _, dur, session = action
                                nursery.start_soon(
                                    guard, lambda d=dur, s=session: pool.call("sleep", d, session=s)
                                )
                            elif kind == "lease":
                                _, dur, session = action

                                async def lease(d: float = dur, s: Any = session) -> None:
                                    async with pool.checkout(session=s) as held:
                                        await held.call("sleep", d)

                                nursery.start_soon(guard, lease)
                            elif kind == "end":
                                pool.end_session(action[1])
                            elif kind == "crash":
                                live = [m.worker for m in pool._slots.members.values() if m.worker.ready_at]
                                if live:
                                    live[action[1] % len(live)].crash()
                            elif kind == "upgrade":
                                if upgrading_now or (lazy and not pool._slots.members):
                                    continue  # test 5: an empty lazy pool judges no version
                                _, outcome, surge, unavailable, policy, probation = action
                                if surge + unavailable == 0:
                                    surge = 1
                                counter["v"] += 1
                                name = f"v{counter['v']}"
                                versions.fail_version = name if outcome == "start_fails" else None

                                async def upgrade(
                                    n: str = name,
                                    su: int = surge,
                                    un: int = unavailable,
                                    p: str = policy,
                                    pr: float = probation,
                                ) -> None:
                                    try:
                                        with trio.CancelScope() as scope:
                                            upgrading.append(scope)
                                            await pool.upgrade(
                                                n,
                                                surge=su,
                                                unavailable=un,
                                                sessions=p,
                                                probation=pr,
                                                session_deadline=5,
                                            )
                                    finally:
                                        upgrading_now.clear()

                                upgrading_now.append(name)
                                nursery.start_soon(guard, upgrade)
                            elif kind == "cancel_upgrade":
                                for scope in upgrading:
                                    scope.cancel()
                            elif kind == "sleep":
                                await trio.sleep(action[1])
                            check_invariants(pool)
                        for session in ("a", "b"):  # let the last upgrade's "wait" end
                            pool.end_session(session)
                while pool._rollout is not None:
                    await trio.sleep(0.1)
                await trio.sleep(10)  # restarts, top-up, recycles settle
                check_invariants(pool)
                slots = pool._slots
                members = list(slots.members.values())
                assert slots.pending == 0 and not slots.starting
                assert pool._checkout.queued == 0 and pool._checkout.held == 0
                if not lazy:  # over size after a recycle during a rollout: test 8
                    assert len(members) >= size, (len(members), size, pool.statistics().rollout)
                    if max_requests is None:
                        assert len(members) == size, (len(members), size, pool.statistics().rollout)
                assert all(m.release is slots.release for m in members), (
                    [(m.id, m.release.number) for m in members],
                    slots.release.number,
                )
                assert not any(m.recycling or m.keeps_sessions for m in members)
                assert len(pool._checkout.idle) == sum(m.worker.depth for m in members)
                watch.cancel_scope.cancel()
        assert unexpected == [], unexpected

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
