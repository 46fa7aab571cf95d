"""A handler module whose init() does what a control file says (read at each start).

Env ``CORRAL_TEST_INIT_FILE`` names the file; its content: ``ok`` (or missing file),
``fail`` (init raises), ``hang`` (init never returns), ``exit`` (prints, then exits 5),
``slow:<seconds>`` (sleeps, then succeeds).
"""

import os
import sys
import time

from tests.handlers_basic import echo, getpid

__all__ = ["echo", "getpid", "init"]


class InitRefused(RuntimeError):
    pass


def init() -> None:
    path = os.environ.get("CORRAL_TEST_INIT_FILE")
    mode = "ok"
    if path:
        try:
            with open(path) as f:
                mode = f.read().strip()
        except FileNotFoundError:
            pass
    print(f"init mode {mode}", file=sys.stderr, flush=True)
    if mode == "fail":
        raise InitRefused("init told to fail")
    if mode == "hang":
        time.sleep(1000)
    if mode == "exit":
        print("init says goodbye", file=sys.stderr, flush=True)
        os._exit(5)
    if mode.startswith("slow:"):
        time.sleep(float(mode[5:]))
