"""``corral run CONFIG.toml``: supervise OS commands as an OTP supervision tree.

A TOML file describes a tree of supervisors whose leaves are OS commands. Each
command runs in its own process group; its exit code is its exit reason (0 normal,
anything else abnormal), its stdout/stderr lines go to a rotating log file and, in
the foreground, to the console. Stopping is two-phase: ``stop_signal`` to the group,
then ``SIGKILL`` to the group once the ``shutdown`` grace is over. See docs/procman.md.

Layers, each usable on its own (the tests do):

* ``load_config`` / ``parse_config``: TOML -> frozen ``Config`` (``InvalidSpec`` naming
  the TOML path, e.g. ``child[2].restart``, for anything wrong);
* ``build_tree``: ``Config`` -> a ``ProcessTree`` of ``corral.Supervisor``\\ s;
* ``run_process``: the child function running one command under a supervisor;
* ``serve`` / ``run_command``: the foreground process manager (signals, console).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs
import trio

from corral._errors import ChildStartError, CorralError, InvalidSpec, RestartIntensityExceeded
from corral.supervisor import (
    BRUTAL_KILL,
    INFINITY,
    AutoShutdown,
    AutoShutdownTriggered,
    Backoff,
    ChildExited,
    ChildRestarting,
    ChildSpec,
    ChildStarted,
    IntensityExceeded,
    Restart,
    RestartFailed,
    Shutdown,
    Strategy,
    Supervisor,
    SupervisorEvent,
    SupervisorStopped,
    current_child,
)
from corral.workers._process import open_pidfd

DEFAULT_SHUTDOWN = 5.0
DEFAULT_LOG_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_LOG_BACKUPS = 5
DRAIN_SECONDS = 1.0  # after the process exited: how long its pipes may still deliver output
KILL_WAIT_SECONDS = 5.0  # after SIGKILL: how long to wait for the kernel to end the leader
MAX_LINE = 64 * 1024  # a longer line without a newline is cut into pieces of this size

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


# ---------------------------------------------------------------------------------
# Output: rotating log files and the console
# ---------------------------------------------------------------------------------


class RotatingLog:
    """Append-only text log, rotated by size like ``logging.handlers.RotatingFileHandler``:
    ``x.log`` -> ``x.log.1`` -> ... -> ``x.log.<backups>`` (the oldest is dropped)."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "ab")  # noqa: SIM115 - closed by close()
        self._size = self._file.tell()

    def write_lines(self, lines: Sequence[str], stream: str) -> None:
        if self._file.closed:
            return
        stamp = datetime.datetime.now().isoformat(sep=" ", timespec="milliseconds")
        for line in lines:
            data = f"{stamp} {stream} {line}\n".encode("utf-8", "replace")
            if self._size and self._size + len(data) > self.max_bytes:
                self._rotate()
            self._file.write(data)
            self._size += len(data)
        self._file.flush()

    def _rotate(self) -> None:
        self._file.close()
        if self.backups > 0:
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
            self._file = open(self.path, "ab")  # noqa: SIM115
        else:
            self._file = open(self.path, "wb")  # noqa: SIM115 - no backups: start over
        self._size = 0

    def close(self) -> None:
        self._file.close()


class Console:
    """Child output (stdout) and corral's own messages (stderr), prefixed like
    ``12:00:01 web    | text``. Never blocks the tree on a broken terminal."""

    def __init__(self, out: TextIO, err: TextIO, width: int = 8) -> None:
        self.out = out
        self.err = err
        self.width = max(width, len("corral"))

    def _write(self, target: TextIO, prefix: str, lines: Sequence[str]) -> None:
        stamp = datetime.datetime.now().strftime("%H:%M:%S")
        try:
            for line in lines:
                target.write(f"{stamp} {prefix:<{self.width}} | {line}\n")
            target.flush()
        except (OSError, ValueError):
            pass  # the terminal went away; the log files still have everything

    def lines(self, child_id: str, lines: Sequence[str]) -> None:
        self._write(self.out, child_id, lines)

    def say(self, text: str) -> None:
        self._write(self.err, "corral", [text])


# ---------------------------------------------------------------------------------
# One OS command as a supervised child
# ---------------------------------------------------------------------------------


def show_command(command: Sequence[str], limit: int = 100) -> str:
    """A one-line, human-readable rendering of a command (not for a shell)."""
    parts = []
    for part in command:
        flat = " ".join(part.split())
        parts.append(f'"{flat}"' if flat != part or not flat or '"' in flat else flat)
    text = " ".join(parts)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ProcessExited(Exception):
    """A command ended by itself with a nonzero exit code or a signal (abnormal exit)."""

    def __init__(self, child_id: str, code: int | None, signal_name: str | None) -> None:
        self.child_id = child_id
        self.code = code
        self.signal = signal_name
        super().__init__(describe_returncode(code if signal_name is None else None, signal_name))


