"""Where a pool's workers run, and the brakes on places that keep failing.

A placement is this machine or one host of ``hosts=``; each has its own circuit
breaker, so one host down does not keep the whole pool shut. A new worker goes to the
least loaded placement by weight, hosts that just failed last, open circuits never.
With ``start_method="forkserver"`` the local placement forks from a template that
this module keeps alive.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs
import trio

from corral._errors import CorralError, InvalidSpec
from corral._shared import collapse, reraise
from corral.workers._circuit import Circuit, CircuitBreaker, CircuitState
from corral.workers._launch import Command, Launch, Launcher, PythonModule
from corral.workers._process import Process, spawn_process
from corral.workers._reaper import Reaper

if TYPE_CHECKING:  # imported where used: a pool without hosts= or the fork server never loads them
    from corral.workers._forkserver import ForkServerLauncher
    from corral.workers._remote import SSH

logger = logging.getLogger("corral.pool")


# PoolLauncher and Placement are plain classes: attrs compiles each class's generated
# methods when the module is imported (~0.5 ms a class), and these need none of them.


class PoolLauncher:
    """What a pool adds to every launch, whatever the placement: each process is listed
    with the pool's reaper as it is spawned, and ``codec=`` (if given) is the only codec
    the parent accepts (``"json"``: a worker cannot make the parent unpickle)."""

    __slots__ = ("codec", "inner", "reaper")

    def __init__(self, inner: Launcher, reaper: Reaper, codec: str | None = None) -> None:
        self.inner = inner
        self.reaper = reaper
        self.codec = codec

    def launch(self, worker_id: str) -> Launch:
        launch = self.inner.launch(worker_id)
        return launch if self.codec is None else attrs.evolve(launch, codecs=(self.codec,))

    async def spawn(self, worker_id: str, launch: Launch) -> Process:
        proc = await spawn_process(self.inner, worker_id, launch)
        self.reaper.add(proc.pid)  # each worker leads its own process group
        return proc


class Placement:
    """One place workers can run: its launcher, its share, its own circuit breaker."""

    __slots__ = ("circuit", "launcher", "live", "name", "weight")

    def __init__(self, launcher: Launcher, weight: float, circuit: Circuit, name: str) -> None:
        self.launcher = launcher
        self.weight = weight
        self.circuit = circuit
        self.name = name
        self.live = 0  # workers of this pool running here now


def _placements(
    launcher: Launcher,
    handlers: object,
    hosts: Sequence[SSH | Command | PythonModule | str] | None,
    breaker: CircuitBreaker | None,
) -> list[Placement]:
    if hosts is None:
        return [Placement(launcher, 1.0, Circuit(breaker), "local")]
    if isinstance(hosts, str) or not isinstance(hosts, Sequence) or not hosts:
        raise InvalidSpec("hosts", f"must be a non-empty list of hosts or corral.SSH(...), got {hosts!r}")
    from corral.workers._remote import SSH

    module = handlers if isinstance(handlers, str) else None
    placements = []
    for i, host in enumerate(hosts):
        if isinstance(host, str):
            host = SSH(host)
        if isinstance(host, SSH):
            if host.module is None:
                host = attrs.evolve(host, module=module)
            placements.append(Placement(host, float(host.weight), Circuit(breaker), host.name))
        elif isinstance(host, Command | PythonModule):
            placements.append(Placement(host, 1.0, Circuit(breaker), f"hosts[{i}]"))
        else:
            raise InvalidSpec(f"hosts[{i}]", f"must be a host name or corral.SSH(...), got {host!r}")
    return placements


class Placements:
    """Every placement of one pool, and the fork-server template if there is one."""

    def __init__(
        self,
        launcher: Command | PythonModule,
        handlers: object,
        hosts: Sequence[SSH | Command | PythonModule | str] | None,
        breaker: CircuitBreaker | None,
        start_method: str,
        init_timeout: float = 30.0,
    ) -> None:
        if start_method == "forkserver" and (hosts is not None or not isinstance(launcher, PythonModule)):
            raise InvalidSpec(
                "start_method",
                '"forkserver" forks local Python workers only (no hosts=, no corral.Command)',
            )
        self.all = _placements(launcher, handlers, hosts, breaker)
        self.last_failure: BaseException | None = None  # why the last start failed
        self.forkserver: ForkServerLauncher | None = None
        if start_method == "forkserver":
            from corral.workers._forkserver import ForkServer, ForkServerLauncher

            assert isinstance(launcher, PythonModule)
            server = ForkServer(launcher.module, launcher.python, launcher.env, launcher.cwd, init_timeout)
            self.forkserver = ForkServerLauncher(launcher, server)
            self.all[0].launcher = self.forkserver

    def __len__(self) -> int:
        return len(self.all)

    def choose(self) -> Placement | None:
        """Least loaded by weight; hosts that just failed come last; open circuits never."""
        ranked = sorted(self.all, key=lambda p: (p.circuit.failures > 0, p.live / p.weight))
        for placement in ranked:
            if placement.circuit.allow_start():
                return placement
        return None

    @property
    def circuit_open(self) -> bool:
        """No placement may start a worker now."""
        return all(p.circuit.is_open for p in self.all)

    def retry_in(self) -> float:
        """Seconds until the first placement may try again."""
        return min(p.circuit.retry_in() for p in self.all)

    @property
    def circuit_state(self) -> CircuitState:
        """The healthiest placement's breaker state."""
        states = [p.circuit.state for p in self.all]
        for state in (CircuitState.CLOSED, CircuitState.HALF_OPEN):
            if state in states:
                return state
        return CircuitState.OPEN

    def circuit_summary(self) -> str:
        if len(self.all) == 1:
            return self.all[0].circuit.state.value
        return ", ".join(f"{p.name}: {p.circuit.state.value}" for p in self.all)

    async def run_forkserver(self, pool_name: str, *, task_status: trio.TaskStatus[None]) -> None:
        """Keep a fork-server template running; a new one replaces one that died (its
        workers die with it, by PDEATHSIG, and the supervisor restarts them)."""
        launcher = self.forkserver
        assert launcher is not None
        started = False
        while True:
            try:
                try:
                    async with trio.open_nursery() as nursery:
                        await nursery.start(launcher.server.run)
                        if not started:
                            started = True
                            task_status.started()
                except BaseExceptionGroup as group:
                    reraise(collapse(group))
            except CorralError as exc:
                if not started:
                    raise
                logger.warning("[%s] fork server failed: %s; starting a new one", pool_name, exc)
            await trio.sleep(0.05)
            launcher.server = launcher.server.fresh()
