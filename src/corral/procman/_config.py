"""The configuration of ``corral run``: the frozen model of the tree, and parsing and
validating it from TOML (every error names the TOML path of the offending value)."""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import signal
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from corral._errors import InvalidSpec
from corral.supervisor import BRUTAL_KILL, INFINITY, AutoShutdown, Backoff, Restart, Strategy

DEFAULT_SHUTDOWN = 5.0
DEFAULT_LOG_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_LOG_BACKUPS = 5

_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


# ---------------------------------------------------------------------------------
# The configuration model
# ---------------------------------------------------------------------------------


@attrs.frozen
class ProcessConfig:
    """One OS command, as a supervised child."""

    id: str
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None  # None: corral's own working directory
    restart: Restart = Restart.PERMANENT
    shutdown: float = DEFAULT_SHUTDOWN
    significant: bool = False
    stop_signal: signal.Signals = signal.SIGTERM


@attrs.frozen
class SupervisorConfig:
    """A supervisor and its children (the root has ``id`` None)."""

    id: str | None
    name: str
    children: tuple[ProcessConfig | SupervisorConfig, ...] = ()
    strategy: Strategy = Strategy.ONE_FOR_ONE
    max_restarts: int = 3
    max_seconds: float = 5.0
    backoff: Backoff | None = None
    auto_shutdown: AutoShutdown = AutoShutdown.NEVER
    # as a child of another supervisor:
    restart: Restart = Restart.PERMANENT
    shutdown: float = INFINITY
    significant: bool = False


@attrs.frozen
class LogSettings:
    """Where and how child output is kept: ``<dir>/<id>.log``, rotated by size."""

    dir: Path
    max_bytes: int = DEFAULT_LOG_MAX_BYTES
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


# ---------------------------------------------------------------------------------
# Parsing and validation: every error names the TOML path of the offending value
# ---------------------------------------------------------------------------------

_SUPERVISOR_OPTIONS = ("strategy", "max_restarts", "max_seconds", "backoff", "auto_shutdown", "name")
_LOG_OPTIONS = ("log_dir", "log_max_bytes", "log_backups")
_CHILD_COMMON = ("id", "type", "restart", "shutdown", "significant")
_PROCESS_KEYS = (*_CHILD_COMMON, "command", "env", "cwd", "stop_signal")
_NESTED_KEYS = (*_CHILD_COMMON, *_SUPERVISOR_OPTIONS, "child", "process")
_BACKOFF_KEYS = ("initial", "maximum", "multiplier", "jitter", "reset_after")


def _fail(path: str, message: str) -> InvalidSpec:
    return InvalidSpec(path, message)


def _check_keys(table: Mapping[str, Any], allowed: Sequence[str], path: str, hint: str = "") -> None:
    for key in table:
        if key not in allowed:
            where = f"{path}.{key}" if path else key
            raise _fail(where, f"unknown key{hint}; known keys here: {', '.join(allowed)}")


