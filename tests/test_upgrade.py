"""pool.upgrade(): new code in, old workers out, no failed call (docs/pool.md,
"Upgrading without downtime"). Real worker processes; each test writes its own handler
module into a temporary folder on sys.path and edits it in place, as a deploy would.
"""

from __future__ import annotations

import itertools
import os
import textwrap
from pathlib import Path

import pytest
import trio

import corral

_names = itertools.count(1)

VERSION_1 = """
import os
VERSION = 1
def init(*args):
    global ARGS
    ARGS = list(args)
def version():
    return VERSION
def args():
    return ARGS
def pid():
    return os.getpid()
def parent():
    return os.getppid()
COUNTS = {}
def count(key):
    COUNTS[key] = COUNTS.get(key, 0) + 1
    return [VERSION, COUNTS[key]]
"""

VERSION_2 = VERSION_1.replace("VERSION = 1", "VERSION = 2")

VERSION_2_INIT_FAILS = (
    VERSION_2
    + """
def init(*args):
    raise RuntimeError("version 2 cannot find its model file")
"""
)

VERSION_2_CRASHES = (
    VERSION_2
    + """
def version():
    os._exit(3)
"""
)


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A fresh handler module (version 1) importable by the workers: (name, path)."""
    name = f"upgrade_handlers_{next(_names)}"
    path = tmp_path / f"{name}.py"
    deploy(path, VERSION_1)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name, path


def deploy(path: Path, source: str) -> None:
    """Write a new version of the handler module in place, as a deploy does."""
    path.write_text(textwrap.dedent(source))


class Load:
    """Callers in a tight loop of calls; every result and every failure is kept."""

    def __init__(self, pool: corral.Pool) -> None:
        self.pool = pool
        self.results: list[tuple[float, int]] = []  # (finished at, version)
        self.failures: list[BaseException] = []
        self.stop = False

    async def caller(self) -> None:
        while not self.stop:
            try:
                version = await self.pool.call("version")
            except corral.CorralError as exc:
                self.failures.append(exc)
            else:
                self.results.append((trio.current_time(), version))


async def _upgrade_under_load(pool: corral.Pool, path: Path, callers: int = 8, **upgrade: object) -> Load:
    load = Load(pool)
    async with trio.open_nursery() as nursery:
        for _ in range(callers):
            nursery.start_soon(load.caller)
        await trio.sleep(0.2)
        deploy(path, VERSION_2)
        rollout = await pool.upgrade(**upgrade)  # type: ignore[arg-type]
        done_at = trio.current_time()
        assert rollout.phase == "done"
        await trio.sleep(0.3)
        load.stop = True
    after = [v for t, v in load.results if t > done_at]
    assert after and set(after) == {2}, "every call after the rollout is served by version 2"
    assert {v for _, v in load.results} == {1, 2}
    return load


@pytest.mark.parametrize(
    "options",
    [
        {"pipeline": 1},
        {"pipeline": 4},
        {"start_method": "forkserver"},
    ],
    ids=["pipeline=1", "pipeline=4", "forkserver"],
)
async def test_an_upgrade_under_8_callers_fails_no_call(
    module: tuple[str, Path], options: dict[str, object]
) -> None:
    name, path = module
    with trio.fail_after(60):
        async with corral.open_pool(name, size=3, **options) as pool:  # type: ignore[arg-type]
            old_pids = {w.pid for w in pool.workers()}
            load = await _upgrade_under_load(pool, path, probation=0.2)
            assert load.failures == []
            infos = pool.workers()
            assert len(infos) == 3
            assert {w.version for w in infos} == {2}
            assert not old_pids & {w.pid for w in infos}
            assert pool.version == 2
            stats = pool.statistics()
            assert stats.version == 2
            assert stats.rollout == corral.Rollout(1, 2, "done", 3, 3)
    # the autouse fixture checks that no process is left behind


async def test_surge_and_unavailable_bound_the_worker_count(module: tuple[str, Path]) -> None:
    name, path = module
    counts: list[int] = []
    with trio.fail_after(60):
        async with corral.open_pool(name, size=4, pipeline=1) as pool:

            def count(event: corral.WorkerEvent) -> None:
                counts.append(len(pool.workers()))

            pool.subscribe(count)
            deploy(path, VERSION_2)
            await pool.upgrade(surge=2, unavailable=1, probation=0)
            assert {w.version for w in pool.workers()} == {2}
    assert max(counts) <= 4 + 2
    assert max(counts) > 4, "the surge was used"


async def _failing_upgrade_under_load(
    pool: corral.Pool, probation: float
) -> tuple[Load, corral.UpgradeFailed]:
    """An upgrade expected to roll back, under 8 callers in a tight loop."""
    load = Load(pool)
    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(load.caller)
        with pytest.raises(corral.UpgradeFailed) as info:
            await pool.upgrade(probation=probation)
        load.stop = True
    return load, info.value


async def test_a_version_whose_init_fails_is_rolled_back(module: tuple[str, Path]) -> None:
    name, path = module
    with trio.fail_after(60):
        async with corral.open_pool(name, size=3, pipeline=1) as pool:
            old_pids = {w.pid for w in pool.workers()}
            deploy(path, VERSION_2_INIT_FAILS)
            load, failed = await _failing_upgrade_under_load(pool, probation=0.2)
            assert "version 2 failed" in str(failed)
            assert "cannot find its model file" in str(failed)
            assert failed.version == 2
            assert failed.failed_calls == 0
            assert load.failures == [], "a version that never started failed no call"
            assert {v for _, v in load.results} == {1}
            infos = pool.workers()
            assert {w.pid for w in infos} == old_pids, "the old workers were never touched"
            assert pool.version == 1
            stats = pool.statistics()
            assert stats.rollout is not None and stats.rollout.phase == "rolled back"
            assert "cannot find its model file" in (stats.rollout.error or "")
            assert await pool.call("version") == 1


async def test_a_version_that_crashes_on_its_first_calls_is_rolled_back(module: tuple[str, Path]) -> None:
    name, path = module
    with trio.fail_after(60):
        async with corral.open_pool(name, size=3, pipeline=1) as pool:
            deploy(path, VERSION_2_CRASHES)
            load, failed = await _failing_upgrade_under_load(pool, probation=2.0)
            # surge=1, unavailable=0: one version-2 worker was on probation when it died,
            # and only the call it was running failed.
            assert len(load.failures) <= 1
            assert all(isinstance(f, corral.WorkerCrashed) for f in load.failures)
            assert failed.failed_calls == len(load.failures)
            assert {w.version for w in pool.workers()} == {1}
            assert len(pool.workers()) == 3
            assert await pool.call("version") == 1


async def test_init_args_and_env_change_in_an_upgrade(module: tuple[str, Path]) -> None:
    name, _ = module
    with trio.fail_after(60):
        async with corral.open_pool(corral.PythonModule(name, init_args=("small",)), size=2) as pool:
            assert await pool.call("args") == ["small"]
            await pool.upgrade(
                corral.PythonModule(name, init_args=("large", 2)), probation=0, max_requests=100
            )
            assert await pool.call("args") == ["large", 2]
            assert pool.options.max_requests == 100


async def test_bad_upgrade_arguments_are_rejected_naming_the_field(module: tuple[str, Path]) -> None:
    name, _ = module
    with trio.fail_after(30):
        async with corral.open_pool(name, size=1) as pool:
            with pytest.raises(corral.InvalidSpec, match=r"^size: cannot change in an upgrade"):
                await pool.upgrade(size=3)
            with pytest.raises(corral.InvalidSpec, match=r"^colour: is not an option"):
                await pool.upgrade(colour="red")
            with pytest.raises(corral.InvalidSpec, match=r"^surge: surge and unavailable cannot both be 0"):
                await pool.upgrade(surge=0)
            with pytest.raises(corral.InvalidSpec, match=r"^sessions:"):
                await pool.upgrade(sessions="keep")
            with pytest.raises(corral.InvalidSpec, match=r"^request_timeout:"):
                await pool.upgrade(request_timeout=-1)
            assert pool.version == 1
            assert pool.statistics().rollout is None


async def test_a_cancelled_upgrade_rolls_back(module: tuple[str, Path]) -> None:
    name, path = module
    with trio.fail_after(60):
        async with corral.open_pool(name, size=2, pipeline=1) as pool:
            old_pids = {w.pid for w in pool.workers()}
            deploy(path, VERSION_2)
            with trio.move_on_after(0.1):  # the new worker is READY, on probation
                await pool.upgrade(probation=5.0)
            while pool.statistics().rollout.phase != "rolled back":  # type: ignore[union-attr]
                await trio.sleep(0.02)
            assert {w.pid for w in pool.workers()} == old_pids
            assert await pool.call("version") == 1
            assert pool.version == 1
            assert pool.statistics().rollout.error == "CorralError: upgrade() was cancelled by its caller"  # type: ignore[union-attr]


async def test_a_second_upgrade_while_one_runs_is_refused(module: tuple[str, Path]) -> None:
    name, path = module
    with trio.fail_after(60):
        async with corral.open_pool(name, size=1) as pool, trio.open_nursery() as nursery:
            deploy(path, VERSION_2)
            nursery.start_soon(lambda: pool.upgrade(probation=0.5))
            await trio.sleep(0.05)
            with pytest.raises(RuntimeError, match="already upgrading"):
                await pool.upgrade()


async def test_sessions_move_loses_each_session_once(module: tuple[str, Path]) -> None:
    name, path = module
    with trio.fail_after(60):
        async with corral.open_pool(name, size=2, pipeline=1) as pool:
            assert await pool.call("count", "a", session="a") == [1, 1]
            deploy(path, VERSION_2)
            await pool.upgrade(sessions="move", probation=0)
            with pytest.raises(corral.SessionLost):
                await pool.call("count", "a", session="a")
            assert await pool.call("count", "a", session="a") == [2, 1]


async def test_sessions_wait_keeps_a_session_on_its_worker_until_it_ends(module: tuple[str, Path]) -> None:
    name, path = module
    with trio.fail_after(60):
        async with corral.open_pool(name, size=1, pipeline=1) as pool, trio.open_nursery() as nursery:
            assert await pool.call("count", "a", session="a") == [1, 1]
            deploy(path, VERSION_2)
            finished = trio.Event()

            async def upgrade() -> None:
                await pool.upgrade(sessions="wait", session_deadline=30, probation=0)
                finished.set()

            nursery.start_soon(upgrade)
            draining = trio.Event()
            pool.subscribe(lambda event: draining.set() if "draining" in event.detail else None)
            await draining.wait()
            for n in range(2, 6):  # served on by its old worker while the upgrade waits
                assert await pool.call("count", "a", session="a") == [1, n]
                assert await pool.call("version") == 2, "new callers go to the new version"
                await trio.sleep(0.05)
            assert not finished.is_set()
            pool.end_session("a")
            await finished.wait()
            assert await pool.call("count", "a", session="a") == [2, 1]  # a new session, no SessionLost
            assert {w.version for w in pool.workers()} == {2}


async def test_sessions_wait_moves_them_at_the_deadline(module: tuple[str, Path]) -> None:
    name, path = module
    with trio.fail_after(60):
        async with corral.open_pool(name, size=1, pipeline=1) as pool:
            assert await pool.call("count", "a", session="a") == [1, 1]
            deploy(path, VERSION_2)
            start = trio.current_time()
            await pool.upgrade(sessions="wait", session_deadline=0.5, probation=0)
            assert trio.current_time() - start >= 0.5
            with pytest.raises(corral.SessionLost):
                await pool.call("count", "a", session="a")
            assert await pool.call("count", "a", session="a") == [2, 1]


async def test_the_fork_server_template_is_replaced_first_and_the_old_one_stops(
    module: tuple[str, Path],
) -> None:
    name, path = module
    with trio.fail_after(60):
        async with corral.open_pool(name, size=2, start_method="forkserver") as pool:
            old_template = await pool.call("parent")
            deploy(path, VERSION_2)
            await pool.upgrade(probation=0)
            parents = {await pool.call("parent") for _ in range(10)}
            assert len(parents) == 1 and old_template not in parents
            assert await pool.call("version") == 2
            with trio.fail_after(5):
                while _exists(old_template):
                    await trio.sleep(0.02)


async def test_a_fork_server_template_that_cannot_import_the_new_version_rolls_back(
    module: tuple[str, Path],
) -> None:
    name, path = module
    with trio.fail_after(60):
        async with corral.open_pool(name, size=2, start_method="forkserver") as pool:
            old_template = await pool.call("parent")
            deploy(path, VERSION_2 + "\nraise ImportError('numpy is missing')\n")
            with pytest.raises(corral.UpgradeFailed, match="numpy is missing"):
                await pool.upgrade(probation=0)
            assert await pool.call("parent") == old_template
            assert await pool.call("version") == 1


async def test_an_edit_within_the_same_second_and_of_the_same_size_is_picked_up(
    module: tuple[str, Path],
) -> None:
    """Python's bytecode cache compares the source's mtime in whole seconds and its size:
    version 2 below has both of version 1's, and still runs after the upgrade."""
    name, path = module
    with trio.fail_after(60):
        async with corral.open_pool(name, size=1) as pool:
            assert await pool.call("version") == 1
            before = os.stat(path)
            deploy(path, VERSION_2)
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
            assert os.stat(path).st_size == before.st_size
            await pool.upgrade(probation=0)
            assert await pool.call("version") == 2


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_rollback_says_when_old_workers_had_to_start_from_the_changed_file(
    module: tuple[str, Path], tmp_path: Path
) -> None:
    """Spawned workers import the module as it is on disk: once version 2 replaced it in
    place, a rollback past the first batch cannot bring version 1's code back, and says so."""
    name, path = module
    counter = tmp_path / "starts"
    second_start_fails = (
        VERSION_2
        + f"""
def init(*args):
    import pathlib
    counter = pathlib.Path({str(counter)!r})
    starts = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(starts))
    if starts >= 2:
        raise RuntimeError("the second start of version 2 fails")
"""
    )
    with trio.fail_after(60):
        async with corral.open_pool(name, size=2, pipeline=1) as pool:
            deploy(path, second_start_fails)
            with pytest.raises(corral.UpgradeFailed, match="had to start from the handler module on disk"):
                await pool.upgrade(probation=0)
            assert await pool.call("version") == 1  # the old worker not yet replaced serves on


async def test_an_old_worker_still_waiting_for_its_sessions_is_kept_by_a_rollback(
    module: tuple[str, Path],
) -> None:
    """Cancelled while the old worker serves its session until it ends: the rollback keeps
    that worker (and the session's state) instead of stopping it and starting another."""
    name, path = module
    with trio.fail_after(60):
        async with corral.open_pool(name, size=1, pipeline=1) as pool:
            old_pid = await pool.call("pid")
            assert await pool.call("count", "a", session="a") == [1, 1]
            deploy(path, VERSION_2)
            draining = trio.Event()
            pool.subscribe(lambda event: draining.set() if "draining" in event.detail else None)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: pool.upgrade(sessions="wait", session_deadline=30, probation=0))
                await draining.wait()
                nursery.cancel_scope.cancel()
            while pool.statistics().rollout.phase != "rolled back":  # type: ignore[union-attr]
                await trio.sleep(0.02)
            assert await pool.call("count", "a", session="a") == [1, 2], "the session kept its state"
            assert [w.pid for w in pool.workers()] == [old_pid]
            assert await pool.call("version") == 1
