"""Loading ``corral run``'s TOML into the config model, with cattrs.

cattrs structures each table into its config class: one hook per validated type
(enums, signals, numbers, durations, commands, env, backoff, directories), attrs
validators for the rules between fields. Written by hand, because each is clearer so:
which kind a ``[[child]]`` table is and which keys it may have (TOML has no type tag to
dispatch on; unknown keys are reported in the order written), the program on PATH
(it needs ``command``, ``env`` and ``cwd`` together), ids unique in the whole tree (the
message names where an id was first used).

Every error is an ``InvalidSpec`` naming the TOML path of the offending value
(``child[2].restart``) and saying what to write instead. A hook raises
``InvalidSpec("", "must be ..., got ...")`` about its own value; cattrs notes the
attribute or index of every error it collects, and ``_structure`` turns those notes
into the path. cattrs is imported only when a config is loaded: ``corral demo`` and
``corral --help`` import this package for the ``run`` subcommand and need not pay for it.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import signal
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs

from corral._errors import InvalidSpec
from corral.procman._config import (
    ChildId,
    Command,
    Config,
    Env,
    Grace,
    LogSettings,
    LogSize,
    Positive,
    ProcessConfig,
    SupervisorConfig,
    WorkDir,
)
from corral.supervisor import BRUTAL_KILL, INFINITY, AutoShutdown, Backoff, Restart, Strategy

_T = TypeVar("_T")
Hook = Callable[[Any, Any], Any]  # cattrs' structure hook: (value, type) -> structured value

_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_CHILD_COMMON = ("id", "type", "restart", "shutdown", "significant")
_SUPERVISOR_OPTIONS = ("strategy", "max_restarts", "max_seconds", "backoff", "auto_shutdown", "name")
_LOG_OPTIONS = ("log_dir", "log_max_bytes", "log_backups")
_PROCESS_KEYS = (*_CHILD_COMMON, "command", "env", "cwd", "stop_signal")
_NESTED_KEYS = (*_CHILD_COMMON, *_SUPERVISOR_OPTIONS, "child", "process")
_BACKOFF_KEYS = ("initial", "maximum", "multiplier", "jitter", "reset_after")
_TOML_KEY = {"child": "child", "process": "process", "both": "process"}  # where children are
_MISSING = {  # what to write when cattrs finds a required key missing
    "id": 'missing: every child needs an id, e.g. id = "web"',
    "command": 'missing: write command = ["program", "arg", ...]',
}
_GRACE_WORDS = {"brutal_kill": BRUTAL_KILL, "infinity": INFINITY}


# ---------------------------------------------------------------------------------
# Structure hooks
# ---------------------------------------------------------------------------------


def _expect(what: str, ok: Callable[[Any], object], convert: Callable[[Any], Any] = lambda v: v) -> Hook:
    """A hook: ``convert(value)`` if ``ok(value)``, else "must be <what>, got <value>"."""

    def structure(value: Any, _: object) -> Any:
        if not ok(value):
            raise InvalidSpec("", f"must be {what}, got {value!r}")
        return convert(value)

    return structure


def _real(value: object, minimum: float = 0.0) -> bool:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)
    return ok and value >= minimum  # type: ignore[operator]


def _whole(value: object, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _signal(value: object) -> signal.Signals | None:
    try:
        if isinstance(value, str):
            name = value.upper()
            return signal.Signals[name if name.startswith("SIG") else "SIG" + name]
        return signal.Signals(value) if isinstance(value, int) and not isinstance(value, bool) else None
    except (KeyError, ValueError):
        return None


def _enum(kind: type[Any]) -> Hook:
    values = [member.value for member in kind]
    ok = lambda v: isinstance(v, str) and v.lower() in values  # noqa: E731
    return _expect(f"one of {', '.join(map(repr, values))}", ok, lambda v: kind(v.lower()))


_child_id = _expect(
    "a name of letters, digits, '_', '.', '-' (it names the log file)",
    lambda v: isinstance(v, str) and _ID.match(v),
)
_grace = _expect(
    'seconds >= 0, "brutal_kill" or "infinity"',
    lambda v: _real(v) or (isinstance(v, str) and v.lower() in _GRACE_WORDS),
    lambda v: _GRACE_WORDS[v.lower()] if isinstance(v, str) else float(v),
)
_strings = _expect(
    'a non-empty list of strings such as ["sleep", "10"]',
    lambda v: isinstance(v, list) and v and all(isinstance(part, str) for part in v) and v[0],
    tuple,
)
_path = _expect("a directory path (a string)", lambda v: isinstance(v, str) and v)


def _command(value: object, _: object) -> tuple[str, ...]:
    if isinstance(value, str):
        suggestion = ", ".join(f'"{part}"' for part in shlex.split(value)) if value.strip() else '"..."'
        raise InvalidSpec(
            "",
            "must be a list of strings, not a single string (corral runs no shell and splits "
            f"nothing): write command = [{suggestion}], or "
            f'command = ["sh", "-c", {value!r}] for shell syntax',
        )
    return _strings(value, _)  # type: ignore[no-any-return]


def _env(value: object, _: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise InvalidSpec("", f'must be a table such as {{ PORT = "8080" }}, got {value!r}')
    for key, item in value.items():
        if not isinstance(item, str):
            raise InvalidSpec(key, f"must be a string (quote it: {key} = {str(item)!r}), got {item!r}")
    return tuple(value.items())


def _directory(base: Path, *, exists: bool) -> Hook:
    """A directory path, relative to ``base`` (the config file's folder), ``~`` expanded."""

    def structure(value: object, _: object) -> Path:
        resolved: Path = (base / os.path.expanduser(_path(value, _))).resolve()
        if exists and not resolved.is_dir():
            raise InvalidSpec("", f"{str(resolved)!r} is not a directory")
        return resolved

    return structure


_TYPES: dict[Any, Hook] = {  # the types and Annotated aliases of the model, and their TOML
    bool: _expect("true or false", lambda v: isinstance(v, bool)),
    str: _expect("a string", lambda v: isinstance(v, str)),
    int: _expect("an integer >= 0", _whole),
    float: _expect("a number >= 0", _real, float),
    signal.Signals: _expect('a signal name such as "SIGTERM", "SIGINT" or "SIGQUIT"', _signal, _signal),
    **{kind: _enum(kind) for kind in (Restart, Strategy, AutoShutdown)},
    ChildId: _child_id,
    Grace: _grace,
    Positive: _expect("a number > 0", lambda v: _real(v) and v > 0, float),
    LogSize: _expect("an integer >= 1", lambda v: _whole(v, 1)),
    Command: _command,
    Env: _env,
}


def _check_keys(table: Mapping[str, Any], allowed: Sequence[str], path: str = "", hint: str = "") -> None:
    for key in table:
        if key not in allowed:
            where = f"{path}.{key}" if path else key
            raise InvalidSpec(where, f"unknown key{hint}; known keys here: {', '.join(allowed)}")


def _check_program(proc: ProcessConfig) -> None:
    program, cwd = proc.command[0], proc.cwd or "."
    if "/" in program:
        full = os.path.join(cwd, os.path.expanduser(program))
        if not (os.path.isfile(full) and os.access(full, os.X_OK)):
            raise InvalidSpec("command[0]", f"{program!r} is not an executable file (relative to {cwd})")
    elif shutil.which(program, path=dict(proc.env).get("PATH", os.environ.get("PATH", os.defpath))) is None:
        raise InvalidSpec("command[0]", f"program {program!r} was not found on PATH")


def _entries(table: Mapping[str, Any], path: str = "") -> Iterator[tuple[Mapping[str, Any], str]]:
    """Every [[child]] table in the document, with its TOML path, in the order cattrs
    structures them (depth first); what is not a table is left to the hooks to name."""
    key = "process" if "process" in table else "child"
    entries = table.get(key)
    for i, entry in enumerate(entries if isinstance(entries, list) else ()):
        if isinstance(entry, Mapping):
            where = f"{path}.{key}[{i}]" if path else f"{key}[{i}]"
            yield entry, where
            yield from _entries(entry, where)


# ---------------------------------------------------------------------------------
# Structuring the tables
# ---------------------------------------------------------------------------------


def _message(exc: InvalidSpec) -> str:
    return str(exc).removeprefix(f"{exc.field}: ")


def _structure(fn: Callable[[Any, Any], _T], table: Any, cls: Any, key_of: Callable[[str], str] = str) -> _T:
    """``fn(table, cls)``, a cattrs structure function; its first error as an InvalidSpec
    naming the TOML path in ``table`` (``key_of``: attribute name -> TOML key).

    cattrs collects errors in field order, then element order, and notes on each the
    attribute or index it was structuring. A hook's InvalidSpec names a field relative
    to its value; a validator's, one of its class's attributes.
    """
    from cattrs.errors import AttributeValidationNote, BaseValidationError, IterableValidationNote

    try:
        return fn(table, cls)
    except BaseValidationError as group:
        exc: Exception = group
    path = ""
    while isinstance(exc, BaseValidationError):
        exc = exc.exceptions[0]
        for note in getattr(exc, "__notes__", ()):
            if isinstance(note, AttributeValidationNote):
                path += "." + key_of(note.name)
            elif isinstance(note, IterableValidationNote):
                path += f"[{note.index}]"
    if isinstance(exc, KeyError):
        exc = InvalidSpec("", _MISSING[exc.args[0]])
    if not isinstance(exc, InvalidSpec):
        raise exc  # a bug: hooks and validators report bad values as InvalidSpec
    field = exc.field if path else re.sub(r"^\w+", lambda m: key_of(m[0]), exc.field)
    if field:
        path += field if field.startswith("[") else "." + field
    raise InvalidSpec(path.removeprefix("."), _message(exc)) from None


def _equal_to(kind: object) -> Callable[[object], bool]:
    return lambda other: bool(other == kind)


class _Loader:
    """One config load: a cattrs converter whose hooks resolve paths against ``base``."""

    def __init__(self, base: Path, document: Mapping[str, Any]) -> None:
        from cattrs import Converter
        from cattrs.gen import make_dict_structure_fn, override

        self.base = base
        # Ids name log files, so they are unique in the whole tree; a duplicate's message
        # names the TOML path of the first use, which hooks do not know: look it up here.
        self.paths = {id(entry): where for entry, where in _entries(document)}
        self.ids: dict[str, str] = {}  # id -> TOML path of its first use
        self.conv = Converter()
        hooks = {
            **_TYPES,
            WorkDir: lambda value, t: str(_directory(base, exists=True)(value, t)),
            Path: _directory(base, exists=False),
            Backoff | None: self.backoff,
            ProcessConfig | SupervisorConfig: self.child,
        }
        for kind, hook in hooks.items():
            if isinstance(kind, type):
                self.conv.register_structure_hook(kind, hook)
            else:  # an Annotated alias or a union is no class: match it by equality
                self.conv.register_structure_hook_func(_equal_to(kind), hook)
        # By where a supervisor's children are: [[child]], [[process]], or both (refused where
        # the children are read: after the supervisor's id and name, as ever).
        self.supervisor_by_key = {
            key: make_dict_structure_fn(
                SupervisorConfig,
                self.conv,
                children=override(rename=_TOML_KEY[key], struct_hook=self.children(key)),
            )
            for key in _TOML_KEY
        }
        self.logs = make_dict_structure_fn(  # the root's log_* options
            LogSettings,
            self.conv,
            dir=override(rename="log_dir"),
            max_bytes=override(rename="log_max_bytes"),
            backups=override(rename="log_backups"),
        )

    def supervisor(self, table: Mapping[str, Any], options_at: str = "") -> SupervisorConfig:
        """A supervisor's table (the root's options are under ``options_at``: "supervisor.")."""
        key = (
            "both"
            if "child" in table and "process" in table
            else "process"
            if "process" in table
            else "child"
        )
        key_of = lambda name: _TOML_KEY[key] if name == "children" else options_at + name  # noqa: E731
        return _structure(self.supervisor_by_key[key], table, SupervisorConfig, key_of)

    def children(self, key: str) -> Hook:
        def structure(entries: object, _: object) -> tuple[ProcessConfig | SupervisorConfig, ...]:
            if key == "both":
                raise InvalidSpec(
                    "",
                    "use either [[child]] or [[process]] entries in one supervisor, not both: "
                    "children start in the order written, which TOML cannot keep across two lists",
                )
            if not isinstance(entries, list) or not all(isinstance(item, Mapping) for item in entries):
                raise InvalidSpec("", f"must be an array of tables ([[{key}]] entries), got {entries!r}")
            return self.conv.structure(entries, tuple[ProcessConfig | SupervisorConfig, ...])

        return structure

    def child(self, entry: Mapping[str, Any], _: object) -> ProcessConfig | SupervisorConfig:
        """A [[child]] table: a process (it has a command) or a nested supervisor."""
        nested = "child" in entry or "process" in entry
        kind = entry.get("type", "process" if "command" in entry else "supervisor" if nested else None)
        if kind is None:
            raise InvalidSpec(
                "command",
                'missing: a process needs command = ["program", "arg", ...]; a nested '
                'supervisor needs type = "supervisor" and its own [[...child]] entries',
            )
        if kind not in ("process", "supervisor"):
            raise InvalidSpec("type", f'must be "process" or "supervisor", got {kind!r}')
        if kind == "supervisor":
            _check_keys(entry, _NESTED_KEYS, hint=" for a nested supervisor")
        else:
            _check_keys(
                entry, _PROCESS_KEYS, hint=' for a process (a nested supervisor needs type = "supervisor")'
            )
        child_id = entry.get("id")
        if isinstance(child_id, str) and _ID.match(child_id):  # the id hook names what is wrong otherwise
            if child_id in self.ids:
                raise InvalidSpec(
                    "id",
                    f"duplicate id {child_id!r} (already used at {self.ids[child_id]}); ids are unique "
                    "in the whole tree because each names a log file",
                )
            self.ids[child_id] = self.paths[id(entry)]
        if kind == "supervisor":
            return self.supervisor({"name": child_id, **entry})
        proc: ProcessConfig = _structure(self.conv.structure, entry, ProcessConfig)
        if proc.cwd is None:  # relative paths in a config are relative to the config
            proc = attrs.evolve(proc, cwd=str(self.base))
        _check_program(proc)
        return proc

    def backoff(self, value: object, _: object) -> Backoff | None:
        if value is False:
            return None
        if not isinstance(value, Mapping):
            raise InvalidSpec("", f"must be a table such as {{ initial = 0.5, maximum = 30 }}, got {value!r}")
        _check_keys(value, _BACKOFF_KEYS)
        try:
            backoff: Backoff = _structure(self.conv.structure, value, Backoff)
        except InvalidSpec as exc:  # Backoff's own checks name their field "backoff.<field>"
            raise InvalidSpec(exc.field.removeprefix("backoff."), _message(exc)) from None
        return backoff


# ---------------------------------------------------------------------------------
# The API
# ---------------------------------------------------------------------------------


def parse_config(
    data: Mapping[str, Any],
    *,
    base_dir: Path | str = ".",
    log_dir: Path | str | None = None,
    source: Path | None = None,
) -> Config:
    """Validate a parsed TOML document; relative paths are relative to ``base_dir``."""
    _check_keys(data, ("supervisor", "child", "process"))
    top = data.get("supervisor", {})
    if not isinstance(top, Mapping):
        raise InvalidSpec(
            "supervisor",
            "must be one table, [supervisor], holding the root's options; a nested supervisor "
            'is a [[child]] entry with type = "supervisor" and [[child.child]] entries',
        )
    _check_keys(top, (*_SUPERVISOR_OPTIONS, *_LOG_OPTIONS), "supervisor")
    loader = _Loader(Path(base_dir).resolve(), data)
    name = source.stem if source is not None else "corral"
    # The root: its options in [supervisor], its children at the top of the file.
    root = loader.supervisor({"id": None, "name": name, **top, **data}, options_at="supervisor.")
    logs_table = {"log_dir": "logs", **top}
    if log_dir is not None:  # --log-dir: relative to where corral runs, not to the config
        logs_table["log_dir"] = str(Path(log_dir).resolve())
    logs = _structure(loader.logs, logs_table, LogSettings, lambda name: f"supervisor.log_{name}")
    return Config(root=root, logs=logs, source=source)


def loads_config(text: str, **kwargs: Any) -> Config:
    """``parse_config`` of a TOML string (syntax errors are ``InvalidSpec`` too)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidSpec("toml", f"not valid TOML: {exc}") from None
    return parse_config(data, **kwargs)


def load_config(path: Path | str, *, log_dir: Path | str | None = None) -> Config:
    """Read and validate a config file; relative paths in it are relative to its folder."""
    source = Path(path).resolve()
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidSpec("file", f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise InvalidSpec(
            "file",
            f"{str(path)!r} is not UTF-8 text (byte {exc.start}: {exc.object[exc.start : exc.start + 1]!r}); "
            "TOML files must be UTF-8: save it as UTF-8",
        ) from None
    return loads_config(text, base_dir=source.parent, log_dir=log_dir, source=source)
