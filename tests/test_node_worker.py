"""The Node.js worker (examples/node_worker/worker.js) over raw pipes, protocol 1.1.

The raw-frame harness (`Worker`, `spawn`) is tests/test_child_runtime.py's: a real
``node`` process, reader threads, every read bounded by a timeout, every process killed
in a ``finally``. Skipped when node is not installed.
"""

from __future__ import annotations

import queue
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

QUIET = 0.3  # how long "nothing more arrives" is watched for
CAPABILITIES_1_1 = ["call", "ping", "cancel", "pipeline", "kwargs", "stream", "progress", "withdraw"]


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


def assert_quiet(w: Worker, seconds: float = QUIET) -> None:
    """Nothing arrives on the reply channel for `seconds`."""
    with pytest.raises(queue.Empty):
        frame = w.read_frame(timeout=seconds)
        pytest.fail(f"unexpected frame {frame!r}")


def wait_for_stderr(w: Worker, text: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in w.stderr:
        assert time.monotonic() < deadline, f"{text!r} not in stderr:\n{w.stderr}"
        time.sleep(0.01)


def read_stream(w: Worker, sid: int, *, window: int) -> tuple[list[Any], list[Any]]:
    """Reads a stream to its final reply, granting one credit per chunk received, and
    checks it never runs more than `window` chunks ahead of the credit: (values, final)."""
    values: list[Any] = []
    credit = window
    while True:
        msg = w.read()
        if msg[0] != "chunk":
            return values, msg
        assert msg[1] == sid
        credit -= 1
        assert credit >= 0, "a chunk beyond the window"
        values.append(msg[2])
        w.send(["credit", sid, 1])
        credit += 1


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


def test_node_worker_synchronous_requests_in_a_long_batch_do_not_recurse(nodeworker: Worker) -> None:
    w = nodeworker
    n = 20_000
    w.write_raw(b"".join(F.encode_frame(w.codec.dumps(["call", i, "add", [i, 1]])) for i in range(n)))
    assert [w.read() for _ in range(n)] == [["ok", i, i + 1] for i in range(n)]


# ------------------------------------------------------------------ 1.1: handshake, kwargs


def test_hello_offers_the_1_1_capabilities(spawn: Any) -> None:
    assert NODE is not None
    w: Worker = spawn([NODE, str(NODE_WORKER)])
    hello = w.hello()
    assert hello["protocol"] == 1  # 1.1 is negotiated by capabilities, not by version
    assert hello["capabilities"] == CAPABILITIES_1_1


@pytest.mark.parametrize("features", [["kwargs"], "kwargs", [1]])
def test_a_welcome_with_malformed_features_exits_4(spawn: Any, features: Any) -> None:
    if features == ["kwargs"]:
        w = start_node(spawn, features=features)  # well-formed: served
        assert w.request("ping", 1) == ["pong", 1]
        return
    w = start_node(spawn, features=features, expect_ready=False)
    assert w.wait() == F.EXIT_PROTOCOL_ERROR
    assert "features" in w.stderr


def test_kwargs_arrive_as_one_last_argument(spawn: Any) -> None:
    w = start_node(spawn, features=["kwargs"])
    assert w.request("call", 1, "greet", ["bob"], {"greeting": "hi"}) == ["ok", 1, "hi bob"]
    assert w.request("call", 2, "greet", ["bob"], {}) == ["ok", 2, "hello bob"]  # {}: nothing extra
    assert w.request("call", 3, "greet", ["bob"]) == ["ok", 3, "hello bob"]  # the 1.0 form
    assert w.request("call", 4, "echo", [1], {"a": 1}) == ["ok", 4, 1]  # echo(x, kwargs) returns x
    bad_kwargs: list[Any] = [[], None, "x", 3]
    for i, bad in enumerate(bad_kwargs, start=6):
        kind, rid, info = w.request("call", i, "greet", ["bob"], bad)
        assert (kind, rid, info["type"]) == ("error", i, "ProtocolError")
    assert w.request("ping", 20) == ["pong", 20]


# ------------------------------------------------------------------ 1.1: streams


def test_a_stream_never_runs_more_than_window_chunks_ahead(spawn: Any) -> None:
    w = start_node(spawn, features=["stream"], pipeline=True)
    w.send(["stream", 1, "count", [1000], {}, 8])
    assert [w.read() for _ in range(8)] == [["chunk", 1, i] for i in range(8)]
    assert_quiet(w)  # credit exhausted: the worker waits
    # grants of varying size: after each, exactly that many chunks, then silence
    received = 8
    for grant in (1, 5, 13):
        w.send(["credit", 1, grant])
        assert [w.read() for _ in range(grant)] == [["chunk", 1, received + i] for i in range(grant)]
        received += grant
        assert_quiet(w, 0.1)
    w.send(["credit", 1, 1000 - received])
    rest = [w.read() for _ in range(1000 - received)]
    assert rest == [["chunk", 1, i] for i in range(received, 1000)]
    assert w.read() == ["ok", 1, None]  # the generator returned nothing
    wait_for_stderr(w, "count finally")
    assert w.request("ping", 2) == ["pong", 2]


def test_a_stream_with_credit_granted_per_chunk(spawn: Any) -> None:
    w = start_node(spawn, features=["stream"])
    w.send(["stream", 1, "count", [200], {}, 3])
    values, final = read_stream(w, 1, window=3)
    assert values == list(range(200)) and final == ["ok", 1, None]


def test_an_async_generator_stream_and_its_return_value(spawn: Any) -> None:
    w = start_node(spawn, features=["stream"])
    w.send(["stream", 1, "tokens", ["the quick  brown fox"], {}, 2])
    values, final = read_stream(w, 1, window=2)
    assert values == ["the", "quick", "brown", "fox"]
    assert final == ["ok", 1, 4]  # tokens returns the number of words


def test_any_iterable_streams_and_a_non_iterable_is_a_type_error(spawn: Any) -> None:
    w = start_node(spawn, features=["stream"])
    w.send(["stream", 1, "echo", [[1, "two", None]], {}, 10])  # an array result
    assert [w.read() for _ in range(4)] == [
        ["chunk", 1, 1],
        ["chunk", 1, "two"],
        ["chunk", 1, None],
        ["ok", 1, None],
    ]
    # an async handler: the Promise's value streams (sleep([]) resolves to [] after 0 s)
    assert w.request("stream", 2, "sleep", [[]], {}, 10) == ["ok", 2, None]
    kind, rid, info = w.request("stream", 3, "add", [1, 2], {}, 10)
    assert (kind, rid, info["type"]) == ("error", 3, "TypeError")
    assert "non-iterable" in info["message"]
    kind, rid, info = w.request("stream", 4, "missing", [], {}, 10)
    assert (kind, rid, info["type"]) == ("error", 4, "UnknownHandler")
    # `call` of a generator handler: an error pointing at stream requests
    kind, rid, info = w.request("call", 5, "count", [3])
    assert (kind, rid, info["type"]) == ("error", 5, "TypeError") and "stream" in info["message"]
    for i, bad in enumerate(
        [
            ["stream", 6, "count", [3], {}],  # no window
            ["stream", 7, "count", [3], {}, 0],
            ["stream", 8, "count", [3], {}, 1.5],
            ["stream", 9, "count", [3], [], 4],
            ["stream", 10, "count", 3, {}, 4],
        ],
        start=6,
    ):
        kind, rid, info = w.request(*bad)
        assert (kind, rid, info["type"]) == ("error", i, "ProtocolError")
    assert w.request("ping", 11) == ["pong", 11]


def test_stream_kwargs_arrive_as_one_last_argument(spawn: Any) -> None:
    w = start_node(spawn, features=["stream", "kwargs"])
    w.send(["stream", 1, "echo", [[1, 2]], {"ignored": True}, 10])  # echo(x, kwargs) streams x
    assert [w.read() for _ in range(3)] == [["chunk", 1, 1], ["chunk", 1, 2], ["ok", 1, None]]


def test_an_error_mid_stream_follows_the_chunks_already_sent(spawn: Any) -> None:
    w = start_node(spawn, features=["stream"])
    w.send(["stream", 1, "fail_after", [3, "broke at 3"], {}, 10])
    assert [w.read() for _ in range(3)] == [["chunk", 1, i] for i in range(3)]
    kind, rid, info = w.read()
    assert (kind, rid, info["type"], info["message"]) == ("error", 1, "Error", "broke at 3")
    assert "worker.js" in info["traceback"]
    assert w.request("ping", 2) == ["pong", 2]


def test_an_unencodable_chunk_ends_the_stream_with_an_encode_error(spawn: Any) -> None:
    w = start_node(spawn, features=["stream"], max_frame=1024)
    # 1e20 is written 100000000000000000000: the second item's chunk exceeds max_frame
    many = ",".join(["1e20"] * 100).encode()
    w.write_raw(F.encode_frame(b'["stream",1,"echo",[[1,[' + many + b"],3]],{},10]"))
    assert w.read() == ["chunk", 1, 1]
    kind, rid, info = w.read()
    assert (kind, rid, info["type"]) == ("error", 1, "EncodeError")
    assert "max_frame" in info["message"]
    assert w.request("ping", 2) == ["pong", 2]


def test_requests_behind_a_stream_wait_their_turn_and_stale_credit_is_ignored(spawn: Any) -> None:
    w = start_node(spawn, features=["stream"], pipeline=True)
    w.send(["stream", 1, "count", [5], {}, 2])
    w.send(["ping", 2])
    w.send(["credit", 2, 5])  # names the queued ping, not the running stream: ignored
    w.send(["credit", 1, 0])  # an invalid count: ignored (logged)
    assert [w.read() for _ in range(2)] == [["chunk", 1, 0], ["chunk", 1, 1]]
    assert_quiet(w)  # the ping waits behind the stream
    w.send(["credit", 1, 3])
    assert [w.read() for _ in range(3)] == [["chunk", 1, i] for i in range(2, 5)]
    assert w.read() == ["ok", 1, None]
    assert w.read() == ["pong", 2]
    w.send(["credit", 1, 5])  # the stream is over: stale
    assert w.request("ping", 3) == ["pong", 3]
    assert_quiet(w, 0.1)
    assert "invalid count" in w.stderr


# ------------------------------------------------------------------ 1.1: cancel


def test_a_cancelled_queued_request_is_answered_in_its_turn_without_running(spawn: Any) -> None:
    w = start_node(spawn, features=["stream"], pipeline=True)
    w.send(["call", 1, "sleep", [0.5]])
    w.send(["call", 2, "fail", ["must not run"]])
    w.send(["stream", 3, "slow_count", [3, 0], {}, 4])
    w.send(["ping", 4])
    w.send(["cancel", 2])
    w.send(["cancel", 3])
    assert w.read() == ["ok", 1, 0.5]
    assert w.read() == ["cancelled", 2]
    assert w.read() == ["cancelled", 3]
    assert w.read() == ["pong", 4]
    w.send(["cancel", 2])  # answered already: ignored
    assert w.request("ping", 5) == ["pong", 5]
    assert "slow_count finally" not in w.stderr  # the stream never started


def test_a_cancel_abandons_the_running_call_at_once_without_sigint(spawn: Any) -> None:
    w = start_node(spawn, pipeline=True)
    w.send(["call", 1, "sleep", [30]])
    w.send(["ping", 2])
    time.sleep(0.2)
    started = time.monotonic()
    w.send(["cancel", 1])
    assert w.read(timeout=5) == ["cancelled", 1]
    assert time.monotonic() - started < 2
    assert w.read() == ["pong", 2]  # the next request is served at once
    w.send(["cancel", 1])  # answered already: ignored
    assert w.request("call", 3, "add", [1, 2]) == ["ok", 3, 3]


def test_cancelling_a_stream_waiting_for_credit_runs_its_finally(spawn: Any) -> None:
    w = start_node(spawn, features=["stream"], pipeline=True)
    w.send(["stream", 7, "slow_count", [100, 0.01], {}, 3])
    assert [w.read() for _ in range(3)] == [["chunk", 7, i] for i in range(3)]
    assert_quiet(w)  # waiting for credit
    w.send(["cancel", 7])
    assert w.read() == ["cancelled", 7]
    wait_for_stderr(w, "slow_count finally 7")
    w.send(["credit", 7, 10])  # stale: ignored
    assert w.request("ping", 8) == ["pong", 8]
    assert_quiet(w, 0.1)


def test_cancelling_a_sync_generator_stream_runs_its_finally(spawn: Any) -> None:
    w = start_node(spawn, features=["stream"], pipeline=True)
    w.send(["stream", 1, "count", [10], {}, 2])
    assert [w.read() for _ in range(2)] == [["chunk", 1, 0], ["chunk", 1, 1]]
    w.send(["cancel", 1])
    assert w.read() == ["cancelled", 1]
    wait_for_stderr(w, "count finally")
    assert w.request("ping", 2) == ["pong", 2]


def test_cancelling_a_stream_in_the_middle_of_a_step_abandons_it(spawn: Any) -> None:
    """An async generator awaiting inside its body cannot be interrupted: the stream is
    answered `cancelled` at once and its finally runs once that await settles."""
    w = start_node(spawn, features=["stream"], pipeline=True)
    w.send(["stream", 1, "slow_count", [10, 3.0], {}, 5])
    assert w.read() == ["chunk", 1, 0]  # now awaiting 3 s before the next yield
    time.sleep(0.1)
    started = time.monotonic()
    w.send(["cancel", 1])
    assert w.read(timeout=5) == ["cancelled", 1]
    assert w.request("ping", 2) == ["pong", 2]
    assert time.monotonic() - started < 2
    assert "slow_count finally" not in w.stderr  # the await has not settled yet
    wait_for_stderr(w, "slow_count finally 1", timeout=10)
    assert_quiet(w, 0.1)  # no chunk of the abandoned stream


def test_progress_of_an_abandoned_call_is_dropped(spawn: Any) -> None:
    w = start_node(spawn, features=["progress"], pipeline=True)
    w.send(["call", 1, "work", [200]])  # 200 steps of 10 ms
    assert w.read()[:2] == ["progress", 1]
    w.send(["cancel", 1])
    while (msg := w.read()) != ["cancelled", 1]:
        assert msg[:2] == ["progress", 1]  # sent before the cancel was read
    w.send(["call", 2, "sleep", [0.5]])  # the abandoned `work` keeps running meanwhile
    assert w.read() == ["ok", 2, 0.5]  # ...and none of its progress leaks into call 2


def test_sigint_is_ignored_with_pipeline_even_mid_call(spawn: Any) -> None:
    w = start_node(spawn, pipeline=True)
    w.send(["call", 1, "sleep", [0.5]])
    time.sleep(0.1)
    w.proc.send_signal(signal.SIGINT)
    assert w.read(timeout=5) == ["ok", 1, 0.5]
    w.proc.send_signal(signal.SIGINT)  # idle
    assert w.request("ping", 2) == ["pong", 2]
    assert w.proc.poll() is None


def test_without_pipeline_sigint_stops_a_running_stream(spawn: Any) -> None:
    w = start_node(spawn, features=["stream"])  # no "pipeline": the 1.0 SIGINT rule
    w.send(["stream", 1, "count", [10], {}, 2])
    assert [w.read() for _ in range(2)] == [["chunk", 1, 0], ["chunk", 1, 1]]
    w.proc.send_signal(signal.SIGINT)
    assert w.read(timeout=5) == ["cancelled", 1]
    wait_for_stderr(w, "count finally")
    assert w.request("ping", 2) == ["pong", 2]


# ------------------------------------------------------------------ 1.1: withdraw


def test_a_withdrawn_queued_call_is_given_back_at_once_and_never_runs(spawn: Any) -> None:
    """`withdraw` (docs/protocol.md §5): a queued call is answered `withdrawn` at once,
    ahead of the running call's reply, and never runs; a withdraw of the running call,
    of an answered id or of an unknown id is ignored. The SIGINT that follows a withdraw
    is ignored (welcome "pipeline": true)."""
    w = start_node(spawn, features=["withdraw"], pipeline=True)
    w.send(["call", 1, "sleep", [1.0]])
    w.send(["call", 2, "fail", ["must not run"]])  # running it would send an error reply
    w.send(["ping", 3])
    time.sleep(0.2)  # call 1 runs, 2 and 3 wait
    started = time.monotonic()
    w.send(["withdraw", 2])
    w.send(["withdraw", 1])  # it runs: ignored, its own reply comes
    w.send(["withdraw", 77])  # unknown: ignored
    w.proc.send_signal(signal.SIGINT)  # what the parent sends after a withdraw
    assert w.read(timeout=0.6) == ["withdrawn", 2]  # while call 1 still sleeps
    assert time.monotonic() - started < 0.6
    assert w.read(timeout=5) == ["ok", 1, 1.0]
    assert w.read() == ["pong", 3]
    w.send(["withdraw", 2])  # answered already: ignored
    w.send(["withdraw", 1])
    assert w.request("call", 4, "add", [1, 2]) == ["ok", 4, 3]
    assert_quiet(w)  # no reply of call 2, none for a withdraw
    assert w.proc.poll() is None


def test_a_cancel_of_an_earlier_request_still_works_after_a_later_one_was_withdrawn(spawn: Any) -> None:
    w = start_node(spawn, features=["withdraw"], pipeline=True)
    w.send(["call", 1, "sleep", [30]])
    w.send(["call", 2, "fail", ["must not run"]])
    w.send(["call", 3, "fail", ["must not run either"]])
    w.send(["call", 4, "add", [2, 3]])
    time.sleep(0.1)
    w.send(["withdraw", 3])
    assert w.read() == ["withdrawn", 3]
    w.send(["cancel", 2])  # queued, earlier than the withdrawn id: still counts
    w.send(["cancel", 1])  # running: abandoned at once
    assert w.read(timeout=5) == ["cancelled", 1]
    assert w.read() == ["cancelled", 2]
    assert w.read() == ["ok", 4, 5]
    w.send(["cancel", 3])  # answered (withdrawn) already: ignored
    assert w.request("ping", 5) == ["pong", 5]
    assert_quiet(w, 0.1)


def test_a_withdrawn_queued_stream_never_starts_and_a_running_one_is_not_withdrawn(spawn: Any) -> None:
    w = start_node(spawn, features=["stream", "withdraw"], pipeline=True)
    w.send(["call", 1, "sleep", [0.5]])
    w.send(["stream", 2, "slow_count", [3, 0], {}, 4])
    time.sleep(0.1)
    w.send(["withdraw", 2])
    assert w.read() == ["withdrawn", 2]
    assert w.read(timeout=5) == ["ok", 1, 0.5]
    assert w.request("ping", 3) == ["pong", 3]
    assert "slow_count finally" not in w.stderr  # the stream never started
    w.send(["stream", 4, "slow_count", [3, 0.1], {}, 4])
    assert w.read() == ["chunk", 4, 0]
    w.send(["withdraw", 4])  # it runs: ignored, the stream goes on
    assert [w.read() for _ in range(3)] == [["chunk", 4, 1], ["chunk", 4, 2], ["ok", 4, None]]
    wait_for_stderr(w, "slow_count finally 4")
    assert_quiet(w, 0.1)


def test_a_request_withdrawn_during_start_up_is_answered_right_after_ready(spawn: Any) -> None:
    env = {"CORRAL_NODE_INIT_STEPS": "5"}
    w = start_node(spawn, features=["withdraw"], pipeline=True, env=env, expect_ready=False)
    w.send(["call", 1, "sleep", [0.2]])
    w.send(["call", 2, "fail", ["must not run"]])
    w.send(["withdraw", 2])
    assert w.read()[0] == "ready"  # nothing goes out before it
    assert w.read() == ["withdrawn", 2]
    assert w.read() == ["ok", 1, 0.2]
    assert_quiet(w, 0.1)


# ------------------------------------------------------------------ 1.1: progress


def test_start_up_progress_comes_before_ready(spawn: Any) -> None:
    w = start_node(spawn, features=["progress"], env={"CORRAL_NODE_INIT_STEPS": "3"}, expect_ready=False)
    assert [w.read() for _ in range(3)] == [
        ["progress", 0, 1 / 3, "step 1"],
        ["progress", 0, 2 / 3, "step 2"],
        ["progress", 0, 1, "step 3"],
    ]
    assert w.read() == ["ready", 0, {"pid": w.proc.pid}]
    assert w.request("ping", 1) == ["pong", 1]


@pytest.mark.parametrize("features", [None, [], ["stream", "kwargs"]])
def test_no_progress_unless_the_welcome_asks_for_it(spawn: Any, features: list[str] | None) -> None:
    env = {"CORRAL_NODE_INIT_STEPS": "3"}
    w = start_node(spawn, features=features, env=env)  # ready is the first frame
    assert w.request("call", 1, "work", [3]) == ["ok", 1, 3]
    assert_quiet(w, 0.1)


def test_requests_sent_during_start_up_wait_for_ready(spawn: Any) -> None:
    env = {"CORRAL_NODE_INIT_STEPS": "5"}
    w = start_node(spawn, features=["progress"], pipeline=True, env=env, expect_ready=False)
    w.send(["ping", 0])  # id 0 is a request id like any other
    w.send(["ping", 1])
    w.send(["cancel", 1])
    assert [w.read()[:2] for _ in range(5)] == [["progress", 0]] * 5
    assert w.read()[0] == "ready"
    assert w.read() == ["pong", 0]
    assert w.read() == ["cancelled", 1]


def test_progress_during_a_call(spawn: Any) -> None:
    w = start_node(spawn, features=["progress"])
    w.send(["call", 9, "work", [4]])
    assert [w.read() for _ in range(4)] == [["progress", 9, k / 4, f"step {k}"] for k in range(1, 5)]
    assert w.read() == ["ok", 9, 4]


# ------------------------------------------------------------------ 1.1: JSON holes, read-ahead


def test_an_undecodable_request_with_a_readable_id_gets_a_decode_error(spawn: Any) -> None:
    w = start_node(spawn, features=["stream"])
    w.write_raw(F.encode_frame(b'["call",5,"echo",[' + b"garbage\x00]]"))
    kind, rid, info = w.read()
    assert (kind, rid, info["type"], info["traceback"]) == ("error", 5, "DecodeError", "")
    w.write_raw(F.encode_frame(b'["call",6,"echo",["\xff\xfe"]]'))  # valid JSON, invalid UTF-8
    kind, rid, info = w.read()
    assert (kind, rid, info["type"]) == ("error", 6, "DecodeError")
    w.write_raw(F.encode_frame(b' [ "stream" , 7 , "count", [3], {}, 4, '))
    assert w.read()[:2] == ["error", 7]
    w.write_raw(F.encode_frame(b'["ping",8]trailing'))
    assert w.read()[:2] == ["error", 8]
    assert w.request("ping", 9) == ["pong", 9]  # still serving


@pytest.mark.parametrize(
    "payload",
    [
        b"garbage",
        b'{"call": 1}',
        b'["call",-1,"echo",[1]]',
        b'["call",1.5,"echo",[1]]',
        b'["call",9007199254740992,"echo",[1]]',  # 2**53: beyond the safe integers
        b'["call","1","echo",[1]]',
        b'["call",1.5,"echo",[',
        b'["cancel",x',
        b'["credit",null,1]',
        b'["withdraw"]',
        b'["withdraw","3"]',
        b'["withdraw",-1]',
    ],
)
def test_a_request_without_a_readable_id_exits_4(spawn: Any, payload: bytes) -> None:
    w = start_node(spawn)
    w.write_raw(F.encode_frame(payload))
    assert w.wait() == F.EXIT_PROTOCOL_ERROR


def test_the_largest_id_is_echoed_exactly(spawn: Any) -> None:
    w = start_node(spawn)
    big = 2**53 - 1
    assert w.request("ping", big) == ["pong", big]


def test_replies_are_valid_utf8_and_doubles_round_trip(spawn: Any) -> None:
    w = start_node(spawn)
    # §4: no lone surrogate goes out, escaped or not: a result holding one is an EncodeError
    w.write_raw(F.encode_frame(b'["call",1,"echo",["a\\ud800b"]]'))
    kind, mid, info = w.read()
    assert (kind, mid, info["type"]) == ("error", 1, "EncodeError")
    assert "lone surrogate" in info["message"]
    pair = "a\U0001f600 \\ud800"  # a real pair, and text that merely looks like an escape
    payload = w.request("call", 9, "echo", [pair])
    assert payload == ["ok", 9, pair]
    doubles = [0.1, 1 / 3, 1e-300, 5e-324, 1.7976931348623157e308, 2.0**53 + 2, -2.5e-8, 123456789.123456789]
    assert w.request("call", 2, "echo", [doubles]) == ["ok", 2, doubles]


def test_read_ahead_conditions_act_at_once_even_mid_call(spawn: Any) -> None:
    w = start_node(spawn, pipeline=True)
    w.send(["call", 1, "sleep", [30]])
    time.sleep(0.1)
    started = time.monotonic()
    w.write_raw(b"\xff\xff\xff\xff")  # an oversized header, read ahead
    assert w.wait() == F.EXIT_PROTOCOL_ERROR
    assert time.monotonic() - started < 5
    assert "exceeds max_frame" in w.stderr

    w2 = start_node(spawn, pipeline=True)
    w2.send(["call", 1, "sleep", [30]])
    time.sleep(0.1)
    w2.write_raw(F.encode_frame(b"garbage"))  # undecodable, no id
    assert w2.wait() == F.EXIT_PROTOCOL_ERROR

    w3 = start_node(spawn, features=["stream"], pipeline=True)
    w3.send(["stream", 1, "count", [100], {}, 2])
    assert [w3.read() for _ in range(2)] == [["chunk", 1, 0], ["chunk", 1, 1]]
    started = time.monotonic()
    w3.close_stdin()  # EOF while a stream waits for credit
    assert w3.wait() == 0
    assert time.monotonic() - started < 5
