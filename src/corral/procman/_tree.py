"""The tree: ``Config`` -> a ``ProcessTree`` of ``corral.Supervisor``\\ s whose leaves run
commands (``build_tree``; nothing runs yet), and the tree as text (``describe_tree``,
what ``corral run --check`` prints)."""

from __future__ import annotations

import math

import attrs

from corral.procman._config import Config, ProcessConfig, SupervisorConfig
from corral.procman._logs import Console
from corral.procman._runner import run_process, show_command
from corral.supervisor import AutoShutdown, ChildSpec, Supervisor


@attrs.define
class ProcessTree:
    """The built tree: the root supervisor and every supervisor in it, by name."""

    config: Config
    root: Supervisor
    supervisors: list[Supervisor]


def build_tree(config: Config, console: Console | None = None) -> ProcessTree:
    """Supervisors and child specs for ``config``; nothing runs yet."""
    supervisors: list[Supervisor] = []

    def build(sup: SupervisorConfig) -> Supervisor:
        specs: list[ChildSpec] = []
        for child in sup.children:
            if isinstance(child, ProcessConfig):
                specs.append(
                    ChildSpec(
                        id=child.id,
                        start=run_process,
                        args=(child, config.logs, console),
                        restart=child.restart,
                        shutdown=child.shutdown,
                        significant=child.significant,
                    )
                )
            else:
                nested = build(child)
                specs.append(
                    ChildSpec(
                        id=child.id,
                        start=nested.run,
                        is_supervisor=True,
                        restart=child.restart,
                        shutdown=child.shutdown,
                        significant=child.significant,
                    )
                )
        result = Supervisor(
            specs,
            strategy=sup.strategy,
            max_restarts=sup.max_restarts,
            max_seconds=sup.max_seconds,
            auto_shutdown=sup.auto_shutdown,
            backoff=sup.backoff,
            name=sup.name,
        )
        supervisors.append(result)
        return result

    root = build(config.root)
    return ProcessTree(config, root, supervisors)


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
