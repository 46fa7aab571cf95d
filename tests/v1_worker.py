"""A worker that speaks protocol version 1.0 only, written from docs/protocol.md §9.

Standard library only, no corral code. ``argv[1]`` lists its capabilities (default
``call,ping``). Without ``cancel`` it leaves SIGINT alone (the default: it dies), as
the §9 pseudo-code does: a parent must never signal it. With ``cancel``, SIGINT
interrupts the running call (bare signals, version 1.0 §6). The welcome it got is
written to the file named by ``V1_WELCOME_LOG``, if set.
"""

import json
import os
import signal
import sys
import time
from collections.abc import Callable


def _sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


HANDLERS: dict[str, Callable[..., object]] = {
    "add": lambda a, b: a + b,
    "echo": lambda x: x,
    "sleep": _sleep,
}


def read_exactly(n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = os.read(0, n - len(data))
        if not chunk:
            sys.exit(0)  # EOF: the parent is gone
        data += chunk
    return data


def read_frame(limit: int) -> bytes:
    n = int.from_bytes(read_exactly(4), "big")
    if n > limit:
        sys.stderr.write("frame too large\n")
        sys.exit(4)
    return read_exactly(n)


def write_frame(obj: object) -> None:
    payload = json.dumps(obj, separators=(",", ":")).encode()
    os.write(1, len(payload).to_bytes(4, "big") + payload)


running = False


def on_sigint(signum: int, frame: object) -> None:
    if running:
        raise KeyboardInterrupt


def main() -> None:
    global running
    capabilities = (sys.argv[1] if len(sys.argv) > 1 else "call,ping").split(",")
    if "cancel" in capabilities:
        signal.signal(signal.SIGINT, on_sigint)
    write_frame(
        {
            "t": "hello",
            "protocol": 1,
            "pid": os.getpid(),
            "codecs": ["json"],
            "runtime": "v1-test/1.0",
            "capabilities": capabilities,
        }
    )
    welcome = json.loads(read_frame(64 * 1024 * 1024))
    if os.environ.get("V1_WELCOME_LOG"):
        with open(os.environ["V1_WELCOME_LOG"], "w") as f:
            json.dump(welcome, f)
    if welcome.get("t") != "welcome" or welcome.get("codec") != "json":
        sys.exit(4)
    limit = welcome.get("max_frame", 64 * 1024 * 1024)
    write_frame(["ready", 0, {"pid": os.getpid()}])
    while True:
        msg = json.loads(read_frame(limit))
        kind = msg[0]
        if kind == "shutdown":
            sys.exit(0)
        mid = msg[1]
        if kind == "ping":
            reply: list[object] = ["pong", mid]
        elif kind == "call" and len(msg) == 4:
            fn = HANDLERS.get(msg[2])
            if fn is None:
                reply = ["error", mid, {"type": "UnknownHandler", "message": msg[2], "traceback": ""}]
            else:
                try:
                    running = True
                    try:
                        reply = ["ok", mid, fn(*msg[3])]
                    finally:
                        running = False
                except KeyboardInterrupt:
                    reply = ["cancelled", mid]
                except Exception as exc:
                    reply = ["error", mid, {"type": type(exc).__name__, "message": str(exc), "traceback": ""}]
        else:
            reply = ["error", mid, {"type": "ProtocolError", "message": f"unknown {kind}", "traceback": ""}]
        write_frame(reply)


if __name__ == "__main__":
    main()
