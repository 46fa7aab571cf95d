"""A worker written against the wire protocol alone, that misbehaves on purpose once a
call arrives (``python tests/rogue_worker.py MODE``):

- ``pickle``: answers with a pickle frame that opens ``$CORRAL_TEST_MARKER`` when
  unpickled (tests/test_trust.py: a JSON pool must refuse it without unpickling);
- ``trickle``: sends a header announcing 60 MiB, a few bytes, then stalls
  (tests/test_pool_faults.py: a slow frame cannot pin the parent's memory).
"""

import json
import os
import pickle
import struct
import sys
import time


def read() -> bytes:
    (n,) = struct.unpack(">I", sys.stdin.buffer.read(4))
    return sys.stdin.buffer.read(n)


def write(payload: bytes) -> None:
    sys.stdout.buffer.write(struct.pack(">I", len(payload)) + payload)
    sys.stdout.buffer.flush()


class Boom:
    def __reduce__(self) -> "tuple[object, tuple[str, str]]":
        return (open, (os.environ["CORRAL_TEST_MARKER"], "w"))


mode = sys.argv[1]
codecs = ["pickle", "json"] if mode == "pickle" else ["json"]
hello = {"t": "hello", "protocol": 1, "pid": os.getpid(), "codecs": codecs, "runtime": "rogue"}
hello["capabilities"] = ["call"]
write(json.dumps(hello).encode())
read()  # the welcome
write(json.dumps(["ready", 0, {"pid": os.getpid()}]).encode())
request = json.loads(read())
if mode == "pickle":
    write(pickle.dumps(("ok", request[1], Boom())))
    sys.stdin.buffer.read()
else:
    sys.stdout.buffer.write(struct.pack(">I", 60 << 20) + b'["ok", 1, "' + b"x" * 300_000)
    sys.stdout.buffer.flush()
    time.sleep(60)
