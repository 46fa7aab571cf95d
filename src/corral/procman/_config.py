"""The configuration of ``corral run``: a frozen model of the tree, which the rest of the
process manager reads; ``_load`` fills it from TOML.

A field whose values are narrower than its Python type says so with a ``typing.Annotated``
alias (``Grace``: seconds, "brutal_kill" or "infinity"); ``_load`` has a structure hook
for each. Each class checks the rules between its own fields (attrs validators), with
the message a TOML user needs. Fields are in the order a table's values are checked, so
of several mistakes in one table the first one in this order is named.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import attrs

from corral._errors import InvalidSpec
from corral.supervisor import INFINITY, AutoShutdown, Backoff, Restart, Strategy

DEFAULT_SHUTDOWN = 5.0
DEFAULT_LOG_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_LOG_BACKUPS = 5

ChildId = Annotated[str, "letters, digits, '_', '.', '-': it names the child's log file"]
Command = Annotated[tuple[str, ...], "argv: a program and its arguments, no shell"]
Env = Annotated[tuple[tuple[str, str], ...], "variables added to corral's environment"]
WorkDir = Annotated[str, "an existing directory (in TOML: relative to the config file)"]
Grace = Annotated[float, "seconds >= 0, or BRUTAL_KILL (0) or INFINITY"]
Positive = Annotated[float, "> 0"]
LogSize = Annotated[int, ">= 1"]


def _not_permanent(instance: ProcessConfig | SupervisorConfig, _: object, significant: bool) -> None:
    if significant and instance.restart is Restart.PERMANENT:
        raise InvalidSpec(
            "significant",
            "a permanent child cannot be significant (it is always restarted); set restart = "
            '"transient" or "temporary"',
        )


@attrs.frozen
class ProcessConfig:
    """One OS command, as a supervised child."""

    id: ChildId
    command: Command
    env: Env = ()
    cwd: WorkDir | None = None  # None: corral's own working directory
    stop_signal: signal.Signals = signal.SIGTERM
    restart: Restart = Restart.PERMANENT
    significant: bool = attrs.field(default=False, validator=_not_permanent)
    shutdown: Grace = DEFAULT_SHUTDOWN


@attrs.frozen
class SupervisorConfig:
    """A supervisor and its children (the root has ``id`` None)."""

    id: ChildId | None
    name: str
    children: tuple[ProcessConfig | SupervisorConfig, ...] = ()
    strategy: Strategy = Strategy.ONE_FOR_ONE
    max_restarts: int = 3
    max_seconds: Positive = 5.0
    backoff: Backoff | None = None
    auto_shutdown: AutoShutdown = AutoShutdown.NEVER
    # as a child of another supervisor:
    restart: Restart = Restart.PERMANENT
    significant: bool = attrs.field(default=False, validator=_not_permanent)
    shutdown: Grace = INFINITY

    def __attrs_post_init__(self) -> None:  # after the validators: this supervisor's own fields first
        if self.auto_shutdown is not AutoShutdown.NEVER:
            return
        for i, child in enumerate(self.children):
            if child.significant:
                raise InvalidSpec(
                    f"children[{i}].significant",
                    f"child {child.id!r} is significant, but its supervisor's auto_shutdown is "
                    '"never"; set auto_shutdown = "any_significant" or "all_significant" there',
                )


@attrs.frozen
class LogSettings:
    """Where and how child output is kept: ``<dir>/<id>.log``, rotated by size."""

    dir: Path
    max_bytes: LogSize = DEFAULT_LOG_MAX_BYTES
    backups: int = DEFAULT_LOG_BACKUPS

    def path(self, child_id: str) -> Path:
        return self.dir / f"{child_id}.log"


@attrs.frozen
class Config:
    root: SupervisorConfig
    logs: LogSettings
    source: Path | None = None

    def processes(self) -> list[ProcessConfig]:
        """Every process in the tree, depth first, in start order."""
        found: list[ProcessConfig] = []

        def walk(sup: SupervisorConfig) -> None:
            for child in sup.children:
                if isinstance(child, ProcessConfig):
                    found.append(child)
                else:
                    walk(child)

        walk(self.root)
        return found
