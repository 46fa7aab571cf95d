"""Where a command's output goes: its rotating log file and the terminal."""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO


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
