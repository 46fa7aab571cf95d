"""How ``corral run --reload CONFIG.toml`` finds the ``corral run`` of that config: the pid
file ``<log_dir>/corral.pid``, which ``corral run`` writes once it can take a SIGHUP
and removes when it exits.

The file names the pid, the process's start time (from /proc, so a pid reused by
another program after a ``kill -9`` is not mistaken for ``corral run``) and the
config file as it was given (made absolute, symlinks kept: a SIGHUP reads that path
again, so a link switched to another release is followed). The log directory is the
key because two ``corral run`` writing the same log files would garble them: a second
one is refused while the first runs.
"""

from __future__ import annotations

import fcntl
import os
import signal
from pathlib import Path

import attrs

from corral.procman._config import Config, LogSettings

PID_FILE = "corral.pid"


def pid_file(logs: LogSettings) -> Path:
    return logs.dir / PID_FILE


class PidFileBusy(Exception):
    """Another ``corral run`` is running with the same log directory."""


@attrs.frozen
class Owner:
    """What a pid file says: who wrote it, when that process started, for which config."""

    pid: int
    started: str  # the process's start time in clock ticks since boot ("-": no /proc)
    config: str

    @classmethod
    def me(cls, config: Path | str | None) -> Owner:
        shown = os.path.abspath(config) if config else ""  # symlinks kept
        return cls(os.getpid(), _start_time(os.getpid()) or "-", shown)

    def text(self) -> str:
        return f"{self.pid}\n{self.started}\n{self.config}\n"

    def alive(self) -> bool:
        """The process that wrote the file still runs (not another one with its pid)."""
        started = _start_time(self.pid)
        if started is not None or Path("/proc/self/stat").exists():
            return started == self.started
        try:  # no /proc: the pid alone
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat; None when the process is gone (or a zombie)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data[data.rfind(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def read_owner(path: Path) -> Owner | None:
    """The pid file's owner; None when there is no file (or it is garbled: stale)."""
    try:
        pid, started, config = path.read_text(encoding="utf-8").split("\n")[:3]
        return Owner(int(pid), started, config)
    except (OSError, ValueError):
        return None


# The lock files this process holds, by pid file: open for the process's lifetime.
_held: dict[Path, int] = {}


def _lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def claim(path: Path, config: Path | str | None) -> None:
    """Write our pid file; raises ``PidFileBusy`` when a live ``corral run`` holds it.

    Reading the pid file and writing ours is check-then-act: two ``corral run`` starting
    together would both find it free. So the claim is an exclusive ``flock`` on a lock
    file beside it (``.corral.pid.lock``, never removed: removing it would let a third
    process lock a new file while a second still waits on the old one), held until the
    process exits or ``release``; the kernel drops it when the process dies, however
    it dies. The pid file itself is still checked, for its message and for an owner
    that took no lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path not in _held:
        fd = os.open(_lock_path(path), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = read_owner(path)
            raise PidFileBusy(_busy(path, owner)) from None
        _held[path] = fd
    owner = read_owner(path)
    if owner is not None and owner.pid != os.getpid() and owner.alive():
        _unlock(path)
        raise PidFileBusy(_busy(path, owner))
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    scratch.write_text(Owner.me(config).text(), encoding="utf-8")
    os.replace(scratch, path)  # a reader sees the old file or the whole new one


def _busy(path: Path, owner: Owner | None) -> str:
    who = "another corral run" if owner is None else f"another corral run (pid {owner.pid}, {owner.config})"
    return (
        f"{who} already runs with the log directory {path.parent}; stop it first, or give "
        "this one its own with --log-dir"
    )


def _unlock(path: Path) -> None:
    fd = _held.pop(path, None)
    if fd is not None:
        os.close(fd)  # drops the flock


def release(path: Path) -> None:
    """Remove our pid file (not one another ``corral run`` wrote since) and let go of
    its lock."""
    owner = read_owner(path)
    if owner is not None and owner.pid == os.getpid():
        path.unlink(missing_ok=True)
    _unlock(path)


def send_reload(config: Config, shown: str) -> tuple[int, str]:
    """SIGHUP to the ``corral run`` of ``config``: (exit status, message for the user)."""
    path = pid_file(config.logs)
    owner = read_owner(path)
    start = f"start it with: corral run {shown}"
    if owner is None:
        return 1, (
            f"no corral run is running {shown}: there is no pid file {path} (if it was "
            f"started with --log-dir, pass the same --log-dir here); {start}"
        )
    if not owner.alive():
        path.unlink(missing_ok=True)
        return 1, (
            f"no corral run is running {shown}: the pid file {path} names pid {owner.pid}, "
            f"which is gone (it was killed before it could remove the file; removed now); {start}"
        )
    given = os.path.abspath(shown)
    if config.source is not None and not _same_file(owner.config, given):
        return 1, (
            f"the corral run using {path.parent} (pid {owner.pid}) runs {owner.config}, not "
            f"{given}; reload that file, or start this one with its own --log-dir"
        )
    os.kill(owner.pid, signal.SIGHUP)
    return 0, (
        f"sent SIGHUP to corral run (pid {owner.pid}); its console says what changed "
        '("reload: ...") or why nothing did ("reload rejected: ...")'
    )


def _same_file(running: str, given: str) -> bool:
    """``given`` is the file the ``corral run`` that runs ``running`` (the path it was
    given, made absolute) reads at a SIGHUP: the same path, or, following symlinks
    now, the same file (a link switched to another release since is followed too)."""
    return running == given or os.path.realpath(running) == os.path.realpath(given)
