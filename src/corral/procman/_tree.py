"""The tree: ``Config`` -> a ``ProcessTree`` of ``corral.Supervisor``\\ s whose leaves run
commands (``build_tree``; nothing runs yet), a reload's plan carried out on it
(``ProcessTree.apply``), and the tree as text (``describe_tree``, what ``corral run
--check`` prints)."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import attrs
import trio

from corral._errors import AlreadyPresent, CorralError, NotFound, SupervisorNotRunning
from corral.procman._config import Config, ProcessConfig, SupervisorConfig
from corral.procman._logs import Console
from corral.procman._reload import Plan, Step, find, path_to, without
from corral.procman._runner import run_process, show_command
from corral.supervisor import AutoShutdown, ChildSpec, Supervisor, SupervisorEvent


@attrs.define(eq=False)
class ProcessTree:
    """The built tree: the root supervisor and the supervisor object of each nested one.

    A nested supervisor is built again from ``config`` when it starts after a reload
    changed its part of the config, as OTP calls a supervisor's ``init/1`` again when
    it restarts: its restarts then run the children the file has now.
    """

    config: Config
    console: Console | None = None
    root: Supervisor = attrs.field(init=False)
    #: by id: the supervisor running (or that last ran) each nested supervisor
    nested: dict[str, Supervisor] = attrs.field(init=False, factory=dict)
    #: set by ``corral run``'s first Ctrl-C: a reload under way ends after its current step
    stopping: bool = attrs.field(init=False, default=False)
    _built_from: dict[str, SupervisorConfig] = attrs.field(init=False, factory=dict)
    # Nested supervisors a reload changed while they ran: what they run is no longer
    # the specs they were built with, so their next start builds them again.
    _changed: set[str] = attrs.field(init=False, factory=set)
    _subscribers: list[Callable[[SupervisorEvent], None]] = attrs.field(init=False, factory=list)

    def __attrs_post_init__(self) -> None:
        self.root = self._build(self.config.root)

    @property
    def supervisors(self) -> list[Supervisor]:
        return [self.root, *self.nested.values()]

    def subscribe(self, callback: Callable[[SupervisorEvent], None]) -> None:
        """``callback(event)`` for every event of every supervisor, also of those built later."""
        self._subscribers.append(callback)
        for sup in self.supervisors:
            sup.subscribe(callback)

    def _build(self, sup: SupervisorConfig) -> Supervisor:
        for child in sup.children:
            if isinstance(child, SupervisorConfig):
                assert child.id is not None
                self.nested[child.id] = self._build(child)
                self._built_from[child.id] = child
        result = Supervisor(
            [self._spec(child) for child in sup.children],
            strategy=sup.strategy,
            max_restarts=sup.max_restarts,
            max_seconds=sup.max_seconds,
            auto_shutdown=sup.auto_shutdown,
            backoff=sup.backoff,
            name=sup.name,
        )
        for callback in self._subscribers:
            result.subscribe(callback)
        return result

    def _spec(self, child: ProcessConfig | SupervisorConfig) -> ChildSpec:
        start: Callable[..., Awaitable[None]] = run_process
        args: tuple[object, ...] = (child, self.config.logs, self.console)
        if isinstance(child, SupervisorConfig):
            start, args = self._run_nested, (child.id,)
        return ChildSpec(
            id=child.id,
            start=start,
            args=args,
            is_supervisor=isinstance(child, SupervisorConfig),
            restart=child.restart,
            shutdown=child.shutdown,
            significant=child.significant,
        )

    async def _run_nested(
        self, sup_id: str, *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The ``start`` of a nested supervisor: its current config, run."""
        current = find(self.config, sup_id)
        if current is None:
            # A reload dropped it and is about to stop it, but its restart came first
            # (it was waiting out a backoff): it holds its place, running nothing, until
            # the reload's stop. Failing instead would be a failed restart, counted.
            current = attrs.evolve(self._built_from[sup_id], children=())
        if self._built_from.get(sup_id) != current or sup_id in self._changed or self.nested[sup_id].running:
            self.nested[sup_id] = self._build(current)
            self._built_from[sup_id] = current
            self._changed.discard(sup_id)
        await self.nested[sup_id].run(task_status=task_status)

    async def apply(self, plan: Plan, config: Config) -> list[str]:
        """Carry out a reload's plan, one step after the other; ``config`` is the tree's
        config from now on, less the children that could not start. Returns what each
        step did, for the console.

        A nested supervisor that is not running (a stopped temporary one, one waiting
        for its restart, one inside a supervisor that is not running) is left alone: it
        starts from the new config when it starts. One that restarted during the reload
        was built from the new config then: the steps into it are done already.
        ``stopping`` ends the reload after the step under way (whose stop keeps its
        grace).
        """
        # Which supervisor object runs each nested id now: one built after this point
        # was built from ``config``.
        told = dict(self.nested)
        self.config = config
        outcomes: list[str] = []
        not_started: list[str] = []

        def note(parent: str | None) -> None:
            # Name the outermost one that is down: its start brings the others.
            chain = path_to(config, parent) if parent is not None else []
            down = next((i for i in chain if i not in self.nested or not self.nested[i].running), parent)
            text = f"{down} is not running: it will start as the file says"
            if text not in outcomes:
                outcomes.append(text)

        for step in plan.steps:
            if self.stopping:
                break
            if step.parent is None:
                sup = self.root
            else:
                found = self.nested.get(step.parent)
                if found is not None and found is not told.get(step.parent):
                    if not found.running:
                        note(step.parent)
                        continue
                    outcomes.append(step.text())  # built from the new file since
                    continue
                if found is None or not found.running:
                    note(step.parent)
                    continue
                sup = found
            if not sup.running:
                note(step.parent)
                continue
            try:
                await self._step(sup, step)
            except SupervisorNotRunning:  # it stopped (or gave up) during the reload
                note(step.parent)
                continue
            except CorralError as exc:
                outcomes.append(f"could not {step.action} {step.id}: {exc}")
                if step.action != "stop":
                    not_started.append(step.id)
                continue
            outcomes.append(step.text())
            if step.parent is not None:
                self._changed.add(step.parent)
        self.config = without(config, not_started)
        return outcomes

    async def _step(self, sup: Supervisor, step: Step) -> None:
        if step.action != "start":
            await _remove(sup, step.id)
        if step.action == "stop":
            return
        assert step.child is not None
        spec = self._spec(step.child)
        present = {info.id: info for info in sup.which_children()}
        before = next((sibling for sibling in step.before if sibling in present), None)
        try:
            await sup.start_child(spec, before=before)
        except AlreadyPresent:
            there = {info.id: info for info in sup.which_children()}.get(step.id)
            if there is None or there.spec != spec:
                raise CorralError(f"another child {step.id} is already there") from None
            # Already there as the file says (its supervisor started it meanwhile).


