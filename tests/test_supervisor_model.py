"""Model-based test: a real ``corral.Supervisor`` against a small model of OTP's rules.

A hypothesis ``RuleBasedStateMachine`` drives both side by side: random strategies,
restart types, intensities and shutdown behaviours; random crashes, normal and
``Shutdown`` exits, ``terminate_child``/``restart_child``/``delete_child``/``start_child``
calls, start failures, clock jumps, orderly stops and re-runs. After every step it
compares ``which_children()`` (ids in order, states, restart counts, values, last exit
reasons), ``count_children()``, the API's answers and errors, how ``run()`` ended, the
exact order and virtual time of every child start, failed start and exit, and the clock.

How trio is driven from a synchronous state machine: one ``trio.run`` per example lives
in a background thread; each rule hands it one step with ``trio.from_thread.run``. The
``MockClock`` never moves by itself (no autojump: an idle loop would spin waiting for
the thread); a step moves it only by jumping to the next pending deadline while every
task is blocked, up to the time the model says the step ends. All times used are
dyadic fractions, so float sums are exact on both sides.

The model (class ``Model``) encodes DESIGN.md §2:
- PERMANENT always restarts; TRANSIENT only after an abnormal exit; TEMPORARY never,
  and its spec is forgotten whenever it stops (also as a bystander or by terminate).
- one_for_one restarts the dead child; one_for_all stops the other running children in
  reverse order, then starts the whole group in order; rest_for_one does that for the
  dead child and every child after it. As in OTP, a member that was stopped (by
  terminate_child or a TRANSIENT normal exit) is started with its group.
- Restart intensity: a sliding window of restart attempts, failed ones included; a
  stamp exactly ``max_seconds`` old still counts; more than ``max_restarts`` → every
  child stopped in reverse order and ``run()`` raises ``RestartIntensityExceeded``.
- A failed automatic restart is retried at once (one_for_all: the whole group again;
  rest_for_one: from the child that failed).
- ``restarts`` counts successful automatic restarts of a child, bystanders included;
  ``restart_child`` does not count.
- Stops are sequential, in reverse start order, two-phase: a child that ignores its
  stop request is cancelled after its grace (which takes that much virtual time).
- API errors: NotFound, ChildRunning (restart/delete of a running child), AlreadyPresent
  (any id in use), ChildStartError (failed start_child keeps no spec; failed
  restart_child leaves the child STOPPED), SupervisorNotRunning after ``run()`` ended.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import attrs
import trio
import trio.testing
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

import corral
from corral import (
    AlreadyPresent,
    ChildRunning,
    ChildSpec,
    ChildStartError,
    ChildState,
    NotFound,
    Restart,
    RestartIntensityExceeded,
    Strategy,
    Supervisor,
    SupervisorNotRunning,
)

T = TypeVar("T")

RUNNING, RESTARTING, STOPPED = ChildState.RUNNING, ChildState.RESTARTING, ChildState.STOPPED

EXITS = ("normal", "shutdown", "abnormal")
# How a child reacts to its stop request: return, raise Shutdown, raise an error, or
# ignore it (then it is cancelled once its grace runs out).
STOP_MODES = ("return", "shutdown", "raise", "ignore")
GRACES = (corral.BRUTAL_KILL, 0.5, 1.0)
MAX_SECONDS = (0.5, 1.0, 2.0, 5.0)
JUMPS = (0.25, 0.5, 1.0, 2.0, 5.0)

LogEntry = tuple[str, str, float]  # ("start" | "startfail" | "exit", child id, virtual time)
Result = tuple[str, object]  # ("ok", value) or ("raise", exception type)


class StartFailure(Exception):
    """A child armed to fail raises this before calling task_status.started()."""


# -- the real side: controllable children -------------------------------------------


@attrs.define(eq=False)
class _Incarnation:
    command: str | None = None
    wake: trio.Event = attrs.Factory(trio.Event)
    done: trio.Event = attrs.Factory(trio.Event)


@attrs.define(eq=False)
class Harness:
    """What the children share with the test: the log, start-failure arming, commands."""

    log: list[LogEntry] = attrs.Factory(list)
    attempts: dict[str, int] = attrs.Factory(dict)
    fail_armed: dict[str, int] = attrs.Factory(dict)
    current: dict[str, _Incarnation] = attrs.Factory(dict)
    # on_stop[x] = (y, how): when x is asked to stop (grace > 0), y exits that way first
    on_stop: dict[str, tuple[str, str]] = attrs.Factory(dict)

    async def child(self, cid: str, stop_mode: str, *, task_status: trio.TaskStatus[str]) -> None:
        number = self.attempts[cid] = self.attempts.get(cid, 0) + 1
        if self.fail_armed.get(cid, 0) > 0:
            self.fail_armed[cid] -= 1
            self.log.append(("startfail", cid, trio.current_time()))
            raise StartFailure(cid)
        me = self.current[cid] = _Incarnation()
        self.log.append(("start", cid, trio.current_time()))
        ctx = corral.current_child()
        task_status.started(f"{cid}#{number}")
        try:
            async with trio.open_nursery() as nursery:

                async def watch_stop() -> None:
                    await ctx.stop_requested.wait()
                    me.wake.set()

                nursery.start_soon(watch_stop)
                await me.wake.wait()
                nursery.cancel_scope.cancel()
            command = me.command
            if command is None:  # the supervisor asked us to stop
                if cid in self.on_stop:
                    other, how = self.on_stop.pop(cid)
                    victim = self.current.get(other)
                    if victim is not None and not victim.done.is_set():
                        self.command(other, how)
                        await victim.done.wait()
                if stop_mode == "ignore":
                    await trio.sleep_forever()
                command = {"return": "normal", "shutdown": "shutdown", "raise": "abnormal"}[stop_mode]
            if command == "abnormal":
                raise RuntimeError(f"{cid} crashed")
            if command == "shutdown":
                raise corral.Shutdown(f"{cid} shut down")
        finally:
            self.log.append(("exit", cid, trio.current_time()))
            me.done.set()

    def command(self, cid: str, how: str) -> None:
        me = self.current[cid]
        me.command = how
        me.wake.set()


class _Relay(trio.TaskStatus[Supervisor]):
    """Passes ``started`` on and remembers that it was called."""

    def __init__(self, real: trio.TaskStatus[Supervisor]) -> None:
        self.real = real
        self.called = False

    def started(self, value: Supervisor | None = None) -> None:
        self.called = True
        self.real.started(value)  # type: ignore[arg-type]


class TrioThread:
    """One ``trio.run`` (MockClock, no autojump) in a background thread, driven step by step."""

    def __init__(self) -> None:
        self.clock = trio.testing.MockClock()
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the trio thread did not start")

    def _main(self) -> None:
        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._ready.set()
                await trio.sleep_forever()

        try:
            trio.run(main, clock=self.clock)
        except BaseException as exc:
            self.error = exc
            self._ready.set()

    @property
    def nursery(self) -> trio.Nursery:
        assert self._nursery is not None
        return self._nursery

    def run(self, afn: Callable[[], Awaitable[T]]) -> T:
        assert self._token is not None
        return trio.from_thread.run(afn, trio_token=self._token)

    def close(self) -> None:
        if self._token is not None and self._nursery is not None:
            try:
                self._token.run_sync_soon(self._nursery.cancel_scope.cancel)
            except trio.RunFinishedError:
                pass
        self._thread.join(10)
        assert not self._thread.is_alive(), "the trio thread did not finish"
        assert self.error is None, f"trio.run failed: {self.error!r}"


# -- the model ------------------------------------------------------------------------


@attrs.define
class MChild:
    id: str
    restart: Restart
    stop_mode: str
    grace: float
    state: ChildState = STOPPED
    restarts: int = 0
    value: str | None = None
    last_exit: str | None = None
    pending: Pending | None = None  # exited during an operation, not yet handled


@attrs.define(eq=False)
class Pending:
    """An exit that happened while the supervisor was busy: handled after, unless the
    operation stops that child anyway (then the exit is its stop)."""

    child: MChild
    how: str
    live: bool = True


class Escalated(Exception):
    """Model: restart intensity exceeded."""


class Refused(Exception):
    """Model: the API call raises ``kind``."""

    def __init__(self, kind: type[Exception]) -> None:
        super().__init__(kind.__name__)
        self.kind = kind


class Model:
    """OTP's supervisor rules in plain Python, one method per API call or event."""

    def __init__(
        self,
        strategy: Strategy,
        max_restarts: int,
        max_seconds: float,
        specs: list[tuple[str, Restart, str, float]],
    ) -> None:
        self.strategy = strategy
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self.specs = specs
        self.now = 0.0
        self.attempts: dict[str, int] = {}
        self.fail_armed: dict[str, int] = {}
        self.children: list[MChild] = []
        self.stamps: list[float] = []
        self.log: list[LogEntry] = []
        self.alive = False
        self.outcome: str | type[Exception] | None = None
        self.steps = 0  # steps since run()
        self.on_stop: dict[str, tuple[str, str]] = {}
        self.pending: list[Pending] = []

    # -- helpers

    def find(self, cid: str) -> MChild | None:
        return next((c for c in self.children if c.id == cid), None)

    def _start(self, c: MChild) -> bool:
        number = self.attempts[c.id] = self.attempts.get(c.id, 0) + 1
        if self.fail_armed.get(c.id, 0) > 0:
            self.fail_armed[c.id] -= 1
            self.log.append(("startfail", c.id, self.now))
            c.last_exit = "abnormal"
            return False
        self.log.append(("start", c.id, self.now))
        c.state = RUNNING
        c.value = f"{c.id}#{number}"
        return True

    def _stop(self, c: MChild) -> None:
        """Two-phase stop of a running child; the caller sets its new state."""
        assert c.state is RUNNING
        if c.pending is not None:  # it already exited: that exit is its stop
            event("exit during a stop: taken as its own stop")
            c.pending.live = False
            c.pending = None
            return
        if c.grace > 0 and c.id in self.on_stop:
            other_id, how = self.on_stop.pop(c.id)
            other = self.find(other_id)
            if other is not None and other.state is RUNNING and other.pending is None:
                self.log.append(("exit", other.id, self.now))
                other.last_exit = how
                other.value = None
                other.pending = Pending(other, how)
                self.pending.append(other.pending)
        if c.grace == 0:
            c.last_exit = "shutdown"  # cancelled at once
        elif c.stop_mode == "ignore":
            self.now += c.grace
            c.last_exit = "shutdown"  # cancelled when the grace ran out
        else:
            c.last_exit = {"return": "normal", "shutdown": "shutdown", "raise": "abnormal"}[c.stop_mode]
        self.log.append(("exit", c.id, self.now))
        c.value = None

    def _stop_all(self) -> None:
        for c in reversed(self.children):
            if c.state is RUNNING:
                self._stop(c)
            c.state = STOPPED
        self.alive = False

    def _group(self, c: MChild) -> list[MChild]:
        if self.strategy is Strategy.ONE_FOR_ONE:
            return [c]
        first = 0 if self.strategy is Strategy.ONE_FOR_ALL else self.children.index(c)
        return list(self.children[first:])  # OTP: the whole group, stopped members too

    def _count_restart(self) -> None:
        window_start = self.now - self.max_seconds
        self.stamps = [t for t in self.stamps if t >= window_start]  # inclusive window
        self.stamps.append(self.now)
        if len(self.stamps) > self.max_restarts:
            raise Escalated

    def _restart(self, dead: MChild) -> None:
        failed: MChild | None = dead
        while failed is not None:
            cause, failed = failed, None
            self._count_restart()
            for o in reversed(self._group(cause)):
                if o is not cause and o.state is RUNNING:
                    self._stop(o)
                    if o.restart is Restart.TEMPORARY:
                        o.state = STOPPED
                        self.children.remove(o)
                        continue
                o.state = RESTARTING
            group = [o for o in self._group(cause) if o.state is RESTARTING]
            event(f"{self.strategy.name}: restart of a group of {min(len(group), 3)}+")
            for m in group:
                if not self._start(m):
                    event("failed automatic restart")
                    failed = m
                    break
                m.restarts += 1

    def _not_running(self) -> None:
        if not self.alive:
            raise Refused(SupervisorNotRunning)

    def _get(self, cid: str) -> MChild:
        self._not_running()
        c = self.find(cid)
        if c is None:
            raise Refused(NotFound)
        return c

    def _api(self, fn: Callable[[], object]) -> Result:
        try:
            return ("ok", fn())
        except Refused as refused:
            event(f"API error {refused.kind.__name__}")
            return ("raise", refused.kind)
        finally:
            self._drain()

    # -- events and calls; each resets the step log and returns the API's answer

    def run(self) -> Result:
        self.log = []
        self.children = [MChild(cid, r, mode, grace) for cid, r, mode, grace in self.specs]
        self.stamps = []
        self.alive = True
        self.outcome = None
        self.steps = 0
        for c in self.children:
            if not self._start(c):
                self._stop_all()
                self._drain()
                self.outcome = ChildStartError
                return ("raise", ChildStartError)
        return ("ok", None)

    def _drain(self) -> None:
        """Handle the exits that happened during the last operation, in order."""
        while self.pending:
            p = self.pending.pop(0)
            if p.live and self.alive:
                event("exit during a stop: handled after")
                p.child.pending = None
                self._exited(p.child, p.how)
        self.pending = []

    def child_exits(self, cid: str, how: str) -> None:
        self.log = []
        c = self.find(cid)
        assert c is not None and c.state is RUNNING
        self.log.append(("exit", cid, self.now))
        c.last_exit = how
        c.value = None
        self._exited(c, how)
        self._drain()

    def _exited(self, c: MChild, how: str) -> None:
        if c.restart is Restart.PERMANENT or (c.restart is Restart.TRANSIENT and how == "abnormal"):
            c.state = RESTARTING
            try:
                self._restart(c)
            except Escalated:
                event("restart intensity exceeded")
                self._stop_all()
                self.outcome = RestartIntensityExceeded
        else:
            c.state = STOPPED
            if c.restart is Restart.TEMPORARY:
                self.children.remove(c)

    def terminate_child(self, cid: str) -> Result:
        self.log = []

        def call() -> None:
            c = self._get(cid)
            if c.state is RUNNING:
                self._stop(c)
                c.state = STOPPED
                if c.restart is Restart.TEMPORARY:
                    self.children.remove(c)

        return self._api(call)

    def restart_child(self, cid: str) -> Result:
        self.log = []

        def call() -> object:
            c = self._get(cid)
            if c.state is not STOPPED:
                raise Refused(ChildRunning)
            if not self._start(c):
                raise Refused(ChildStartError)
            return c.value

        return self._api(call)

    def delete_child(self, cid: str) -> Result:
        self.log = []

        def call() -> None:
            c = self._get(cid)
            if c.state is not STOPPED:
                raise Refused(ChildRunning)
            self.children.remove(c)

        return self._api(call)

    def start_child(self, cid: str, restart: Restart, stop_mode: str, grace: float) -> Result:
        self.log = []

        def call() -> object:
            self._not_running()
            if self.find(cid) is not None:
                raise Refused(AlreadyPresent)
            c = MChild(cid, restart, stop_mode, grace)
            self.children.append(c)
            if not self._start(c):
                self.children.remove(c)
                raise Refused(ChildStartError)
            return c.value

        return self._api(call)

    def stop(self) -> None:
        self.log = []
        self._stop_all()
        self.outcome = "returned"
        self._drain()

    def jump(self, dt: float) -> None:
        self.log = []
        self.now += dt


