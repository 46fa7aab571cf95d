"""Reloading ``corral run``'s config: what differs between the running config and a new
one, as a plan of supervisor calls (``diff``). Pure: it reads two ``Config``\\ s and
runs nothing; ``ProcessTree.apply`` carries the plan out.

As OTP's release handling does for a supervisor, children are matched by id, one
supervisor at a time: a child only in the old config is **stopped** (terminate and
delete), one only in the new config is **started** at its place, one whose config
differs is **restarted** (stopped, then started from its new config at its place). A
nested supervisor whose own options are the same is not restarted: the diff goes into
it. A child whose config is the same is not touched, unless the new file moved it
among its siblings (their order is the start order, the stop order and what
``rest_for_one`` restarts): the fewest children that make the order right are
restarted at their new place (the others form the longest common subsequence).

The order of the plan: every stop first, in reverse start order (the tree's stop
order), so an id that moved to another supervisor is free again; then the restarts
and starts, in the new file's order (the tree's start order).

The root supervisor's options and the log settings are what ``corral run`` started
with; a new config that changes them is refused (``check_fixed``): the root is the
whole tree, and restarting it is restarting ``corral run``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from typing import Literal

import attrs

from corral._errors import InvalidSpec
from corral.procman._config import Config, ProcessConfig, SupervisorConfig

ChildConfig = ProcessConfig | SupervisorConfig

# The root's options that a reload may not change, by TOML key.
ROOT_OPTIONS = ("strategy", "max_restarts", "max_seconds", "backoff", "auto_shutdown", "name")
LOG_OPTIONS = {"dir": "log_dir", "max_bytes": "log_max_bytes", "backups": "log_backups"}


@attrs.frozen
class Step:
    """One supervisor call of a reload, under the supervisor ``parent`` (None: the root)."""

    action: Literal["stop", "start", "restart"]
    parent: str | None
    id: str
    child: ChildConfig | None = None  # start, restart: the new config of the child
    # start, restart: in front of the first of these siblings the supervisor has (a
    # temporary child that ran is gone although its config is there); none: at the end
    before: tuple[str, ...] = ()
    why: str = ""  # restart: what changed, e.g. "command changed"

    def text(self) -> str:
        if self.action == "stop":
            return f"stopped {self.id}"
        if self.action == "start":
            return f"started {self.id}"
        return f"restarted {self.id} ({self.why})"


@attrs.frozen
class Plan:
    steps: tuple[Step, ...]

    def summary(self) -> str:
        """The console line of this plan, were every step to succeed."""
        return summary([step.text() for step in self.steps])


def summary(outcomes: Sequence[str]) -> str:
    """The console line of a reload: what each step did."""
    return "reload: " + ("; ".join(outcomes) if outcomes else "no changes")


def _show(value: object) -> str:
    if isinstance(value, enum.Enum):
        return repr(value.value)
    return repr(str(value)) if not isinstance(value, int | float | str | None) else repr(value)


def check_fixed(old: Config, new: Config) -> None:
    """Refuse a new config that changes the root's options or the log settings."""
    changes = [
        (f"supervisor.{name}", getattr(old.root, name), getattr(new.root, name)) for name in ROOT_OPTIONS
    ] + [
        (f"supervisor.{key}", getattr(old.logs, name), getattr(new.logs, name))
        for name, key in LOG_OPTIONS.items()
    ]
    for field, before, after in changes:
        if before != after:
            raise InvalidSpec(
                field,
                f"changed from {_show(before)} to {_show(after)}; the root supervisor's options "
                "and the log settings are fixed while corral run runs: restart corral run to "
                "change them (or undo this change to reload the rest)",
            )


def _changed(old: ChildConfig, new: ChildConfig) -> list[str]:
    """The fields (TOML keys) of a child's own config that differ; a nested supervisor's
    children are not its own config."""
    if type(old) is not type(new):
        return ["type"]
    names = [f.name for f in attrs.fields(type(old)) if f.name != "children"]
    found = []
    for name in names:
        a, b = getattr(old, name), getattr(new, name)
        if name == "env":  # a table: the order it was written in means nothing
            a, b = dict(a), dict(b)
        if a != b:
            found.append(name)
    return found


def _in_place(old_order: Sequence[str], new_order: Sequence[str]) -> set[str]:
    """The largest set of ids whose relative order is the same in both (an LCS)."""
    n, m = len(old_order), len(new_order)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            if old_order[i] == new_order[j]:
                table[i][j] = table[i + 1][j + 1] + 1
            else:
                table[i][j] = max(table[i + 1][j], table[i][j + 1])
    found, i, j = set(), 0, 0
    while i < n and j < m:
        if old_order[i] == new_order[j]:
            found.add(old_order[i])
            i, j = i + 1, j + 1
        elif table[i + 1][j] >= table[i][j + 1]:
            i += 1
        else:
            j += 1
    return found