async def _remove(sup: Supervisor, child_id: str) -> None:
    """Terminate and delete a child; one already gone (a temporary that ran) is fine."""
    try:
        await sup.terminate_child(child_id)
        await sup.delete_child(child_id)
    except NotFound:
        pass


def build_tree(config: Config, console: Console | None = None) -> ProcessTree:
    """Supervisors and child specs for ``config``; nothing runs yet."""
    return ProcessTree(config, console)


def describe_tree(config: Config) -> list[str]:
    """The tree as indented lines (``corral run --check``)."""
    lines: list[str] = []

    def grace(seconds: float) -> str:
        return "brutal_kill" if seconds == 0 else "infinity" if seconds == math.inf else f"{seconds:g} s"

    def sup_line(sup: SupervisorConfig) -> str:
        parts = [sup.strategy.value, f"max {sup.max_restarts} restarts in {sup.max_seconds:g} s"]
        if sup.backoff is not None:
            parts.append(f"backoff {sup.backoff.initial:g}..{sup.backoff.maximum:g} s")
        if sup.auto_shutdown is not AutoShutdown.NEVER:
            parts.append(f"auto_shutdown {sup.auto_shutdown.value}")
        return f"supervisor {sup.name!r}: " + ", ".join(parts)

    def walk(sup: SupervisorConfig, depth: int) -> None:
        for child in sup.children:
            pad = "  " * depth
            flags = f"{child.restart.value}, shutdown {grace(child.shutdown)}"
            if child.significant:
                flags += ", significant"
            if isinstance(child, ProcessConfig):
                shown = show_command(child.command, 70)
                lines.append(f"{pad}- {child.id} [{flags}, {child.stop_signal.name}]: {shown}")
            else:
                lines.append(f"{pad}- {child.id} [{flags}] {sup_line(child)}")
                walk(child, depth + 1)

    lines.append(sup_line(config.root))
    walk(config.root, 1)
    lines.append(
        f"logs: {config.logs.dir}/<id>.log (rotated at {config.logs.max_bytes} bytes, "
        f"{config.logs.backups} backups)"
    )
    return lines
