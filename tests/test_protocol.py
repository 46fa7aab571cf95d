"""Framing and codecs: `corral.workers._protocol` (== `_corral_child._frames`)."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:  # corral not installed: use the checkout
    sys.path.insert(0, str(SRC))

from _corral_child import _frames  # noqa: E402
from corral.workers import _protocol as P  # noqa: E402


def frames_to_bytes(payloads: list[bytes]) -> bytes:
    return b"".join(P.encode_frame(p) for p in payloads)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def test_one_implementation() -> None:
    assert P.FrameDecoder is _frames.FrameDecoder
    assert issubclass(P.FrameTooLarge, _frames.ProtocolError)
    assert issubclass(P.DecodeError, P.ProtocolError)
    assert issubclass(P.EncodeError, P.ProtocolError)


def test_header() -> None:
    assert P.pack_header(0x77) == b"\x00\x00\x00\x77"
    assert P.unpack_header(b"\x01\x00\x00\x00") == 1 << 24
    assert P.DEFAULT_MAX_FRAME == 67108864
    with pytest.raises(P.FrameTooLarge):
        P.pack_header(P.DEFAULT_MAX_FRAME + 1)
    with pytest.raises(P.FrameTooLarge):
        P.unpack_header(b"\xff\xff\xff\xff")
    with pytest.raises(P.ProtocolError):
        P.unpack_header(b"\x00\x00")
    with pytest.raises(P.FrameTooLarge, match="looks like text"):
        P.FrameDecoder().feed(b"Usage: worker [options]\n")


# ------------------------------------------------------------------ FrameDecoder fuzz


@given(
    payloads=st.lists(st.binary(max_size=600), max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=40),
)
def test_random_chunking_round_trips(payloads: list[bytes], cuts: list[int]) -> None:
    data = frames_to_bytes(payloads)
    dec = P.FrameDecoder(max_frame=600)
    out: list[bytes] = []
    for chunk in chunked(data, cuts):
        out.extend(dec.feed(chunk))
    assert out == payloads
    assert dec.pending == 0
    assert all(type(f) is bytes for f in out)


@given(
    payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=8),
    sizes=st.lists(st.integers(min_value=1, max_value=70), min_size=1, max_size=8),
    kinds=st.lists(st.sampled_from(["bytes", "bytearray", "memoryview"]), min_size=1),
)
def test_chunk_types_and_partial_tail(payloads: list[bytes], sizes: list[int], kinds: list[str]) -> None:
    data = frames_to_bytes(payloads) + b"\x00\x00"  # a partial header at the end
    dec = P.FrameDecoder()
    out: list[bytes] = []
    pos = i = 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        piece = data[pos : pos + size]
        kind = kinds[i % len(kinds)]
        chunk: Any = (
            piece if kind == "bytes" else bytearray(piece) if kind == "bytearray" else memoryview(piece)
        )
        out.extend(dec.feed(chunk))
        pos += size
        i += 1
    assert out == payloads
    assert dec.pending == 2


@given(garbage=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 2000), max_size=20))
def test_garbage_raises_only_protocol_errors(garbage: bytes, cuts: list[int]) -> None:
    dec = P.FrameDecoder(max_frame=512)
    try:
        for chunk in chunked(garbage, cuts):
            for frame in dec.feed(chunk):
                assert len(frame) <= 512
    except P.ProtocolError:
        with pytest.raises(P.ProtocolError):  # the decoder stays failed
            dec.feed(b"\x00\x00\x00\x00")


@given(
    n=st.integers(min_value=1025, max_value=0xFFFFFFFF),
    split=st.integers(min_value=0, max_value=3),
    prefix=st.lists(st.binary(max_size=100), max_size=3),
)
def test_oversize_refused_as_soon_as_the_header_is_complete(n: int, split: int, prefix: list[bytes]) -> None:
    dec = P.FrameDecoder(max_frame=1024)
    header = n.to_bytes(4, "big")
    good = dec.feed(frames_to_bytes(prefix) + header[:split])
    assert good == prefix
    with pytest.raises(P.FrameTooLarge, match=str(n)):
        dec.feed(header[split:])
    assert dec.pending <= 4


def test_oversize_refused_before_allocation() -> None:
    """A large (but allowed) length is not preallocated; a too-large one never is."""
    dec = P.FrameDecoder(max_frame=P.MAX_FRAME_LIMIT)
    tracemalloc.start()
    try:
        dec.feed((0xFFFFFFF0).to_bytes(4, "big") + b"abc")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert dec.pending == 7

    small = P.FrameDecoder(max_frame=1 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(P.FrameTooLarge):
            small.feed((1 << 30).to_bytes(4, "big") + b"x" * 100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def _time_big_frame(size: int, chunk: int = 64 * 1024) -> float:
    data = P.encode_frame(b"\x07" * size)
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    best = math.inf
    for _ in range(3):
        dec = P.FrameDecoder()
        t = time.perf_counter()
        out: list[bytes] = []
        for piece in pieces:
            out.extend(dec.feed(piece))
        best = min(best, time.perf_counter() - t)
        assert len(out) == 1 and len(out[0]) == size
    return best


def test_big_frames_in_small_chunks_are_linear() -> None:
    # 16 MiB in 4 KiB pieces: linear buffering copies ~16 MiB (tens of ms); re-copying
    # the buffer on every feed would copy ~32 GiB (many seconds). A wide margin, not a
    # speed goal: no flakiness from caches or a loaded machine.
    assert _time_big_frame(16 << 20, chunk=4096) < 2.0


def test_decoder_compacts_its_buffer() -> None:
    dec = P.FrameDecoder()
    payload = b"y" * 100_000
    stream = frames_to_bytes([payload] * 40)
    out: list[bytes] = []
    for i in range(0, len(stream), 150_001):
        out.extend(dec.feed(stream[i : i + 150_001]))
        assert len(dec._buf) < 400_000
    assert out == [payload] * 40


def test_max_frame_can_change() -> None:
    dec = P.FrameDecoder(max_frame=64 * 1024)
    assert dec.feed(P.encode_frame(b"hello")) == [b"hello"]
    dec.max_frame = P.DEFAULT_MAX_FRAME
    assert dec.feed(P.encode_frame(b"z" * 100_000)) == [b"z" * 100_000]
    with pytest.raises(ValueError):
        P.FrameDecoder(max_frame=-1)


# ------------------------------------------------------------------ codecs

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)


@given(json_values)
def test_json_round_trip(value: Any) -> None:
    codec = P.get_codec("json")
    data = codec.dumps(value)
    assert type(data) is bytes
    data.decode("utf-8")  # strict UTF-8 (§4): any JSON decoder takes it
    assert codec.loads(data) == value
    # tuples encode as arrays
    assert codec.loads(codec.dumps(("ok", 1, value))) == ["ok", 1, value]


pickle_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | st.complex_numbers(allow_nan=False),
    lambda children: (
        st.lists(children, max_size=5)
        | st.tuples(children, children)
        | st.frozensets(st.integers(), max_size=4)
        | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)


@given(pickle_values)
def test_pickle_round_trip(value: Any) -> None:
    codec = P.get_codec("pickle")
    assert codec.loads(codec.dumps(("ok", 7, value))) == ("ok", 7, value)


@given(st.binary(max_size=200))
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_json_garbage_raises_decode_error(garbage: bytes) -> None:
    codec = P.get_codec("json")
    try:
        codec.loads(garbage)
    except P.DecodeError:
        pass


@pytest.mark.parametrize(
    "text", [b"NaN", b"[Infinity]", b"[1,", b"[1] x", b"", b"\xff", b"[1]]", b"{'a': 1}"]
)
def test_json_rejects_invalid(text: bytes) -> None:
    with pytest.raises(P.DecodeError):
        P.get_codec("json").loads(text)


def test_json_details() -> None:
    codec = P.get_codec("json")
    assert codec.loads(b' \r\n\t[1, {"a" : null}] \n') == [1, {"a": None}]
    assert codec.dumps(["ok", 1, 5]) == b'["ok",1,5]'
    assert codec.dumps("é\U0001f600") == '"é\U0001f600"'.encode()  # UTF-8, not escapes
    with pytest.raises(P.EncodeError, match="surrogates not allowed"):
        codec.dumps(["call", 1, "echo", ["\udc80"]])  # §4: never sent; strict decoders refuse it
    for bad in [float("nan"), float("inf"), b"bytes", {1j: 1}, object()]:
        with pytest.raises(P.EncodeError):
            codec.dumps(["x", bad])
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(P.EncodeError):
        codec.dumps(cyclic)
    # a failed encode leaves no stale state behind
    shared = [1]
    assert codec.dumps([shared, shared]) == b"[[1],[1]]"


def test_codec_lookup() -> None:
    assert P.get_codec("pickle") is P.get_codec("pickle")
    with pytest.raises(P.ProtocolError):
        P.get_codec("msgpack")
    assert P.choose_codec(["json", "pickle"]) == "pickle"
    assert P.choose_codec(["json"]) == "json"
    assert P.choose_codec(["pickle", "json"], preferred=["json"]) == "json"
    with pytest.raises(P.ProtocolError):
        P.choose_codec(["msgpack"])


def test_salvage_request_id() -> None:
    import pickle

    payload = pickle.dumps(("call", 12, "f", (Path("a"),)), protocol=5)
    broken = payload.replace(b"pathlib", b"nolibxy")
    with pytest.raises(P.DecodeError):
        P.get_codec("pickle").loads(broken)
    assert _frames.salvage_request_id(broken) == ("call", 12)
    assert _frames.salvage_request_id(b"garbage") is None
    assert _frames.salvage_request_id(pickle.dumps(["x"])) is None


# ------------------------------------------------------------------ handshake


def test_worked_example_from_the_spec() -> None:
    """docs/protocol.md §8, byte by byte: the hello, the welcome, and every frame of the
    session (its header is its payload's length; its payload is a JSON message)."""
    caps = ["call", "ping", "cancel", "pipeline", "kwargs", "stream", "progress", "withdraw"]
    hello = P.make_hello(4242, "example/1.0", ["json"], caps)
    frame = P.encode_frame(P.encode_json_object(hello))
    assert frame[:4].hex(" ") == "00 00 00 aa"
    assert frame[4:20].hex(" ") == "7b 22 74 22 3a 22 68 65 6c 6c 6f 22 2c 22 70 72"
    spec = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()
    assert frame[4:].decode() in spec
    welcome = P.make_welcome("json", "w-1", "app.handlers", pipeline=True, features=P.FEATURES)
    assert P.encode_json_object(welcome).decode() in spec
    section = spec[spec.index("## 8. Worked example") : spec.index("## 9.")]
    lines = [
        line for line in section.splitlines() if line.startswith(("parent → worker  0", "worker → parent  0"))
    ]
    assert len(lines) == 23
    codec = P.get_codec("json")
    for line in lines:
        header, payload = line[17:28], line[30:].removesuffix("   (then SIGINT)")
        message = codec.loads(payload.encode())
        if header.endswith(".."):  # the error reply's traceback is elided
            assert message[0] == "error"
            continue
        assert header == P.pack_header(len(payload.encode())).hex(" "), line
        assert codec.dumps(message).decode() == payload, line  # corral writes it so


def test_hello_validation() -> None:
    good = P.make_hello(1, "cpython/3.11.7")
    assert P.parse_hello(P.encode_json_object(good)) == good
    minimal = {"t": "hello", "protocol": 1, "pid": 5, "codecs": ["json"]}
    parsed = P.parse_hello(P.encode_json_object(minimal))
    assert parsed["capabilities"] == [] and parsed["runtime"] == "unknown"
    for bad in [
        {**good, "protocol": 2},
        {**good, "protocol": "1"},
        {**good, "pid": None},
        {**good, "codecs": []},
        {**good, "codecs": "json"},
        {**good, "t": "welcome"},
        {**good, "capabilities": [1]},
    ]:
        with pytest.raises(P.ProtocolError):
            P.parse_hello(P.encode_json_object(bad))
    with pytest.raises(P.ProtocolError):
        P.parse_hello(b"[1]")
    with pytest.raises(P.ProtocolError):
        P.parse_hello(b"not json")


def test_welcome_validation() -> None:
    w = P.make_welcome("pickle", "w-1", "m", sys_path=["/a"], init_args=[1, "x"])
    parsed = P.parse_welcome(P.encode_json_object(w))
    assert parsed == {**w, "max_frame": P.DEFAULT_MAX_FRAME}
    for bad in [
        {**w, "codec": None},
        {**w, "max_frame": 10},
        {**w, "max_frame": 2**32},
        {**w, "module": 3},
        {**w, "sys_path": "/a"},
        {**w, "init_args": {}},
    ]:
        with pytest.raises(P.ProtocolError):
            P.parse_welcome(P.encode_json_object(bad))


def test_qualified_type_name() -> None:
    assert P.qualified_type_name(ValueError) == "ValueError"
    assert P.qualified_type_name(P.FrameTooLarge) == "_corral_child._frames.FrameTooLarge"


def test_child_argv_starts_a_worker() -> None:
    argv = P.child_argv("tests.handlers_basic")
    assert argv[0] == sys.executable and argv[1] == "-c" and argv[-1] == "tests.handlers_basic"
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        out, _ = proc.communicate(b"", timeout=10)  # EOF right after the hello
        assert proc.returncode == 0
        (frame,) = P.FrameDecoder().feed(out)
        assert P.parse_hello(frame)["pid"] == proc.pid
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_precompile_child() -> None:
    import importlib.util

    import _corral_child._runtime

    assert P.precompile_child()
    cache = importlib.util.cache_from_source(_corral_child._runtime.__file__)
    before = Path(cache).stat().st_mtime_ns
    assert P.precompile_child()  # fresh caches are not rewritten
    assert Path(cache).stat().st_mtime_ns == before
    assert Path(cache).read_bytes()[:4] == importlib.util.MAGIC_NUMBER


def test_take_big_moves_a_large_partial_frame_out_of_the_buffer() -> None:
    payload = bytes(range(256)) * 2048  # 512 KiB
    data = P.encode_frame(payload)
    dec = P.FrameDecoder()
    assert dec.feed(data[:70000]) == []
    big = dec.take_big()
    assert big is not None
    frame, have = big
    assert len(frame) == len(payload) and have == 70000 - 4
    frame[have:] = data[70000:]
    assert bytes(frame) == payload
    assert dec.pending == 0 and dec.feed(P.encode_frame(b"next")) == [b"next"]


def test_take_big_leaves_small_or_complete_frames_alone() -> None:
    dec = P.FrameDecoder()
    assert dec.feed(P.encode_frame(b"x" * 100)[:50]) == []
    assert dec.take_big() is None  # small: the decoder keeps buffering it


messages_1_1 = st.one_of(
    st.tuples(
        st.just("call"),
        st.integers(0, 2**53 - 1),
        st.text(max_size=8),
        st.lists(json_values, max_size=3),
        st.dictionaries(st.text(max_size=5), json_values, max_size=3),
    ),
    st.tuples(
        st.just("stream"),
        st.integers(0, 2**53 - 1),
        st.text(max_size=8),
        st.lists(json_values, max_size=3),
        st.dictionaries(st.text(max_size=5), json_values, max_size=3),
        st.integers(1, 1 << 20),
    ),
    st.tuples(st.just("credit"), st.integers(0, 2**53 - 1), st.integers(1, 1 << 20)),
    st.tuples(st.just("chunk"), st.integers(0, 2**53 - 1), json_values),
    st.tuples(
        st.just("progress"), st.integers(0, 2**53 - 1), st.none() | st.floats(0, 1), st.text(max_size=20)
    ),
)


@given(
    msgs=st.lists(messages_1_1, max_size=10),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=30),
    codec=st.sampled_from(["json", "pickle"]),
)
def test_1_1_messages_survive_any_chunking(msgs: list[tuple[Any, ...]], cuts: list[int], codec: str) -> None:
    """The 1.1 messages (kwargs, stream, credit, chunk, progress) through the codec and
    the frame decoder, split at random points: each comes out whole, in order."""
    c = P.get_codec(codec)
    data = frames_to_bytes([c.dumps(m) for m in msgs])
    dec = P.FrameDecoder()
    out: list[Any] = []
    for chunk in chunked(data, cuts):
        out.extend(c.loads(f) for f in dec.feed(chunk))
    assert [tuple(m) for m in out] == msgs
