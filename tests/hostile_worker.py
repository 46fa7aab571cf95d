"""A hostile worker (tests/test_trust.py): it offers pickle and JSON, and whatever the
parent chose, it answers a call with a pickle frame that opens a marker file when
unpickled. A pool with codec="json" must refuse the frame without unpickling it."""

import json
import os
import pickle
import struct
import sys


def read() -> bytes:
    (n,) = struct.unpack(">I", sys.stdin.buffer.read(4))
    return sys.stdin.buffer.read(n)


def write(payload: bytes) -> None:
    sys.stdout.buffer.write(struct.pack(">I", len(payload)) + payload)
    sys.stdout.buffer.flush()


class Boom:
    def __reduce__(self) -> "tuple[object, tuple[str, str]]":
        return (open, (os.environ["CORRAL_TEST_MARKER"], "w"))


hello = {
    "t": "hello",
    "protocol": 1,
    "pid": os.getpid(),
    "codecs": ["pickle", "json"],
    "runtime": "hostile",
    "capabilities": ["call"],
}
write(json.dumps(hello).encode())
welcome = json.loads(read())
write(json.dumps(["ready", 0, {"pid": os.getpid()}]).encode())
request = json.loads(read())
write(pickle.dumps(("ok", request[1], Boom())))
sys.stdin.buffer.read()
