"""The tree: ``Config`` -> a ``ProcessTree`` of ``corral.Supervisor``\\ s whose leaves run
commands (``build_tree``; nothing runs yet), a reload's plan carried out on it
(``ProcessTree.apply``), and the tree as text (``describe_tree``, what ``corral run
--check`` prints)."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import attrs
import trio

from corral._errors import CorralError, NotFound
from corral.procman._config import Config, ProcessConfig, SupervisorConfig
from corral.procman._logs import Console
from corral.procman._reload import Plan, find, without
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
    _built_from: dict[str, SupervisorConfig] = attrs.field(init=False, factory=dict)
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
        if current is None:  # pragma: no cover - a reload stops a child before dropping its config
            raise RuntimeError(f"supervisor {sup_id!r} is no longer in the config")
        if self._built_from.get(sup_id) != current or self.nested[sup_id].running:
            self.nested[sup_id] = self._build(current)
            self._built_from[sup_id] = current
        await self.nested[sup_id].run(task_status=task_status)

    async def apply(self, plan: Plan, config: Config) -> list[str]:
        """Carry out a reload's plan, one step after the other; ``config`` is the tree's
        config from now on, less the children that could not start. Returns what each
        step did, for the console.

        A nested supervisor that is not running (a stopped temporary one, one waiting
        for its restart) is left alone: it starts from the new config when it starts.
        """
        self.config = config
        outcomes: list[str] = []
        not_started: list[str] = []
        for step in plan.steps:
            sup = self.root if step.parent is None else self.nested[step.parent]
            if not sup.running:
                note = f"{step.parent} is not running: it will start as the file says"
                if note not in outcomes:
                    outcomes.append(note)
                continue
            try:
                if step.action != "start":
                    await _remove(sup, step.id)
                if step.action != "stop":
                    assert step.child is not None
                    present = {info.id for info in sup.which_children()}
                    before = next((sibling for sibling in step.before if sibling in present), None)
                    await sup.start_child(self._spec(step.child), before=before)
            except CorralError as exc:
                outcomes.append(f"could not {step.action} {step.id}: {exc}")
                if step.action != "stop":
                    not_started.append(step.id)
            else:
                outcomes.append(step.text())
        self.config = without(config, not_started)
        return outcomes


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
