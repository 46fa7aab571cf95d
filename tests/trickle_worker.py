"""A worker that answers a call with a frame header announcing 60 MiB, then trickles a
few bytes and stalls (tests/test_pool_faults.py: a slow frame cannot pin memory)."""

import json
import os
import struct
import sys
import time


def read() -> bytes:
    (n,) = struct.unpack(">I", sys.stdin.buffer.read(4))
    return sys.stdin.buffer.read(n)


def write(payload: bytes) -> None:
    sys.stdout.buffer.write(struct.pack(">I", len(payload)) + payload)
    sys.stdout.buffer.flush()


hello = {"t": "hello", "protocol": 1, "pid": os.getpid(), "codecs": ["json"], "runtime": "trickle"}
hello["capabilities"] = ["call"]
write(json.dumps(hello).encode())
read()  # the welcome
write(json.dumps(["ready", 0, {}]).encode())
read()  # a call
sys.stdout.buffer.write(struct.pack(">I", 60 << 20) + b'["ok", 1, "' + b"x" * 300_000)
sys.stdout.buffer.flush()
time.sleep(60)
