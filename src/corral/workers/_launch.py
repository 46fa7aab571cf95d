"""Launchers: how a worker process comes to exist. The one seam between the pool
and "where does the process run": a local Python runtime (``PythonModule``), any
program (``Command``), another host (``corral.SSH``, in ``_remote.py``) or a fork of
a template (``_forkserver.py``).

A launcher only says what to execute; spawning, the handshake and the channel are the
same for every kind, so the pool never cares how a process was started.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import attrs

from corral._errors import InvalidSpec


def _argv(value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise InvalidSpec("argv", f"must be a list of strings (not one shell string), got {value!r}")
    argv = tuple(value)
    if not argv or not all(isinstance(a, str | os.PathLike) for a in argv):
        raise InvalidSpec("argv", f"must be a non-empty list of strings, got {value!r}")
    return tuple(os.fspath(a) for a in argv)


def _env(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidSpec("env", f"must be a mapping of str to str, got {value!r}")
    return dict(value)


def _codecs(value: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(value)


@attrs.frozen
class Launch:
    """What to exec for one worker: argv, environment additions, cwd, codecs to prefer."""

    argv: tuple[str, ...]
    env: dict[str, str] | None
    cwd: str | None
    codecs: tuple[str, ...]
    welcome: dict[str, Any]


@attrs.frozen
class Command:
    """Any program that speaks corral's protocol (docs/protocol.md) on stdin/stdout.

    ``corral.Command(["node", "worker.js"])``, ``Command(["ssh", "host", "..."])``,
    ``Command(["docker", "run", "-i", ...])``. ``env`` is added to the parent's
    environment. The JSON codec is used unless ``codecs`` says otherwise.
    """

    argv: tuple[str, ...] = attrs.field(converter=_argv)
    env: dict[str, str] | None = attrs.field(default=None, kw_only=True, converter=_env)
    cwd: str | None = attrs.field(default=None, kw_only=True)
    codecs: tuple[str, ...] = attrs.field(default=("json",), kw_only=True, converter=_codecs)

    def launch(self, worker_id: str) -> Launch:
        return Launch(self.argv, self.env, self.cwd, self.codecs, {})


@attrs.frozen
class PythonModule:
    """The default: corral's Python child runtime serving a module of plain functions.

    The child sees the parent's ``sys.path``, so whatever the parent imports, the
    worker imports. ``module=None`` serves only ``run_sync``. ``precompile`` writes the
    handler module's bytecode cache (as ``compileall`` would) even under
    PYTHONDONTWRITEBYTECODE, so that no worker compiles it again at start-up.
    """

    module: str | None
    python: str = sys.executable
    env: dict[str, str] | None = attrs.field(default=None, converter=_env)
    cwd: str | None = None
    precompile: bool = True  # write the handler module's bytecode cache once, in the parent
    #: Positional arguments for the module's ``init()`` (JSON values: they travel in
    #: the welcome, docs/protocol.md §3).
    init_args: tuple[Any, ...] = attrs.field(default=(), converter=_codecs)

    def __attrs_post_init__(self) -> None:
        if self.module is not None and (not isinstance(self.module, str) or not self.module):
            raise InvalidSpec("handlers", f"must be a module name like 'myapp.handlers', got {self.module!r}")
        if self.init_args:
            import json

            try:
                json.dumps(list(self.init_args), allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise InvalidSpec(
                    "init_args", f"must be JSON values (str, numbers, lists...): {exc}"
                ) from None
            if self.module is None:
                raise InvalidSpec("init_args", "needs a handler module with an init() (module is None)")

    def launch(self, worker_id: str) -> Launch:
        from corral.workers._protocol import (
            child_argv,
            ensure_bytecode,
            module_sources,
            precompile_child,
        )

        global _precompiled
        if not _precompiled:
            precompile_child()  # a worker compiling the runtime starts ~70% slower
            _precompiled = True
        if self.precompile and self.module is not None and self.module not in _compiled_modules:
            # The handler module too (and its packages): compiled once here, not per worker.
            _compiled_modules.add(self.module)
            for source in module_sources(self.module, sys.path):
                ensure_bytecode(source)
        argv = tuple(child_argv(self.module, python=self.python))
        sys_path = [p if p else os.getcwd() for p in sys.path]
        welcome: dict[str, Any] = {"module": self.module, "sys_path": sys_path}
        if self.init_args:
            welcome["init_args"] = list(self.init_args)
        env = self.env
        main_path = _main_path()
        if main_path is not None:  # run_sync of a function defined in the main script
            env = {**(env or {}), "CORRAL_MAIN_PATH": main_path}
        return Launch(argv, env, self.cwd, ("pickle", "json"), welcome)


def _main_path() -> str | None:
    """The parent's main script (``python app.py`` or ``python -m app``), if it is a
    file: not under ``-c`` or in a REPL."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not isinstance(path, str) or not os.path.isfile(path):
        return None
    return os.path.abspath(path)


_precompiled = False
_compiled_modules: set[str] = set()


class Launcher(Protocol):
    """The seam: anything that can say how to start one worker process."""

    def launch(self, worker_id: str) -> Launch: ...


def as_launcher(target: object) -> Command | PythonModule:
    if isinstance(target, Command | PythonModule):
        return target
    if target is None or isinstance(target, str):
        return PythonModule(target)
    raise InvalidSpec(
        "handlers",
        "must be a module name ('myapp.handlers'), None (run_sync only) or corral.Command([...]); "
        f"got {target!r}",
    )