# -- the state machine -----------------------------------------------------------------

child_params = st.tuples(st.sampled_from(Restart), st.sampled_from(STOP_MODES), st.sampled_from(GRACES))


class SupervisorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.trio = TrioThread()
        self.harness = Harness()
        self.model: Model
        self.sup: Supervisor
        self.outcome: str | BaseException | None = None  # how the real run() ended
        self.step_log: list[LogEntry] = []
        self.known_ids: list[str] = []
        self.fresh = 0

    def teardown(self) -> None:
        self.trio.close()

    # -- plumbing

    def _step(self, action: Callable[[], Awaitable[object]]) -> tuple[str, object]:
        """Run ``action`` in trio, then let the supervisor settle until the model's time.

        Returns ("ok", value), ("raise", exception) or ("hung", None) when the action
        had not finished by then.
        """
        target = self.model.now

        async def step() -> tuple[str, object]:
            mark = len(self.harness.log)
            box: list[tuple[str, object]] = []

            async def act() -> None:
                try:
                    box.append(("ok", await action()))
                except Exception as exc:
                    box.append(("raise", exc))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(act)
                await self._settle(target)
                if not box:
                    box.append(("hung", None))
                    nursery.cancel_scope.cancel()
            self.step_log = self.harness.log[mark:]
            return box[0]

        return self.trio.run(step)

    async def _settle(self, target: float) -> None:
        """Jump the clock deadline by deadline (never past ``target``) while all is blocked."""
        while True:
            await trio.testing.wait_all_tasks_blocked()
            now = trio.current_time()
            jump = trio.lowlevel.current_statistics().seconds_to_next_deadline
            if now + jump > target:
                break
            self.trio.clock.jump(jump)
        if trio.current_time() < target:
            self.trio.clock.jump(target - trio.current_time())
            await trio.testing.wait_all_tasks_blocked()

    async def _host_run(self, *, task_status: trio.TaskStatus[Supervisor]) -> None:
        relay = _Relay(task_status)
        try:
            await self.sup.run(task_status=relay)
        except Exception as exc:
            if not relay.called:
                raise
            self.outcome = exc
        else:
            self.outcome = "returned"

    async def _snapshot(self) -> tuple[float, list[corral.ChildInfo], corral.ChildCounts]:
        return trio.current_time(), self.sup.which_children(), self.sup.count_children()

    def _id_pool(self) -> list[str]:
        """Ids an API call may name: present, formerly present, and one never used."""
        return [*self.known_ids, f"n{self.fresh}"]

    def _use(self, cid: str) -> None:
        if cid == f"n{self.fresh}":
            self.fresh += 1
        if cid not in self.known_ids:
            self.known_ids.append(cid)

    # -- checks

    def _check(self, expected: Result | None = None, got: tuple[str, object] | None = None) -> None:
        model = self.model
        if expected is not None:
            assert got is not None
            kind, payload = got
            assert kind != "hung", f"the call had not returned at t={model.now}; model: {expected}"
            if kind == "raise":
                assert isinstance(payload, BaseException)
                assert type(payload) is expected[1], f"raised {payload!r}; model: {expected}"
                if isinstance(payload, ChildStartError):
                    assert isinstance(payload.__cause__, StartFailure), repr(payload.__cause__)
            else:
                assert expected[0] == "ok", f"returned {payload!r}; model: {expected}"
                assert payload == expected[1], (payload, expected)
        model.steps += 1
        assert self.step_log == model.log, f"starts/exits:\n  real  {self.step_log}\n  model {model.log}"
        now, infos, counts = self.trio.run(self._snapshot)
        assert now == model.now, f"clock {now}, model {model.now}"
        assert self.harness.fail_armed == model.fail_armed
        assert self.harness.on_stop == model.on_stop
        real = [
            (i.id, i.state, i.restarts, i.value, i.last_exit.reason if i.last_exit else None) for i in infos
        ]
        if model.alive:
            want = [(c.id, c.state, c.restarts, c.value, c.last_exit) for c in model.children]
            assert real == want, f"which_children:\n  real  {real}\n  model {want}"
            running = sum(1 for c in model.children if c.state is RUNNING)
            assert counts == corral.ChildCounts(len(want), running, 0, len(want))
            assert self.outcome is None, f"run() ended: {self.outcome!r}"
            assert self.sup.running
        else:
            assert all(info[1] is STOPPED for info in real), real
            assert not self.sup.running
            if model.outcome == "returned":
                assert self.outcome == "returned", repr(self.outcome)
            elif model.outcome is RestartIntensityExceeded:
                assert type(self.outcome) is RestartIntensityExceeded, repr(self.outcome)

    # -- rules

    @initialize(
        strategy=st.sampled_from(Strategy),
        max_restarts=st.integers(0, 4),
        max_seconds=st.sampled_from(MAX_SECONDS),
        children=st.lists(child_params, min_size=1, max_size=5),
    )
    def start_supervisor(
        self,
        strategy: Strategy,
        max_restarts: int,
        max_seconds: float,
        children: list[tuple[Restart, str, float]],
    ) -> None:
        specs = [(f"c{i}", restart, mode, grace) for i, (restart, mode, grace) in enumerate(children)]
        self.model = Model(strategy, max_restarts, max_seconds, specs)
        self.known_ids = [cid for cid, *_ in specs]
        self.sup = Supervisor(
            [self._spec(cid, restart, mode, grace) for cid, restart, mode, grace in specs],
            strategy=strategy,
            max_restarts=max_restarts,
            max_seconds=max_seconds,
        )
        self._run()

    def _spec(self, cid: str, restart: Restart, mode: str, grace: float) -> ChildSpec:
        return ChildSpec(cid, self.harness.child, (cid, mode), restart=restart, shutdown=grace)

    def _run(self) -> None:
        expected = self.model.run()
        self.outcome = None

        async def start() -> None:
            await self.trio.nursery.start(self._host_run)

        self._check(expected, self._step(start))

    @precondition(lambda self: not self.model.alive)
    @rule()
    def rerun(self) -> None:
        """``run()`` again after it ended: it starts from the constructor's children."""
        self._run()

    def _child_exits(self, data: st.DataObject, how: str) -> None:
        running = [c.id for c in self.model.children if c.state is RUNNING]
        cid = data.draw(st.sampled_from(running), label="child")
        self.model.child_exits(cid, how)

        async def exit_child() -> None:
            self.harness.command(cid, how)

        self._step(exit_child)
        self._check()

    @precondition(lambda self: any(c.state is RUNNING for c in self.model.children))
    @rule(data=st.data())
    def child_crashes(self, data: st.DataObject) -> None:
        self._child_exits(data, "abnormal")

    @precondition(lambda self: any(c.state is RUNNING for c in self.model.children))
    @rule(data=st.data(), how=st.sampled_from(["normal", "shutdown"]))
    def child_exits(self, data: st.DataObject, how: str) -> None:
        """Returns (reason "normal") or raises ``corral.Shutdown`` (reason "shutdown")."""
        self._child_exits(data, how)

    @precondition(lambda self: self.model.alive)
    @rule(data=st.data())
    def terminate_child(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(self._id_pool()), label="id")
        expected = self.model.terminate_child(cid)
        self._check(expected, self._step(lambda: self.sup.terminate_child(cid)))

    @precondition(lambda self: self.model.alive)
    @rule(data=st.data())
    def restart_child(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(self._id_pool()), label="id")
        expected = self.model.restart_child(cid)
        self._check(expected, self._step(lambda: self.sup.restart_child(cid)))

    @precondition(lambda self: self.model.alive)
    @rule(data=st.data())
    def delete_child(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(self._id_pool()), label="id")
        expected = self.model.delete_child(cid)
        self._check(expected, self._step(lambda: self.sup.delete_child(cid)))

    @precondition(lambda self: self.model.alive)
    @rule(data=st.data(), params=child_params)
    def start_child(self, data: st.DataObject, params: tuple[Restart, str, float]) -> None:
        """A new id, a formerly used one, or one in use (AlreadyPresent)."""
        cid = data.draw(st.sampled_from(self._id_pool()), label="id")
        restart, mode, grace = params
        expected = self.model.start_child(cid, restart, mode, grace)
        self._use(cid)
        spec = self._spec(cid, restart, mode, grace)
        self._check(expected, self._step(lambda: self.sup.start_child(spec)))

    @precondition(
        lambda self: len(self.model.children) >= 2 and any(c.grace > 0 for c in self.model.children)
    )
    @rule(data=st.data(), how=st.sampled_from(EXITS))
    def arm_exit_during_stop(self, data: st.DataObject, how: str) -> None:
        """When child x is next asked to stop, child y exits first (while x is stopping).

        If the operation that stops x stops y too, y's exit is simply its stop; else it
        is handled (restart, intensity...) once that operation is over.
        """
        x = data.draw(st.sampled_from([c.id for c in self.model.children if c.grace > 0]), label="x")
        y = data.draw(st.sampled_from([c.id for c in self.model.children if c.id != x]), label="y")
        self.model.on_stop[x] = self.harness.on_stop[x] = (y, how)

    @rule(data=st.data(), times=st.integers(1, 3))
    def arm_start_failure(self, data: st.DataObject, times: int) -> None:
        """The next ``times`` starts of that id fail before ``started()``."""
        cid = data.draw(st.sampled_from(self._id_pool()), label="id")
        self.model.fail_armed[cid] = self.harness.fail_armed[cid] = times

    @rule(dt=st.sampled_from(JUMPS))
    def clock_jump(self, dt: float) -> None:
        self.model.jump(dt)

        async def jump() -> None:
            self.trio.clock.jump(dt)

        self._step(jump)
        self._check()

    @precondition(lambda self: not self.model.alive)
    @rule(data=st.data(), call=st.sampled_from(["terminate_child", "restart_child", "delete_child"]))
    def call_after_end(self, data: st.DataObject, call: str) -> None:
        """Once ``run()`` has ended the API refuses with SupervisorNotRunning."""
        cid = data.draw(st.sampled_from(self._id_pool()), label="id")
        expected = getattr(self.model, call)(cid)
        self._check(expected, self._step(lambda: getattr(self.sup, call)(cid)))

    @precondition(lambda self: self.model.alive and self.model.steps >= 10)
    @rule()
    def stop(self) -> None:
        """Orderly stop (rare: only after a few steps of each run)."""
        self.model.stop()
        self._step(self.sup.stop)
        self._check()


SupervisorMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSupervisorModel = SupervisorMachine.TestCase
