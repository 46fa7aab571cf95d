"""pool.upgrade() at its edges: cancels and closes at awkward moments, workers starting
when it begins, recycles and lazy starts during it, sessions queued on a retiring worker,
hosts, leases. Fake workers on MockClock where timing matters (exact, no processes),
real processes for what only they show. docs/pool.md, "Upgrading without downtime"."""

from __future__ import annotations

import shutil
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import trio
import trio.testing

import corral
from tests.fake_worker import Script, Versions
from tests.test_upgrade import VERSION_2, deploy
from tests.test_upgrade import module as module  # the fixture: a handler module in a temporary folder


def fake_pool(versions: Versions, **options: object) -> AbstractAsyncContextManager[corral.Pool]:
    return corral.open_pool("v1", worker_factory=versions.factory, **options)  # type: ignore[arg-type]


def run(main) -> None:  # type: ignore[no-untyped-def]
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_cancel_landing_as_the_rollout_ends_keeps_the_new_version() -> None:
    """The caller's cancel arrives just as the rollout is done (here from the "done"
    event; in life, a move_on_after expiring then): the version that went through stays,
    and its workers take calls."""
    versions = Versions(Script())

    async def main() -> None:
        async with corral.open_pool(
            "v1", size=2, worker_factory=versions.factory, checkout_timeout=5
        ) as pool:
            with trio.CancelScope() as scope:

                def on_event(event: corral.WorkerEvent) -> None:
                    if event.action == "upgrade" and "done" in event.detail:
                        scope.cancel()

                pool.subscribe(on_event)
                await pool.upgrade("v2", probation=0.5)
            assert pool.statistics().rollout.phase == "done"  # type: ignore[union-attr]
            assert {versions.of[w.id] for w in pool.workers()} == {"v2"}
            with trio.fail_after(10):
                assert await pool.call("echo", 1) == 1

    run(main)


def test_cancelling_an_upgrade_that_waits_for_sessions_rolls_back_at_once() -> None:
    """Cancelled while the old worker waits for its session: the rollback keeps that
    worker at once (not at the session deadline), for every caller, its session intact."""
    versions = Versions(Script())

    async def main() -> None:
        async with corral.open_pool(
            "v1", size=1, worker_factory=versions.factory, checkout_timeout=5
        ) as pool:
            await pool.call("echo", 1, session="a")
            with trio.move_on_after(1.0):  # new worker READY, probation 0: the old one drains, waits for "a"
                await pool.upgrade("v2", probation=0, sessions="wait", session_deadline=60)
            with trio.fail_after(10):
                assert await pool.call("echo", 2) == 2
            assert await pool.call("echo", 3, session="a") == 3  # its session was never lost

    run(main)


def test_a_worker_starting_when_the_upgrade_begins_is_replaced_too() -> None:
    """A lazy pool's worker still starting when the upgrade begins (the supervisor lists
    a child only once started) is waited for and replaced like the others."""
    script = Script(start_delay=1.0)
    versions = Versions(script)

    async def main() -> None:
        async with corral.open_pool("v1", size=2, lazy=True, worker_factory=versions.factory) as pool:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pool.call, "echo", 1)  # starts a v1 worker on demand (1 s)
                await trio.sleep(0.5)
                rollout = await pool.upgrade("v2", probation=0)
            assert rollout.phase == "done"
            infos = pool.workers()
            assert [w.version for w in infos] == [2] * len(infos), [(w.id, w.version) for w in infos]
            assert {versions.of[w.id] for w in infos} <= {"v2"}

    run(main)


@pytest.mark.parametrize("close_at", [0.25, 1.0])  # a new worker starting; on probation
def test_closing_the_pool_during_an_upgrade_raises_pool_closed(close_at: float) -> None:
    """A close while a batch's start runs: the Cancelled leaks out of the rollout's
    nurseries as a BaseExceptionGroup, which drive() stores as the outcome, and the
    caller of upgrade() - not cancelled itself - gets BaseExceptionGroup([Cancelled])."""
    versions = Versions(Script(start_delay=0.5))
    errors: list[BaseException] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery, fake_pool(versions, size=2) as pool:

            async def upgrade() -> None:
                try:
                    await pool.upgrade("v2", probation=2.0)
                except BaseException as exc:
                    errors.append(exc)

            nursery.start_soon(upgrade)
            await trio.sleep(close_at)
        assert len(errors) == 1
        assert isinstance(errors[0], corral.PoolClosed), repr(errors[0])

    run(main)


