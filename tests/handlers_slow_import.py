"""A handler module that takes ~1 s to import (tests/test_forkserver.py: a template
killed or stopped while it imports)."""

import os
import time

time.sleep(float(os.environ.get("CORRAL_TEST_IMPORT_DELAY", "1.0")))


def echo(value: object) -> object:
    return value


def ids() -> "tuple[int, int, int]":
    return os.getpid(), os.getppid(), os.getpgid(0)