def _named(sup: SupervisorConfig) -> list[tuple[str, ChildConfig]]:
    named = []
    for child in sup.children:
        assert child.id is not None  # only the root has no id
        named.append((child.id, child))
    return named


def _diff(old: SupervisorConfig, new: SupervisorConfig, parent: str | None) -> tuple[list[Step], list[Step]]:
    """(stops in reverse start order, starts and restarts in start order) for one supervisor
    and, where the diff goes into them, its nested supervisors."""
    olds, news = _named(old), _named(new)
    old_by_id, new_ids = dict(olds), {cid for cid, _ in news}
    in_place = _in_place(
        [cid for cid, _ in olds if cid in new_ids], [cid for cid, _ in news if cid in old_by_id]
    )
    descend: dict[str, tuple[list[Step], list[Step]]] = {}
    starts: list[Step] = []
    for i, (cid, child) in enumerate(news):
        before = tuple(later for later, _ in news[i + 1 :] if later in in_place)
        previous = old_by_id.get(cid)
        if previous is None:
            starts.append(Step("start", parent, cid, child, before))
            continue
        fields = _changed(previous, child)
        why = (["moved"] if cid not in in_place else []) + (
            [", ".join(fields) + " changed"] if fields else []
        )
        if why:
            starts.append(Step("restart", parent, cid, child, before, ", ".join(why)))
        elif isinstance(child, SupervisorConfig) and previous != child:  # its children differ
            assert isinstance(previous, SupervisorConfig)
            descend[cid] = _diff(previous, child, cid)
            starts.extend(descend[cid][1])
    restarted = {step.id for step in starts if step.action == "restart" and step.parent == parent}
    new_by_id = dict(news)
    stops: list[Step] = []
    for cid, child in reversed(olds):
        if cid not in new_ids:
            stops.append(Step("stop", parent, cid))
        elif cid in descend:
            stops.extend(descend[cid][0])
        elif cid in restarted and isinstance(child, SupervisorConfig):
            # It stops with its children when it restarts; those the new file has
            # elsewhere (an id names one log file) are stopped with the removals.
            stops.extend(_stops_inside(child, _subtree(new_by_id[cid])))
    return stops, starts


def _subtree(child: ChildConfig) -> set[str]:
    """The ids of the children of a supervisor's config, at any depth."""
    if not isinstance(child, SupervisorConfig):
        return set()
    return {cid for cid, c in _named(child)}.union(*(_subtree(c) for _, c in _named(child)))


def _stops_inside(old: SupervisorConfig, keep: set[str]) -> list[Step]:
    """Stops, in reverse start order, of ``old``'s children (any depth) not in ``keep``."""
    stops: list[Step] = []
    for cid, child in reversed(_named(old)):
        if cid not in keep:
            stops.append(Step("stop", old.id, cid))
        elif isinstance(child, SupervisorConfig):
            stops.extend(_stops_inside(child, keep))
    return stops


def diff(old: Config, new: Config) -> Plan:
    """The steps that turn the tree running ``old`` into the tree of ``new``.

    Raises ``InvalidSpec`` (from ``check_fixed``) when ``new`` changes what a reload
    cannot: the root's options or the log settings.
    """
    check_fixed(old, new)
    stops, starts = _diff(old.root, new.root, None)
    return Plan(tuple(stops + starts))


def without(config: Config, ids: Iterable[str]) -> Config:
    """``config`` less the children ``ids`` (wherever they are in the tree): what runs
    after a reload whose start of those children failed."""
    gone = set(ids)
    if not gone:
        return config

    def prune(sup: SupervisorConfig) -> SupervisorConfig:
        kept = tuple(
            prune(c) if isinstance(c, SupervisorConfig) else c for c in sup.children if c.id not in gone
        )
        return attrs.evolve(sup, children=kept)

    return attrs.evolve(config, root=prune(config.root))


def find(config: Config, sup_id: str) -> SupervisorConfig | None:
    """The nested supervisor ``sup_id`` in ``config``, if it is there."""

    def walk(sup: SupervisorConfig) -> SupervisorConfig | None:
        for child in sup.children:
            if isinstance(child, SupervisorConfig):
                if child.id == sup_id:
                    return child
                found = walk(child)
                if found is not None:
                    return found
        return None

    return walk(config.root)


def path_to(config: Config, sup_id: str) -> list[str]:
    """The ids of the nested supervisors from the root down to ``sup_id`` (itself last);
    empty when it is not in ``config``."""

    def walk(sup: SupervisorConfig, above: list[str]) -> list[str]:
        for child in sup.children:
            if isinstance(child, SupervisorConfig):
                assert child.id is not None
                if child.id == sup_id:
                    return [*above, child.id]
                found = walk(child, [*above, child.id])
                if found:
                    return found
        return []

    return walk(config.root, [])