def _enum(kind: type[Any], value: object, path: str) -> Any:
    allowed = [m.value for m in kind]
    if isinstance(value, str):
        for member in kind:
            if member.value == value.lower():
                return member
    raise _fail(path, f"must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _number(value: object, path: str, *, minimum: float = 0.0, strict: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)
    if ok:
        ok = value > minimum if strict else value >= minimum  # type: ignore[operator]
    if not ok:
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise _fail(path, f"must be a number {bound}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _int(value: object, path: str, *, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _fail(path, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, f"must be true or false, got {value!r}")
    return value


def _shutdown(value: object, path: str) -> float:
    if isinstance(value, str):
        word = value.lower()
        if word == "brutal_kill":
            return BRUTAL_KILL
        if word == "infinity":
            return INFINITY
        raise _fail(path, f'must be seconds >= 0, "brutal_kill" or "infinity", got {value!r}')
    try:
        return _number(value, path)
    except InvalidSpec:
        raise _fail(path, f'must be seconds >= 0, "brutal_kill" or "infinity", got {value!r}') from None


def _signal(value: object, path: str) -> signal.Signals:
    if isinstance(value, str):
        name = value.upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        try:
            return signal.Signals[name]
        except KeyError:
            pass
    elif isinstance(value, int) and not isinstance(value, bool):
        try:
            return signal.Signals(value)
        except ValueError:
            pass
    raise _fail(path, f'must be a signal name such as "SIGTERM", "SIGINT" or "SIGQUIT", got {value!r}')


def _backoff(value: object, path: str) -> Backoff | None:
    if value is False:
        return None
    if not isinstance(value, Mapping):
        raise _fail(path, f"must be a table such as {{ initial = 0.5, maximum = 30 }}, got {value!r}")
    _check_keys(value, _BACKOFF_KEYS, path)
    kwargs: dict[str, Any] = {key: _number(value[key], f"{path}.{key}") for key in value}
    try:
        return Backoff(**kwargs)
    except InvalidSpec as exc:  # names "backoff.<field>"
        field = exc.field.removeprefix("backoff.")
        raise _fail(f"{path}.{field}", _message(exc)) from None


def _message(exc: InvalidSpec) -> str:
    text = str(exc)
    return text.removeprefix(f"{exc.field}: ")


def _command(value: object, path: str) -> tuple[str, ...]:
    if isinstance(value, str):
        suggestion = ", ".join(f'"{part}"' for part in shlex.split(value)) if value.strip() else '"..."'
        raise _fail(
            path,
            "must be a list of strings, not a single string (corral runs no shell and splits "
            f"nothing): write command = [{suggestion}], or "
            f'command = ["sh", "-c", {value!r}] for shell syntax',
        )
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(part, str) for part in value)
        or not value[0]
    ):
        raise _fail(path, f'must be a non-empty list of strings such as ["sleep", "10"], got {value!r}')
    return tuple(value)


