"""The Node.js worker (examples/node_worker/worker.js) over raw pipes.

The raw-frame harness (`Worker`, `spawn`) is tests/test_child_runtime.py's: a real
``node`` process, reader threads, every read bounded by a timeout, every process killed
in a ``finally``. Skipped when node is not installed.
"""

from __future__ import annotations

import shutil
import signal
import time
from typing import Any

import pytest

from _corral_child import _frames as F
from tests import test_child_runtime as harness
from tests.test_child_runtime import NODE_WORKER, Worker

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node not installed")

spawn = harness.spawn  # the fixture: workers spawned through it are killed at teardown


def start_node(
    spawn: Any,
    *,
    features: list[str] | None = None,
    pipeline: bool | None = None,
    env: dict[str, str] | None = None,
    max_frame: int = F.DEFAULT_MAX_FRAME,
    expect_ready: bool = True,
) -> Worker:
    """A node worker past its handshake: a 1.1 welcome if `features`/`pipeline` are given,
    else exactly what a 1.0 parent sends."""
    assert NODE is not None
    w: Worker = spawn([NODE, str(NODE_WORKER)], env)
    hello = w.hello()
    assert hello["protocol"] == 1 and hello["codecs"] == ["json"]
    assert hello["runtime"].startswith("node/")
    assert hello["pid"] == w.proc.pid
    assert "apply" not in hello["capabilities"]
    welcome = F.make_welcome("json", "w-test", None, max_frame=max_frame)
    if features is not None:
        welcome["features"] = features
    if pipeline is not None:
        welcome["pipeline"] = pipeline
    w.write_raw(F.encode_frame(F.encode_json_object(welcome)))
    w.codec = F.get_codec("json")
    if expect_ready:
        assert w.read() == ["ready", 0, {"pid": w.proc.pid}]
    return w


@pytest.fixture
def nodeworker(spawn: Any) -> Worker:
    """A node worker welcomed by a protocol 1.0 parent."""
    return start_node(spawn)


# ------------------------------------------------------------------ protocol 1.0


def test_node_worker_calls(nodeworker: Worker) -> None:
    w = nodeworker
    assert w.request("call", 1, "echo", [{"a": [1, "é", None]}]) == ["ok", 1, {"a": [1, "é", None]}]
    assert w.request("call", 2, "add", [2, 3]) == ["ok", 2, 5]
    kind, mid, info = w.request("call", 3, "fail", ["nope"])
    assert (kind, mid, info["type"], info["message"]) == ("error", 3, "Error", "nope")
    assert "worker.js" in info["traceback"]
    kind, mid, info = w.request("call", 4, "missing", [])
    assert (kind, mid, info["type"]) == ("error", 4, "UnknownHandler")
    assert w.request("ping", 5) == ["pong", 5]
    assert w.request("call", 6, "sleep", [0.05]) == ["ok", 6, 0.05]
    kind, mid, info = w.request("frobnicate", 7)
    assert (kind, mid, info["type"]) == ("error", 7, "ProtocolError")


def test_node_worker_pipelining_and_big_frames(nodeworker: Worker) -> None:
    w = nodeworker
    batch = b"".join(F.encode_frame(w.codec.dumps(["call", i, "sleep", [0]])) for i in range(20))
    w.write_raw(batch)
    assert [w.read() for _ in range(20)] == [["ok", i, 0] for i in range(20)]
    text = "x" * (2 * 1024 * 1024)
    assert w.request("call", 99, "echo", [text]) == ["ok", 99, text]


def test_node_worker_cancel_and_eof(nodeworker: Worker) -> None:
    w = nodeworker
    w.send(["call", 1, "sleep", [30]])
    time.sleep(0.3)
    w.proc.send_signal(signal.SIGINT)
    assert w.read(timeout=5) == ["cancelled", 1]
    w.proc.send_signal(signal.SIGINT)  # idle: ignored
    assert w.request("ping", 2) == ["pong", 2]
    w.close_stdin()
    assert w.wait() == 0


def test_node_worker_oversized_frame(nodeworker: Worker) -> None:
    nodeworker.write_raw(b"\xff\xff\xff\xff")
    assert nodeworker.wait() == F.EXIT_PROTOCOL_ERROR
