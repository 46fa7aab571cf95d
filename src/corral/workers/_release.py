"""Versions of a pool's workers (``pool.upgrade`` replaces one by the next: ``_rollout``).

A *release* is what a worker starts from: its launcher (handler module or command,
environment, init arguments), the options each worker gets, the recycling limits and,
with the fork server, a template of its own. Every supervisor slot belongs to one
release and restarts in it, as an OTP child restarts from its own child spec: a crash
during a rollout never turns an old worker into a new one by accident. Every pool has
one from its start, so this module stays light; the rollout loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from corral._errors import CorralError

if TYPE_CHECKING:
    from corral.workers._member import Member
    from corral.workers._options import PoolOptions, WorkerOptions
    from corral.workers._placement import Placements


class Release:
    """One version of the pool's workers (a plain class: see ``_slots``' note on attrs)."""

    __slots__ = (
        "failed_calls",
        "failure",
        "fingerprint",
        "handlers",
        "judged",
        "number",
        "on_fail",
        "on_probation",
        "options",
        "outgoing",
        "placements",
        "probation",
        "template_scope",
        "worker_options",
    )

    def __init__(self, number: int, handlers: object, placements: Placements, options: PoolOptions) -> None:
        self.number = number
        self.handlers = handlers  # as given: str, PythonModule, Command or None
        self.placements = placements
        self.options = options
        self.worker_options: WorkerOptions = options.worker
        self.failure: BaseException | None = None  # why it was judged failing
        self.judged = trio.Event()
        self.on_probation = False  # during its rollout: a worker dying young judges it
        self.probation = 0.0
        self.outgoing = False  # being replaced: new sessions prefer other workers
        #: Its starts, and old workers' drains: given up when it is judged failing.
        self.on_fail: set[trio.CancelScope] = set()
        self.template_scope: trio.CancelScope | None = None  # its fork-server template
        self.failed_calls = 0  # calls its workers failed by dying on probation
        self.fingerprint = source_fingerprint(handlers)  # its handler module on disk

    def on_disk(self) -> bool:
        """Whether a worker started now would run this version's handler module: a
        spawned worker imports the file as it is now (a forked one, its template's)."""
        return self.placements.forkserver is not None or source_fingerprint(self.handlers) == self.fingerprint

    def fail(self, error: BaseException) -> None:
        """Judge it failing (once): its starts under way are abandoned."""
        if self.failure is not None:
            return
        self.failure = error
        for scope in self.on_fail:
            scope.cancel()
        self.judged.set()

    def judge_exit(self, member: Member, now: float, error: BaseException | None) -> None:
        """A worker of this release ended by itself: on probation, that fails it."""
        if not self.on_probation or self.failure is not None:
            return
        ready_at = member.worker.ready_at
        if ready_at is not None:
            self.failed_calls += int(member.holders > 0)  # the call it ran (queued ones move)
        if ready_at is None or now - ready_at <= self.probation:
            self.fail(error if error is not None else DiedOnProbation(member.worker, now - (ready_at or now)))

    def __repr__(self) -> str:
        return f"<Release v{self.number} {self.handlers!r}>"


class DiedOnProbation(CorralError):
    """Why a version was judged failing when one of its workers died young."""

    def __init__(self, worker: Any, age: float) -> None:
        super().__init__(worker.id)
        self.worker = worker
        self.age = age

    def __str__(self) -> str:  # its exit is described once the process is reaped
        exit = self.worker.last_exit
        return f"worker {self.worker.id} died {self.age:.2f} s after READY, on probation" + (
            f" ({exit})" if exit else ""
        )


def source_fingerprint(handlers: object) -> tuple[tuple[str, int, int], ...]:
    """(path, mtime, size) of a handler module's source files: () if there is none."""
    from corral.workers._launch import PythonModule

    module = handlers.module if isinstance(handlers, PythonModule) else handlers
    if not isinstance(module, str):
        return ()
    import os
    import sys

    from corral.workers._protocol import module_sources

    found = []
    for path in module_sources(module, sys.path):
        try:
            st = os.stat(path)
        except OSError:
            continue
        found.append((path, st.st_mtime_ns, st.st_size))
    return tuple(found)
