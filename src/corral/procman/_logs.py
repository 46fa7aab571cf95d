"""Where a command's output goes: its rotating log file and the terminal.

Each line a command prints, and each of corral's notes about it (started, stop
requested, SIGKILL, exited), is a ``logging`` record with two extra fields: ``child``,
the command's id, and ``stream``, ``out``, ``err`` or ``---`` for a note. One formatter,
``LineFormatter``, turns a record into a line for both places::

    log file   2025-01-31 12:00:00.123 err <line>
    terminal   12:00:00 web      | err <line>     (stdout lines unmarked; notes only in the file)

A command's log is a logger of its own, outside logging's registry and propagating to no
parent (the application's handlers never see command output), with a stdlib
``RotatingFileHandler`` writing ``<dir>/<id>.log``; the terminal, if echoed to, is one
more handler shared by every command.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import TextIO

OUT, ERR, NOTE = "out", "err", "---"  # the stream a line came from; NOTE: corral's own
CORRAL = "corral"  # the name on the terminal lines about the tree itself


class LineFormatter(logging.Formatter):
    """One line of a log file or, given the width of the id column, of the terminal."""

    default_msec_format = "%s.%03d"  # 12:00:00.123, as datetime.isoformat writes it

    def __init__(self, width: int | None = None) -> None:
        if width is None:
            super().__init__("%(asctime)s %(stream)s %(message)s")
        else:
            super().__init__(f"%(asctime)s %(child)-{width}s | %(mark)s%(message)s", datefmt="%H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.mark = "err " if getattr(record, "stream", OUT) == ERR else ""
        return super().formatMessage(record)


class Console(logging.Handler):
    """The terminal: the commands' output on stdout, corral's messages about the tree
    (``say``) on stderr, each line prefixed like ``12:00:01 web    | text``. Never
    blocks the tree on a broken terminal."""

    def __init__(self, out: TextIO, err: TextIO, width: int = 8) -> None:
        super().__init__()
        self.out = out
        self.err = err
        self.setFormatter(LineFormatter(max(width, len(CORRAL))))

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "stream", OUT) != NOTE:  # the notes are for the log file; say() tells the terminal
            self._write(self.out, record)

    def say(self, text: str) -> None:
        self._write(self.err, logging.makeLogRecord({"msg": text, "child": CORRAL, "stream": NOTE}))

    def _write(self, target: TextIO, record: logging.LogRecord) -> None:
        try:
            target.write(self.format(record) + "\n")
            target.flush()
        except (OSError, ValueError):
            pass  # the terminal went away; the log files still have everything


class _LogFile(RotatingFileHandler):
    """The stdlib's size-rotated file, rotating where corral's logs always have: before a
    line would take the file past ``max_bytes`` (counted in bytes, not characters), never
    while the file is empty (Python < 3.13 would), and with no backups by starting over."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", errors="replace")
        if backups == 0:  # the stdlib would reopen the file for appending and let it grow
            self.mode = "w"

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        size = self.stream.tell() if self.stream else 0
        return size > 0 and size + len(self.format(record).encode("utf-8", "replace")) + 1 > self.maxBytes


class RotatingLog:
    """A command's log file ``<id>.log`` (and the console, if given), rotated by size:
    ``x.log`` -> ``x.log.1`` -> ... -> ``x.log.<backups>`` (the oldest is dropped); with
    no backups the file starts over. Lines written after ``close()`` are dropped."""

    def __init__(self, path: Path, max_bytes: int, backups: int, console: Console | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.child_id = path.stem  # the file is named after the command's id
        self._file = _LogFile(path, max_bytes, backups)
        self._file.setFormatter(LineFormatter())
        self._logger = logging.Logger(f"corral.run.{self.child_id}")  # not registered: no parent
        self._logger.propagate = False
        self._logger.addHandler(self._file)
        if console is not None:
            self._logger.addHandler(console)

    def write_lines(self, lines: Sequence[str], stream: str) -> None:
        for line in lines:
            self._logger.info(line, extra={"child": self.child_id, "stream": stream})

    def close(self) -> None:
        self._logger.disabled = True
        self._file.close()
