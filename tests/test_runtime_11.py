"""The Python runtime's side of protocol 1.1, frame by frame (docs/protocol.md):
streams and credit, progress, keyword arguments, named cancels at depth 1, JSON
DecodeError replies, and SIGINT read-ahead meeting EOF."""

from __future__ import annotations

import queue
import signal
import time
from typing import Any

import pytest

from _corral_child import _frames as F
from tests.test_child_runtime import Worker, spawn  # noqa: F401 - the fixture

H = "tests.handlers_stream"


@pytest.fixture
def launch(spawn: Any) -> Any:  # noqa: F811 - test_child_runtime's fixture
    return spawn


def start(
    w: Worker, codec: str = "json", features: tuple[str, ...] = F.FEATURES, pipeline: bool = True
) -> None:
    hello = w.hello()
    assert {"kwargs", "stream", "progress", "pipeline"} <= set(hello["capabilities"])
    w.welcome(codec, H, features=features, pipeline=pipeline)


def nothing_within(w: Worker, seconds: float) -> bool:
    try:
        w.read_frame(timeout=seconds)
    except queue.Empty:
        return True
    return False


def test_a_stream_sends_no_more_than_its_credit(launch: Any) -> None:
    w: Worker = launch()
    start(w)
    assert w.read()[0] == "ready"
    w.send(["stream", 1, "count", [100], {}, 8])
    assert [w.read() for _ in range(8)] == [["chunk", 1, i] for i in range(8)]
    assert nothing_within(w, 0.3)  # out of credit: it waits
    w.send(["credit", 99, 50])  # stale: names no running stream
    assert nothing_within(w, 0.2)
    w.send(["credit", 1, 3])
    assert [w.read() for _ in range(3)] == [["chunk", 1, i] for i in range(8, 11)]
    assert nothing_within(w, 0.2)
    w.send(["credit", 1, 1000])
    assert [w.read() for _ in range(89)] == [["chunk", 1, i] for i in range(11, 100)]
    assert w.read() == ["ok", 1, None]
    assert w.request("ping", 2) == ["pong", 2]


def test_a_cancel_stops_a_stream_waiting_for_credit(launch: Any) -> None:
    w: Worker = launch()
    start(w)
    assert w.read()[0] == "ready"
    w.send(["stream", 1, "count", [10**9], {}, 2])
    assert [w.read(), w.read()] == [["chunk", 1, 0], ["chunk", 1, 1]]
    w.send(["ping", 2])  # queued behind the stream
    w.send(["cancel", 1])  # no signal needed: it is reading, waiting for credit
    assert w.read() == ["cancelled", 1]
    assert w.read() == ["pong", 2]


def test_kwargs_and_a_stream_ending_in_an_error(launch: Any) -> None:
    w: Worker = launch()
    start(w)
    assert w.read()[0] == "ready"
    assert w.request("call", 1, "greet", ["a"], {"greeting": "hi"}) == ["ok", 1, "hi a"]
    w.send(["stream", 2, "fail_after", [2], {}, 8])
    assert [w.read(), w.read()] == [["chunk", 2, 0], ["chunk", 2, 1]]
    kind, mid, info = w.read()
    assert (kind, mid, info["type"], info["message"]) == ("error", 2, "ValueError", "failed after 2")
    kind, mid, info = w.request("call", 3, "greet", ["a"], ["not", "an", "object"])
    assert (kind, mid, info["type"]) == ("error", 3, "ProtocolError")


def test_progress_goes_out_only_when_the_parent_asked(launch: Any) -> None:
    env = {"CORRAL_TEST_INIT_STEPS": "3"}
    w: Worker = launch(env=env)
    start(w)
    assert [w.read() for _ in range(3)] == [["progress", 0, k / 3, f"step {k}"] for k in (1, 2, 3)]
    assert w.read()[0] == "ready"
    w.send(["call", 1, "work", [2]])
    assert w.read() == ["progress", 1, 0.5, "step 1"]
    assert w.read() == ["progress", 1, 1.0, "step 2"]
    assert w.read() == ["ok", 1, 2]

    quiet: Worker = launch(env=env)
    start(quiet, features=("kwargs", "stream"))  # a parent that takes no progress
    assert quiet.read()[0] == "ready"
    assert quiet.request("call", 1, "work", [2]) == ["ok", 1, 2]


@pytest.mark.parametrize("codec", ["json", "pickle"])
def test_an_undecodable_request_with_a_readable_id_fails_alone(launch: Any, codec: str) -> None:
    w: Worker = launch()
    start(w, codec=codec)
    assert w.read()[0] == "ready"
    if codec == "json":
        w.write_raw(F.encode_frame(b'["call",5,"echo",["\xff\xfe"]]'))  # not UTF-8
    else:
        w.write_raw(F.encode_frame(b"\x80\x05garbage"))  # unreadable pickle: no id
        assert w.wait() == F.EXIT_PROTOCOL_ERROR
        return
    kind, mid, info = w.read()
    assert (kind, mid, info["type"]) == ("error", 5, "DecodeError")
    assert w.request("ping", 6) == ["pong", 6]
    w.write_raw(F.encode_frame(b'["call",7.0,"echo",[1]]'))  # 7.0 is not an id (§4)
    assert w.wait() == F.EXIT_PROTOCOL_ERROR


def test_named_cancels_at_depth_one_never_hit_the_next_call(launch: Any) -> None:
    """welcome pipeline=true with one request in flight: a SIGINT for a call that has
    already answered lands on the next call and is ignored (it was not named)."""
    w: Worker = launch()
    start(w)
    assert w.read()[0] == "ready"
    w.send(["call", 1, "sleep", [0.3]])
    time.sleep(0.1)
    w.send(["call", 2, "sleep", [0.5]])  # queued
    w.proc.send_signal(signal.SIGINT)  # not named: the running call 1 goes on
    assert w.read(timeout=5) == ["ok", 1, 0.3]
    time.sleep(0.1)  # call 2 runs now
    w.proc.send_signal(signal.SIGINT)  # a late signal: ignored
    w.send(["cancel", 2])
    w.proc.send_signal(signal.SIGINT)  # named: interrupted
    assert w.read(timeout=5) == ["cancelled", 2]
    assert w.request("ping", 3) == ["pong", 3]


def test_sigint_read_ahead_meeting_eof_interrupts_nothing(launch: Any) -> None:
    w: Worker = launch()
    start(w)
    assert w.read()[0] == "ready"
    w.send(["call", 1, "sleep", [0.3]])
    time.sleep(0.1)
    w.close_stdin()
    w.proc.send_signal(signal.SIGINT)  # the read-ahead meets EOF: the call is not interrupted
    assert w.read(timeout=5) == ["ok", 1, 0.3]
    assert w.wait() == 0  # then EOF ends it (§7)


def test_sigint_read_ahead_meeting_an_oversized_header_interrupts_nothing(launch: Any) -> None:
    w: Worker = launch()
    start(w)
    assert w.read()[0] == "ready"
    w.send(["call", 1, "sleep", [0.3]])
    time.sleep(0.1)
    w.write_raw(b"\xff\xff\xff\xff")
    w.proc.send_signal(signal.SIGINT)
    assert w.read(timeout=5) == ["ok", 1, 0.3]  # answered, then the bad frame ends it
    assert w.wait() == F.EXIT_PROTOCOL_ERROR