def test_a_failing_version_keeps_the_old_workers_still_draining() -> None:
    """unavailable=1: an old worker drains (waiting for its sessions) while the new one
    starts, and the new one fails to start: the old worker is kept at once, its
    sessions intact (not stopped at the session deadline and replaced)."""
    script = Script(start_delay=0.1)
    versions = Versions(script)

    async def main() -> None:
        async with corral.open_pool("v1", size=2, worker_factory=versions.factory) as pool:
            for key in "abcd":
                await pool.call("echo", 1, session=key)
            script.fail_starts = 1
            start = trio.current_time()
            try:
                await pool.upgrade("v2", surge=1, unavailable=1, probation=0, session_deadline=60)
            except corral.UpgradeFailed:
                pass
            took = trio.current_time() - start
            for key in "abcd":
                assert await pool.call("echo", 1, session=key) == 1
            assert took < 5, f"the rollback took {took} s"

    run(main)


@pytest.mark.parametrize("restart", list(corral.Restart))
def test_an_eager_pool_left_short_by_a_rollback_tops_itself_up(restart: corral.Restart) -> None:
    """size=2; version 2 passes batch 1, then its 2nd start fails, and so does the
    rollback's start of an old worker (as when the module was edited in place): the
    eager pool runs one worker short, then starts what is missing by itself, whatever
    its restart type (the pool stopped those workers itself; none ended on its own)."""
    script = Script()
    versions = Versions(script)

    async def main() -> None:
        async with corral.open_pool("v1", size=2, restart=restart, worker_factory=versions.factory) as pool:
            orig = versions.factory

            n = {"v2": 0}

            def factory(launcher, options, worker_id, on_state):  # type: ignore[no-untyped-def]
                w = orig(launcher, options, worker_id, on_state)
                if versions.of[worker_id] == "v2":
                    n["v2"] += 1
                    if n["v2"] >= 2:
                        script.fail_starts = 2  # the 2nd v2 start, and the restored v1 one
                return w

            pool._slots.factory = factory
            try:
                await pool.upgrade("v2", probation=0)
            except corral.UpgradeFailed:
                pass
            await trio.sleep(30)
            assert len(pool.workers()) == 2, pool.workers()

    run(main)


def test_a_new_version_worker_a_recycle_started_is_stopped_by_the_rollback() -> None:
    """max_requests recycles an old worker during the rollout, and its replacement (of
    the new version) is still starting when the new version is judged failing: the
    rollback waits for that start and stops it too; the pool ends on the old version."""
    script = Script(start_delay=1.0)
    versions = Versions(script)

    async def main() -> None:
        async with corral.open_pool("v1", size=2, max_requests=1, worker_factory=versions.factory) as pool:
            async with trio.open_nursery() as nursery:

                async def later_call() -> None:
                    await trio.sleep(0.5)
                    script.fail_starts = 1  # the first start to finish: the rollout's own (t=1)
                    await pool.call("echo", 1)  # w1/w2 serves 1 call -> recycled -> a v2 start (t=0.5..1.5)

                nursery.start_soon(later_call)
                try:
                    await pool.upgrade("v2", probation=0)
                except corral.UpgradeFailed:
                    pass
            await trio.sleep(5)
            infos = pool.workers()
            assert {versions.of[w.id] for w in infos} == {"v1"}, [
                (w.id, versions.of[w.id], w.version) for w in infos
            ]
            assert len(infos) == 2

    run(main)


def test_an_upgrade_after_a_cancelled_one_waits_for_its_rollback() -> None:
    """After upgrade() was cancelled its rollback runs on in the pool; a new upgrade()
    waits for it, then goes through."""
    versions = Versions(Script(start_delay=0.2))

    async def main() -> None:
        async with corral.open_pool("v1", size=2, worker_factory=versions.factory) as pool:
            with trio.move_on_after(0.5):
                await pool.upgrade("v2", probation=5)
            await pool.upgrade("v3", probation=0)

    run(main)


# -- real processes -------------------------------------------------------------------