def describe_returncode(code: int | None, signal_name: str | None) -> str:
    return f"killed by {signal_name}" if signal_name is not None else f"exit code {code}"


def _split_returncode(rc: int) -> tuple[int | None, str | None]:
    if rc >= 0:
        return rc, None
    try:
        return None, signal.Signals(-rc).name
    except ValueError:
        return None, f"signal {-rc}"


class _Pipe:
    """One output pipe of the process: reads chunks, hands on whole lines."""

    def __init__(self, fd: int, emit: Callable[[list[str]], None]) -> None:
        os.set_blocking(fd, False)
        self.fd: int | None = fd
        self._emit = emit
        self._buf = b""
        self.eof = False

    def _feed(self, data: bytes) -> None:
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        while len(self._buf) > MAX_LINE:
            lines.append(self._buf[:MAX_LINE])
            self._buf = self._buf[MAX_LINE:]
        if lines:
            self._emit([line.decode("utf-8", "replace").rstrip("\r") for line in lines])

    def _read(self) -> bytes | None:
        """One non-blocking read: data, b"" at EOF, None when nothing is there yet."""
        assert self.fd is not None
        try:
            return os.read(self.fd, 65536)
        except BlockingIOError:
            return None

    async def pump(self) -> None:
        while not self.eof:
            assert self.fd is not None
            await trio.lowlevel.wait_readable(self.fd)
            self.drain_nowait()

    def drain_nowait(self) -> None:
        """Everything that is in the pipe right now (used after a kill, without waiting)."""
        while self.fd is not None and not self.eof:
            try:
                data = self._read()
            except OSError:
                data = b""
            if data is None:
                return
            if not data:
                self.eof = True
                return
            self._feed(data)

    def close(self) -> None:
        if self._buf:
            buf, self._buf = self._buf, b""
            self._emit([buf.decode("utf-8", "replace")])
        if self.fd is not None:
            fd, self.fd = self.fd, None
            trio.lowlevel.notify_closing(fd)
            os.close(fd)


class _Spawned:
    """The running command: a process-group leader with two output pipes."""

    def __init__(self, proc: ProcessConfig, on_lines: Callable[[str, list[str]], None]) -> None:
        env = dict(os.environ)
        env.update(proc.env)
        env["CORRAL_CHILD_ID"] = proc.id
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            self.popen = subprocess.Popen(
                list(proc.command),
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                env=env,
                cwd=proc.cwd,
                process_group=0,  # its own group: signals reach everything it spawns
                close_fds=True,
            )
        except BaseException:
            for fd in (out_r, out_w, err_r, err_w):
                os.close(fd)
            raise
        os.close(out_w)
        os.close(err_w)
        self.pid = self.popen.pid
        self.returncode: int | None = None
        self.stdout = _Pipe(out_r, lambda lines: on_lines("out", lines))
        self.stderr = _Pipe(err_r, lambda lines: on_lines("err", lines))
        self._pidfd: int | None = open_pidfd(self.pid)

    def signal_group(self, sig: int) -> None:
        """Signal the whole group; never after reaping (the pgid could be reused)."""
        if self.returncode is not None:
            return
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    async def wait_exit(self) -> None:
        """Until the leader has exited (it is not reaped: its pgid stays ours)."""
        if self.returncode is not None:
            return
        if self._pidfd is not None:
            await trio.lowlevel.wait_readable(self._pidfd)
            return
        # No pidfd (old kernel): poll without reaping; WNOHANG never blocks.
        while os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:  # noqa: ASYNC222
            await trio.sleep(0.02)

    def reap(self) -> int:
        """End what is left of the group, then collect the leader's exit status."""
        if self.returncode is None:
            self.signal_group(signal.SIGKILL)
            self.returncode = self.popen.wait()
        return self.returncode

    def close(self) -> None:
        self.stdout.close()
        self.stderr.close()
        if self._pidfd is not None:
            fd, self._pidfd = self._pidfd, None
            trio.lowlevel.notify_closing(fd)
            os.close(fd)


