"""The Python runtime's side of protocol 1.1, frame by frame (docs/protocol.md):
streams and credit, progress, keyword arguments, named cancels at depth 1, JSON
DecodeError replies, and SIGINT read-ahead meeting EOF."""

from __future__ import annotations

import queue
import signal
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


# ------------------------------------------------------------------ fuzz: 1.1 messages

_values = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8)
_kwargs = st.dictionaries(st.sampled_from(["greeting", "punct", "start", "nope"]), _values, max_size=2)


@st.composite
def requests(draw: st.DrawFn) -> list[list[Any]]:
    """A session of 1.1 requests, well-formed or not (but each with a readable id)."""
    out: list[list[Any]] = []
    for mid in range(1, draw(st.integers(1, 12)) + 1):
        kind = draw(st.sampled_from(["call", "call_kw", "stream", "ping", "bad", "cancel", "credit"]))
        if kind == "call":
            out.append(["call", mid, draw(st.sampled_from(["greet", "count", "nope"])), [draw(_values)]])
        elif kind == "call_kw":
            out.append(["call", mid, "greet", ["x"], draw(_kwargs | st.just([]))])
        elif kind == "stream":
            n = draw(st.integers(0, 20))
            window = draw(st.integers(0, 4))  # 0 is malformed
            out.append(
                ["stream", mid, draw(st.sampled_from(["count", "greet", "nope"])), [n], draw(_kwargs), window]
            )
        elif kind == "ping":
            out.append(["ping", mid])
        elif kind == "bad":
            out.append(
                draw(st.sampled_from([["call", mid], ["stream", mid, "count", [1], {}], ["frob", mid]]))
            )
        elif kind == "cancel":
            out.append(["cancel", draw(st.integers(0, mid + 2))])
        else:
            out.append(["credit", draw(st.integers(0, mid + 2)), draw(st.integers(1, 3))])
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(session=requests(), codec=st.sampled_from(["json", "pickle"]))
def test_fuzzed_1_1_sessions_answer_every_request_once_in_order(
    spawn: Any,  # noqa: F811 - test_child_runtime's fixture
    session: list[list[Any]],
    codec: str,
) -> None:
    """Whatever the mix (kwargs, streams and credits, stale cancels and credits,
    malformed requests with an id), each request gets exactly one final reply, in
    order; chunks come only for streams, before their reply; the worker lives on.
    Credit is granted as a parent does, for chunks received (a credit that arrives
    before its stream runs is stale, docs/protocol.md §5)."""
    w: Worker = spawn()
    start(w, codec=codec)
    assert w.read()[0] == "ready"
    for msg in session:
        w.send(msg)
    w.send(["ping", 10_000])
    answered: list[int] = []
    streams = {m[1] for m in session if m[0] == "stream" and len(m) == 6}
    while True:
        reply = w.read(timeout=10)
        kind, mid = reply[0], reply[1]
        if kind == "chunk":
            assert mid in streams and mid not in answered, reply
            w.send(["credit", mid, 1])  # as the parent does: one more per chunk taken
            continue
        assert kind in ("ok", "error", "cancelled", "pong"), reply
        answered.append(mid)
        if mid == 10_000:
            break
    expected = [m[1] for m in session if m[0] not in ("cancel", "credit")] + [10_000]
    assert answered == expected


def test_signals_in_quick_succession_never_wedge_the_read_ahead(launch: Any) -> None:
    """A second SIGINT landing while the first one's handler reads ahead must not leave
    the input blocking under it (the worker would hang in that read)."""
    w: Worker = launch()
    start(w)
    assert w.read()[0] == "ready"
    for mid in range(1, 41):
        # A call of 60 s, waited for 15 s: a lost cancel or a wedged read-ahead still
        # fails, a worker the machine starved of CPU for a few seconds does not (with a
        # 5 s call waited for 5 s, that flaked once in a loaded run of the whole suite).
        w.send(["call", mid, "sleep", [60]])
        w.send(["cancel", mid])
        for _ in range(4):
            w.proc.send_signal(signal.SIGINT)
        assert w.read(timeout=15) == ["cancelled", mid], w.stderr_lines[-5:]
    assert w.request("ping", 99) == ["pong", 99]


def test_a_withdrawn_queued_request_is_given_back_at_once_and_never_runs(launch: Any) -> None:
    """``withdraw`` (docs/protocol.md §5): a request still queued is answered
    "withdrawn" at once, out of order, while the call ahead of it runs; one that runs,
    or was answered, is not withdrawn (its own reply comes)."""
    w: Worker = launch()
    start(w)
    assert w.read()[0] == "ready"
    w.send(["call", 1, "sleep", [1.0]])
    w.send(["call", 2, "sleep", [0]])
    w.send(["call", 3, "greet", ["c"]])
    time.sleep(0.2)  # call 1 runs, 2 and 3 wait
    w.send(["withdraw", 3])
    w.send(["withdraw", 1])  # it runs: stale
    w.proc.send_signal(signal.SIGINT)  # named cancels: the signal only makes it read
    assert w.read(timeout=0.7) == ["withdrawn", 3]  # before call 1 has finished
    w.send(["cancel", 2])  # a later cancel still counts (3's answer did not retire 2)
    w.proc.send_signal(signal.SIGINT)
    assert w.read(timeout=5) == ["ok", 1, 1.0]
    assert w.read(timeout=5) == ["cancelled", 2]
    w.send(["withdraw", 2])  # answered already: stale
    assert w.request("ping", 4) == ["pong", 4]
    w.send(["call", 5, "greet", ["e"]])
    assert w.read() == ["ok", 5, "hello e"]


def test_withdrawals_and_signals_at_any_moment_never_break_the_worker(launch: Any) -> None:
    """Withdrawals answered from the SIGINT handler run while the main flow may be in
    the middle of anything (a reply, the set of withdrawn ids): every request still gets
    exactly one answer and the worker lives (a set iterated while the handler added to
    it once killed it)."""
    w: Worker = launch()
    start(w)
    assert w.read()[0] == "ready"
    mid = 0
    for _ in range(150):
        ids = []
        for _ in range(3):
            mid += 1
            ids.append(mid)
            w.send(["call", mid, "sleep", [0.001]])
        w.send(["withdraw", ids[-1]])
        w.send(["withdraw", ids[-2]])
        for _ in range(2):
            w.proc.send_signal(signal.SIGINT)
        answers: dict[int, str] = {}
        while len(answers) < 3:
            kind, rid, *_ = w.read(timeout=5)
            assert rid not in answers
            answers[rid] = kind
        assert answers[ids[0]] == "ok"
        assert all(answers[i] in ("ok", "withdrawn") for i in ids[1:])
    assert w.request("ping", 10**6) == ["pong", 10**6]