def _env(value: object, path: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise _fail(path, f'must be a table such as {{ PORT = "8080" }}, got {value!r}')
    for key, item in value.items():
        if not isinstance(item, str):
            raise _fail(f"{path}.{key}", f"must be a string (quote it: {key} = {str(item)!r}), got {item!r}")
    return tuple(value.items())


def _resolve_dir(value: object, path: str, base: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise _fail(path, f"must be a directory path (a string), got {value!r}")
    return (base / os.path.expanduser(value)).resolve()


def _check_program(command: tuple[str, ...], env: Mapping[str, str], cwd: str, path: str) -> None:
    program = command[0]
    if "/" in program:
        full = os.path.join(cwd, os.path.expanduser(program))
        if not (os.path.isfile(full) and os.access(full, os.X_OK)):
            raise _fail(f"{path}[0]", f"{program!r} is not an executable file (relative to {cwd})")
    elif shutil.which(program, path=env.get("PATH", os.environ.get("PATH", os.defpath))) is None:
        raise _fail(f"{path}[0]", f"program {program!r} was not found on PATH")


class _Parser:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.ids: dict[str, str] = {}  # id -> TOML path where it was defined

    @staticmethod
    def children_key(table: Mapping[str, Any], path: str) -> str:
        """Which key holds the children of ``table``: ``child`` (default) or ``process``."""
        if "child" in table and "process" in table:
            raise _fail(
                f"{path}.process" if path else "process",
                "use either [[child]] or [[process]] entries in one supervisor, not both: "
                "children start in the order written, which TOML cannot keep across two lists",
            )
        return "process" if "process" in table else "child"

    def children(self, table: Mapping[str, Any], path: str) -> tuple[ProcessConfig | SupervisorConfig, ...]:
        key = self.children_key(table, path)
        if key not in table:
            return ()
        entries = table[key]
        where = f"{path}.{key}" if path else key
        if not isinstance(entries, list) or not all(isinstance(item, Mapping) for item in entries):
            raise _fail(where, f"must be an array of tables ([[{key}]] entries), got {entries!r}")
        return tuple(self.child(entry, f"{where}[{i}]") for i, entry in enumerate(entries))

    def child_id(self, entry: Mapping[str, Any], path: str) -> str:
        if "id" not in entry:
            raise _fail(f"{path}.id", 'missing: every child needs an id, e.g. id = "web"')
        value = entry["id"]
        if not isinstance(value, str) or not _ID.match(value):
            raise _fail(
                f"{path}.id",
                f"must be a name of letters, digits, '_', '.', '-' (it names the log file), got {value!r}",
            )
        if value in self.ids:
            raise _fail(
                f"{path}.id",
                f"duplicate id {value!r} (already used at {self.ids[value]}); ids are unique "
                "in the whole tree because each names a log file",
            )
        self.ids[value] = path
        return value

    def child(self, entry: Mapping[str, Any], path: str) -> ProcessConfig | SupervisorConfig:
        kind = entry.get("type")
        if kind is None:
            if "command" in entry:
                kind = "process"
            elif "child" in entry or "process" in entry:
                kind = "supervisor"
            else:
                raise _fail(
                    f"{path}.command",
                    'missing: a process needs command = ["program", "arg", ...]; a nested '
                    'supervisor needs type = "supervisor" and its own [[...child]] entries',
                )
        if kind == "process":
            return self.process(entry, path)
        if kind == "supervisor":
            return self.supervisor(entry, path)
        raise _fail(f"{path}.type", f'must be "process" or "supervisor", got {kind!r}')

    def common(self, entry: Mapping[str, Any], path: str, default_shutdown: float) -> dict[str, Any]:
        restart = _enum(Restart, entry["restart"], f"{path}.restart") if "restart" in entry else None
        restart = restart or Restart.PERMANENT
        significant = _bool(entry.get("significant", False), f"{path}.significant")
        if significant and restart is Restart.PERMANENT:
            raise _fail(
                f"{path}.significant",
                "a permanent child cannot be significant (it is always restarted); set restart = "
                '"transient" or "temporary"',
            )
        shutdown = (
            _shutdown(entry["shutdown"], f"{path}.shutdown") if "shutdown" in entry else default_shutdown
        )
        return {"restart": restart, "shutdown": shutdown, "significant": significant}

    def process(self, entry: Mapping[str, Any], path: str) -> ProcessConfig:
        _check_keys(
            entry, _PROCESS_KEYS, path, ' for a process (a nested supervisor needs type = "supervisor")'
        )
        child_id = self.child_id(entry, path)
        if "command" not in entry:
            raise _fail(f"{path}.command", 'missing: write command = ["program", "arg", ...]')
        command = _command(entry["command"], f"{path}.command")
        env = _env(entry["env"], f"{path}.env") if "env" in entry else ()
        cwd = str(self.base)  # relative paths in a config are relative to the config
        if "cwd" in entry:
            resolved = _resolve_dir(entry["cwd"], f"{path}.cwd", self.base)
            if not resolved.is_dir():
                raise _fail(f"{path}.cwd", f"{str(resolved)!r} is not a directory")
            cwd = str(resolved)
        _check_program(command, dict(env), cwd, f"{path}.command")
        stop_signal = _signal(entry.get("stop_signal", "SIGTERM"), f"{path}.stop_signal")
        return ProcessConfig(
            id=child_id,
            command=command,
            env=env,
            cwd=cwd,
            stop_signal=stop_signal,
            **self.common(entry, path, DEFAULT_SHUTDOWN),
        )

    def options(self, table: Mapping[str, Any], path: str) -> dict[str, Any]:
        def at(key: str) -> str:
            return f"{path}.{key}" if path else key

        options: dict[str, Any] = {}
        if "strategy" in table:
            options["strategy"] = _enum(Strategy, table["strategy"], at("strategy"))
        if "max_restarts" in table:
            options["max_restarts"] = _int(table["max_restarts"], at("max_restarts"))
        if "max_seconds" in table:
            options["max_seconds"] = _number(table["max_seconds"], at("max_seconds"), strict=True)
        if "backoff" in table:
            options["backoff"] = _backoff(table["backoff"], at("backoff"))
        if "auto_shutdown" in table:
            options["auto_shutdown"] = _enum(AutoShutdown, table["auto_shutdown"], at("auto_shutdown"))
        return options

    def check_significant(self, sup: SupervisorConfig, path: str, key: str) -> None:
        if sup.auto_shutdown is not AutoShutdown.NEVER:
            return
        for i, child in enumerate(sup.children):
            if child.significant:
                raise _fail(
                    f"{path}.{key}[{i}].significant" if path else f"{key}[{i}].significant",
                    f"child {child.id!r} is significant, but its supervisor's auto_shutdown is "
                    '"never"; set auto_shutdown = "any_significant" or "all_significant" there',
                )

    def supervisor(self, entry: Mapping[str, Any], path: str) -> SupervisorConfig:
        _check_keys(entry, _NESTED_KEYS, path, " for a nested supervisor")
        child_id = self.child_id(entry, path)
        name = entry.get("name", child_id)
        if not isinstance(name, str):
            raise _fail(f"{path}.name", f"must be a string, got {name!r}")
        sup = SupervisorConfig(
            id=child_id,
            name=name,
            children=self.children(entry, path),
            **self.options(entry, path),
            **self.common(entry, path, INFINITY),
        )
        self.check_significant(sup, path, self.children_key(entry, path))
        return sup


def parse_config(
    data: Mapping[str, Any],
    *,
    base_dir: Path | str = ".",
    log_dir: Path | str | None = None,
    source: Path | None = None,
) -> Config:
    """Validate a parsed TOML document; relative paths are relative to ``base_dir``."""
    base = Path(base_dir).resolve()
    _check_keys(data, ("supervisor", "child", "process"), "")
    top = data.get("supervisor", {})
    if not isinstance(top, Mapping):
        raise _fail(
            "supervisor",
            "must be one table, [supervisor], holding the root's options; a nested supervisor "
            'is a [[child]] entry with type = "supervisor" and [[child.child]] entries',
        )
    _check_keys(top, (*_SUPERVISOR_OPTIONS, *_LOG_OPTIONS), "supervisor")
    parser = _Parser(base)
    name = top.get("name", source.stem if source is not None else "corral")
    if not isinstance(name, str):
        raise _fail("supervisor.name", f"must be a string, got {name!r}")
    root = SupervisorConfig(
        id=None, name=name, children=parser.children(data, ""), **parser.options(top, "supervisor")
    )
    parser.check_significant(root, "", parser.children_key(data, ""))
    if log_dir is not None:
        logs_dir = Path(log_dir).resolve()
    else:
        logs_dir = _resolve_dir(top.get("log_dir", "logs"), "supervisor.log_dir", base)
    logs = LogSettings(
        dir=logs_dir,
        max_bytes=_int(
            top.get("log_max_bytes", DEFAULT_LOG_MAX_BYTES), "supervisor.log_max_bytes", minimum=1
        ),
        backups=_int(top.get("log_backups", DEFAULT_LOG_BACKUPS), "supervisor.log_backups"),
    )
    return Config(root=root, logs=logs, source=source)


def loads_config(text: str, **kwargs: Any) -> Config:
    """``parse_config`` of a TOML string (syntax errors are ``InvalidSpec`` too)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _fail("toml", f"not valid TOML: {exc}") from None
    return parse_config(data, **kwargs)


def load_config(path: Path | str, *, log_dir: Path | str | None = None) -> Config:
    """Read and validate a config file; relative paths in it are relative to its folder."""
    source = Path(path).resolve()
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise _fail("file", f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    return loads_config(text, base_dir=source.parent, log_dir=log_dir, source=source)