NODE = shutil.which("node")
NODE_WORKER = Path(__file__).parent.parent / "examples" / "node_worker" / "worker.js"


async def test_upgrade_to_a_node_command_and_back(module: tuple[str, Path]) -> None:
    name, _ = module
    if NODE is None:
        pytest.skip("no node")
    with trio.fail_after(60):
        async with corral.open_pool(name, size=2) as pool:
            assert await pool.call("version") == 1
            await pool.upgrade(corral.Command([NODE, str(NODE_WORKER)]), probation=0.2)
            assert await pool.call("add", 2, 3) == 5
            await pool.upgrade(name, probation=0.2)
            assert await pool.call("version") == 1


async def test_an_upgrade_cannot_change_what_hosts_with_their_own_launcher_run(
    module: tuple[str, Path], tmp_path: Path
) -> None:
    """A host of hosts= that names its own launcher runs it: an upgrade to other handlers
    (or env, cwd) is refused before anything changes; reloading from disk works."""
    name, path = module
    other = f"{name}_v2"
    deploy(tmp_path / f"{other}.py", VERSION_2)
    with trio.fail_after(60):
        async with corral.open_pool(name, size=1, hosts=[corral.PythonModule(name)]) as pool:
            with pytest.raises(corral.InvalidSpec, match=r"^handlers: cannot change .* hosts="):
                await pool.upgrade(other, probation=0)
            with pytest.raises(corral.InvalidSpec, match=r"^env: cannot change"):
                await pool.upgrade(env={"A": "1"}, probation=0)
            assert pool.version == 1
            deploy(path, VERSION_2)
            await pool.upgrade(probation=0)
            assert await pool.call("version") == 2


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
async def test_closing_a_real_pool_during_an_upgrade(module: tuple[str, Path], start_method: str) -> None:
    name, path = module
    errors: list[BaseException] = []
    with trio.fail_after(60):
        async with (
            trio.open_nursery() as nursery,
            corral.open_pool(name, size=2, start_method=start_method) as pool,
        ):
            await pool.call("count", "a", session="a")
            deploy(path, VERSION_2)

            async def upgrade() -> None:
                try:
                    await pool.upgrade(probation=0.3)
                except BaseException as exc:
                    errors.append(exc)

            nursery.start_soon(upgrade)
            await trio.sleep(0.6)
    assert len(errors) == 1 and isinstance(errors[0], corral.PoolClosed), errors


async def test_a_lease_on_an_old_worker_is_cut_after_drain_timeout_with_a_clear_error(
    module: tuple[str, Path],
) -> None:
    """A lease held past drain_timeout on an old worker is cut (as at close), and the
    error says the worker was asked to stop, not that it crashed on its own."""
    name, path = module
    with trio.fail_after(60):
        async with corral.open_pool(name, size=1, drain_timeout=0.5) as pool, pool.checkout() as lease:
            deploy(path, VERSION_2)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: pool.upgrade(probation=0))
                with pytest.raises(corral.WorkerCrashed, match=r"asked to stop .* past drain_timeout"):
                    for _ in range(30):
                        await lease.call("version")
                        await trio.sleep(0.1)
            assert await pool.call("version") == 2


@pytest.mark.parametrize("pipelining", [False, True])
def test_session_callers_queued_on_a_retiring_worker_follow_their_session(pipelining: bool) -> None:
    """Three callers of one session, calling concurrently on the retiring old worker;
    the session ends (end_session) while some of them are queued for its worker."""
    script = Script(pipelining=pipelining)
    versions = Versions(script)
    failures: list[BaseException] = []

    async def main() -> None:
        async with corral.open_pool("v1", size=1, worker_factory=versions.factory) as pool:
            await pool.call("echo", 1, session="a")
            async with trio.open_nursery() as nursery:

                async def session_caller() -> None:
                    for _ in range(5):
                        try:
                            await pool.call("sleep", 1.0, session="a")
                        except corral.CorralError as exc:
                            failures.append(exc)

                nursery.start_soon(
                    lambda: pool.upgrade("v2", probation=0, sessions="wait", session_deadline=60)
                )
                await trio.sleep(0.01)
                for _ in range(3):
                    nursery.start_soon(session_caller)
                await trio.sleep(2.5)
                pool.end_session("a")
        assert failures == [], failures

    run(main)