async def run_process(
    proc: ProcessConfig,
    logs: LogSettings,
    console: Console | None = None,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one command as a supervised child; ``started(pid)`` once it is spawned.

    Exit code 0 returns (normal exit); any other code or a signal raises
    ``ProcessExited`` (abnormal); an exit after a stop request raises ``Shutdown``.
    On a stop request ``stop_signal`` goes to the process group; when the supervisor
    cancels us (grace over, or the tree torn down from outside) the group gets
    ``SIGKILL`` in shielded cleanup. No process of the group outlives this call.
    """
    ctx = current_child()
    log = RotatingLog(logs.path(proc.id), logs.max_bytes, logs.backups)

    def note(text: str) -> None:
        log.write_lines([text], "---")

    def on_lines(stream: str, lines: list[str]) -> None:
        log.write_lines(lines, stream)
        if console is not None:
            console.lines(proc.id, lines)

    try:
        spawned = _Spawned(proc, on_lines)
    except BaseException as exc:
        note(f"cannot start {show_command(proc.command)}: {exc!r}")
        log.close()
        raise
    note(f"started pid {spawned.pid}: {show_command(proc.command)}")
    stop_sent = False
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(spawned.stdout.pump)
            nursery.start_soon(spawned.stderr.pump)
            stop_scope = trio.CancelScope()

            async def forward_stop() -> None:
                nonlocal stop_sent
                with stop_scope:
                    await ctx.stop_requested.wait()
                    stop_sent = True
                    note(f"stop requested: {proc.stop_signal.name} to the process group")
                    spawned.signal_group(proc.stop_signal)

            nursery.start_soon(forward_stop)
            task_status.started(spawned.pid)
            await spawned.wait_exit()
            stop_scope.cancel()
            spawned.reap()  # SIGKILLs what is left of the group first, so the pipes reach EOF
            with trio.move_on_after(DRAIN_SECONDS):
                while not (spawned.stdout.eof and spawned.stderr.eof):
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()  # a process that escaped the group may hold a pipe
    finally:
        with trio.CancelScope(shield=True):
            if spawned.returncode is None:  # cancelled: grace over, or torn down from outside
                spawned.signal_group(signal.SIGKILL)
                with trio.move_on_after(KILL_WAIT_SECONDS):
                    await spawned.wait_exit()
                spawned.reap()
                note(f"SIGKILL to the process group (pid {spawned.pid})")
            spawned.stdout.drain_nowait()
            spawned.stderr.drain_nowait()
            spawned.close()
            assert spawned.returncode is not None
            note(f"exited: {describe_returncode(*_split_returncode(spawned.returncode))}")
            log.close()
    assert spawned.returncode is not None
    code, sig = _split_returncode(spawned.returncode)
    if stop_sent:
        raise Shutdown(f"stopped: {describe_returncode(code, sig)}")
    if code != 0:
        raise ProcessExited(proc.id, code, sig)


# ---------------------------------------------------------------------------------
# The tree
# ---------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------
# The foreground process manager
# ---------------------------------------------------------------------------------


def _event_text(event: SupervisorEvent, processes: frozenset[object]) -> str | None:
    """One console line for a supervisor event (None: not worth a line)."""
    if isinstance(event, ChildStarted):
        verb = "restarted" if event.restart else "started"
        if event.child_id in processes:
            return f"{event.child_id} {verb} (pid {event.value})"
        return f"{event.child_id} {verb} (supervisor)"
    if isinstance(event, ChildExited):
        exc = event.exit.exception
        if isinstance(exc, RestartIntensityExceeded):
            why = "gave up: too many restarts"
        elif exc is not None and str(exc):
            why = str(exc)
        elif event.exit.reason == "normal":
            why = "exit code 0" if event.child_id in processes else "normal"
        elif event.exit.reason == "shutdown" and exc is None and event.child_id in processes:
            why = "SIGKILL to the process group (shutdown grace over)"
        else:
            why = event.exit.reason
        return f"{event.child_id} exited: {why}" + (" (stopped)" if event.requested else "")
    if isinstance(event, ChildRestarting):
        when = f"in {event.delay:.2f} s" if event.delay > 0 else "now"
        return f"restarting {event.child_id} {when} (attempt {event.attempt})"
    if isinstance(event, RestartFailed):
        cause = event.exception.__cause__ or event.exception
        return f"restart of {event.child_id} failed: {cause!r}"
    if isinstance(event, IntensityExceeded):
        return (
            f"supervisor {event.supervisor}: more than {event.max_restarts} restarts in "
            f"{event.max_seconds:g} s: stopping its children and giving up"
        )
    if isinstance(event, AutoShutdownTriggered):
        return f"supervisor {event.supervisor}: significant child {event.child_id} exited: auto shutdown"
    if isinstance(event, SupervisorStopped) and event.reason not in ("stop", "cancelled", "intensity"):
        return f"supervisor {event.supervisor} stopped ({event.reason})"
    return None


async def serve(tree: ProcessTree, console: Console) -> int:
    """Run the tree until it ends or SIGINT/SIGTERM; returns the exit status.

    First SIGINT/SIGTERM: orderly stop (reverse order, each child's grace), 0.
    Second: kill everything now (SIGKILL to every group, still in reverse order), 130.
    The tree giving up (restart intensity) or failing to start: 1.
    """

    processes = frozenset(p.id for p in tree.config.processes())

    def report(event: SupervisorEvent) -> None:
        text = _event_text(event, processes)
        if text is not None:
            console.say(text)

    for sup in tree.supervisors:
        sup.subscribe(report)
    status = 0
    done = trio.Event()
    run_scope = trio.CancelScope()

    async def supervise() -> None:
        nonlocal status
        try:
            with run_scope:
                await tree.root.run()
        except ChildStartError as exc:
            console.say(f"could not start the tree: {exc}")
            status = 1
        except RestartIntensityExceeded as exc:
            console.say(f"giving up: {exc}")
            status = 1
        finally:
            done.set()

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(supervise)

            async def watch_signals() -> None:
                nonlocal status
                stopping = False
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if not stopping and tree.root.running:
                        stopping = True
                        console.say(f"{name}: stopping the tree in reverse order (again to kill at once)")
                        nursery.start_soon(tree.root.stop)
                    elif not stopping:  # run() has not begun: nothing to stop in order
                        run_scope.cancel()
                    else:
                        console.say(f"{name} again: killing every process now")
                        status = 130
                        run_scope.cancel()

            nursery.start_soon(watch_signals)
            await done.wait()
            nursery.cancel_scope.cancel()
    if status == 0:
        console.say("all stopped")
    return status


# ---------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------

RUN_DESCRIPTION = """\
Supervise OS commands as an Erlang/OTP supervision tree described in a TOML file:
a process manager with OTP restart strategies (one_for_one, one_for_all,
rest_for_one), restart types (permanent, transient, temporary), restart intensity
that escalates up the tree, restart backoff, and a two-phase stop (stop_signal,
then SIGKILL after the shutdown grace) of each command's whole process group.

Each command's stdout/stderr lines go to LOG_DIR/<id>.log (rotated by size) and,
prefixed with the id, to this terminal. Ctrl-C or SIGTERM stops the tree in
reverse start order and exits 0; a second Ctrl-C kills everything at once."""

RUN_EPILOG = """\
example (see examples/procman.toml and docs/procman.md for every option):

  [supervisor]                 # the root: options only
  strategy = "rest_for_one"    # one_for_one | one_for_all | rest_for_one
  max_restarts = 5             # more than this many restarts ...
  max_seconds = 10             # ... within this window: give up (exit 1)
  backoff = { initial = 0.5, maximum = 10 }
  log_dir = "logs"             # relative to this file

  [[child]]
  id = "db"
  command = ["postgres", "-D", "data"]   # a list: no shell, no splitting
  shutdown = 30                # seconds between stop_signal and SIGKILL
  stop_signal = "SIGINT"

  [[child]]                    # restarted whenever db restarts (rest_for_one)
  id = "web"
  command = ["sh", "-c", "exec ./server --port $PORT"]
  env = { PORT = "8080" }
  restart = "transient"        # restarted only after a nonzero exit

  [[child]]                    # a nested supervisor with its own children
  id = "jobs"
  type = "supervisor"
  strategy = "one_for_one"
  [[child.child]]
  id = "mailer"
  command = ["python", "-m", "mailer"]

exit status: 0 after a stop, 1 when the tree gave up or failed to start,
2 for an invalid config, 130 after a second Ctrl-C."""


def add_run_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``corral run`` on the ``corral`` command's subparsers."""
    parser = sub.add_parser(
        "run",
        help="supervise OS commands from a TOML file (a process manager with OTP strategies)",
        description=RUN_DESCRIPTION,
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", metavar="CONFIG.toml", help="the tree to run (see the example below)")
    parser.add_argument(
        "--log-dir",
        metavar="DIR",
        help="write the log files here instead of the config's log_dir",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the config, print the tree it describes, and exit",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="do not echo the commands' output here (the log files still get it)",
    )


def run_command(args: argparse.Namespace) -> int:
    """``corral run``: returns the process exit status."""
    try:
        config = load_config(args.config, log_dir=args.log_dir)
    except InvalidSpec as exc:
        print(f"corral run: {args.config}: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print("\n".join(describe_tree(config)))
        return 0
    # Events are printed by serve(); keep the supervisor's logger from printing them twice.
    logging.getLogger("corral").addHandler(logging.NullHandler())
    width = max((len(p.id) for p in config.processes()), default=0)
    console = Console(sys.stdout, sys.stderr, width)
    tree = build_tree(config, None if args.quiet else console)
    try:
        return trio.run(serve, tree, console)
    except KeyboardInterrupt:  # before the signal receiver was installed
        return 130
    except CorralError as exc:  # pragma: no cover - serve() handles the tree's own errors
        print(f"corral run: {exc}", file=sys.stderr)
        return 1
