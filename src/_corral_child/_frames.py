"""The corral worker protocol's framing, payload codecs and handshake frames
(docs/protocol.md), in that order.

Pure functions and small classes, standard library only, shared by the child runtime
and the parent (``corral.workers._protocol`` re-exports its names).  One module rather
than three: every worker imports it at start-up, and the parent ships the runtime's
files by name (remote workers, bytecode precompilation).

Start-up cost matters: this module imports nothing at import time.  The codecs use the
C accelerator modules ``_json`` and ``_pickle`` directly (``import json`` pulls in
``re`` and costs ~10 ms; ``_json`` costs ~0.1 ms), falling back to the public modules
if the accelerators are missing or behave unexpectedly.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

PROTOCOL_VERSION = 1  # the major version: 1.1 adds capabilities, not a new number
#: What the Python runtime offers (docs/protocol.md §3); the last three are 1.1's.
CAPABILITIES = ("call", "apply", "ping", "cancel", "pipeline", "kwargs", "stream", "progress", "withdraw")
#: The 1.1 capabilities a parent lists in the welcome's ``features`` when it uses them.
FEATURES = ("kwargs", "stream", "progress", "withdraw")
HEADER_SIZE = 4
DEFAULT_MAX_FRAME = 64 * 1024 * 1024  # 67108864
MAX_FRAME_LIMIT = 0xFFFFFFFF  # largest length a 4-byte header can express
PICKLE_PROTOCOL = 5  # pickle.HIGHEST_PROTOCOL on every supported Python (3.8+)
# Exit codes of a worker process.
EXIT_OK = 0
EXIT_INIT_FAILED = 3
EXIT_PROTOCOL_ERROR = 4


# --------------------------------------------------------------------------- errors


class ProtocolError(Exception):
    """The peer violated the wire protocol (bad frame, bad handshake, bad message)."""


class FrameTooLarge(ProtocolError):
    """A frame length exceeds ``max_frame``; refused before any allocation."""


class DecodeError(ProtocolError):
    """A frame's payload could not be decoded with the negotiated codec."""


class EncodeError(ProtocolError):
    """A value could not be encoded with the negotiated codec."""


# --------------------------------------------------------------------------- framing


def _too_large(n: int, max_frame: int, header: bytes | None = None) -> FrameTooLarge:
    msg = f"frame length {n} exceeds max_frame {max_frame}"
    if header is not None and all(32 <= b < 127 or b in (9, 10, 13) for b in header):
        msg += (
            f"; the length header {header!r} looks like text: is the peer writing "
            "something other than frames to the protocol channel?"
        )
    return FrameTooLarge(msg)


def pack_header(n: int, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """The 4-byte big-endian length header for an ``n``-byte payload."""
    if n > max_frame or n > MAX_FRAME_LIMIT:
        raise _too_large(n, min(max_frame, MAX_FRAME_LIMIT))
    return n.to_bytes(4, "big")


def unpack_header(header: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> int:
    """Parse a 4-byte length header; raise `FrameTooLarge` if it exceeds ``max_frame``."""
    if len(header) != HEADER_SIZE:
        raise ProtocolError(f"a frame header is {HEADER_SIZE} bytes, got {len(header)}")
    n = int.from_bytes(header, "big")
    if n > max_frame:
        raise _too_large(n, max_frame, bytes(header))
    return n


def encode_frame(payload: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Header + payload as one bytes object (copies the payload; fine for small frames)."""
    return pack_header(len(payload), max_frame) + payload


class FrameDecoder:
    """Incremental decoder: ``feed(data)`` returns the frames completed by ``data``.

    A length header larger than ``max_frame`` raises `FrameTooLarge` as soon as its
    four bytes have arrived, before anything is allocated for the payload.  After an
    error the decoder is unusable (the stream cannot be resynchronised).

    Buffering is linear: bytes are appended to one ``bytearray`` and consumed by
    advancing an offset; consumed bytes are dropped when the buffer is empty or when
    they make up more than half of it.  ``max_frame`` may be changed between calls
    (e.g. a parent may use a small limit for the hello frame).
    """

    __slots__ = ("_buf", "_error", "_pos", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if not 0 <= max_frame <= MAX_FRAME_LIMIT:
            raise ValueError(f"max_frame must be in [0, {MAX_FRAME_LIMIT}], got {max_frame}")
        self.max_frame = max_frame
        self._buf = bytearray()
        self._pos = 0
        self._error: ProtocolError | None = None

    @property
    def failed(self) -> ProtocolError | None:
        """The error an earlier ``feed`` met (it stands: the stream is unrecoverable)."""
        return self._error

    @property
    def pending(self) -> int:
        """Bytes received but not yet returned as part of a frame."""
        return len(self._buf) - self._pos

    def take_big(self, threshold: int = 1 << 18) -> tuple[bytearray, int] | None:
        """Move a large, incomplete frame out of the buffer.

        Returns a bytearray of the frame's final size holding the bytes received so far,
        and how many those are, so the caller can read the rest straight into it: one
        copy from the kernel instead of buffering, joining and slicing. None when the
        buffer holds no incomplete frame of at least ``threshold`` bytes.
        """
        n = self._big_length(threshold)
        if n is None:
            return None
        buf = self._buf
        frame = bytearray(n)
        have = len(buf) - self._pos - 4
        frame[:have] = buf[self._pos + 4 :]
        buf.clear()
        self._pos = 0
        return frame, have

    def _big_length(self, threshold: int) -> int | None:
        """The length of the incomplete frame at the head of the buffer, if it is one of
        at least ``threshold`` bytes (and within ``max_frame``)."""
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < 4 or self._error is not None:
            return None
        n = int.from_bytes(buf[pos : pos + 4], "big")
        if n < threshold or avail >= 4 + n or n > self.max_frame:
            return None
        return n

    def take_partial(self, threshold: int = 1 << 18) -> tuple[int, bytearray] | None:
        """Like ``take_big``, but allocate nothing ahead: (the frame's size, the bytes
        received so far). The caller grows its buffer as the rest arrives, so a peer
        that announces a large frame and then trickles cannot pin that much memory."""
        n = self._big_length(threshold)
        if n is None:
            return None
        head = bytearray(self._buf[self._pos + 4 :])
        self._buf.clear()
        self._pos = 0
        return n, head

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        if self._error is not None:
            raise self._error
        out: list[bytes] = []
        buf = self._buf
        max_frame = self.max_frame
        if not buf:
            # Fast path: nothing buffered; slice complete frames straight out of `data`.
            if type(data) is not bytes:
                data = bytes(data)
            end = len(data)
            pos = 0
            while end - pos >= 4:
                n = int.from_bytes(data[pos : pos + 4], "big")
                if n > max_frame:
                    self._error = _too_large(n, max_frame, data[pos : pos + 4])
                    raise self._error
                stop = pos + 4 + n
                if stop > end:
                    break
                out.append(data[pos + 4 : stop])
                pos = stop
            if pos < end:
                buf += data[pos:] if pos else data
            return out
        buf += data
        pos = self._pos
        end = len(buf)
        while end - pos >= 4:
            n = int.from_bytes(buf[pos : pos + 4], "big")
            if n > max_frame:
                self._error = _too_large(n, max_frame, bytes(buf[pos : pos + 4]))
                raise self._error
            stop = pos + 4 + n
            if stop > end:
                break
            with memoryview(buf) as view:
                out.append(bytes(view[pos + 4 : stop]))
            pos = stop
        if pos == end:
            buf.clear()
            pos = 0
        elif pos > 65536 and pos * 2 > end:
            del buf[:pos]
            pos = 0
        self._pos = pos
        return out


# --------------------------------------------------------------------------- codecs


class Codec:
    """A payload codec: ``dumps(obj) -> bytes`` and ``loads(bytes) -> obj``.

    ``dumps`` raises `EncodeError` (the original exception as ``__cause__``) and
    ``loads`` raises `DecodeError`; ``raw_dumps``/``raw_loads`` are the unwrapped fast
    functions (they raise whatever the underlying library raises).
    """

    __slots__ = ("name", "raw_dumps", "raw_loads")

    def __init__(
        self, name: str, raw_dumps: Callable[[Any], bytes], raw_loads: Callable[[bytes], Any]
    ) -> None:
        self.name = name
        self.raw_dumps = raw_dumps
        self.raw_loads = raw_loads

    def dumps(self, obj: Any) -> bytes:
        try:
            return self.raw_dumps(obj)
        except Exception as exc:
            raise EncodeError(
                f"cannot encode {type(obj).__name__} with codec {self.name!r}: {type(exc).__name__}: {exc}"
            ) from exc

    def loads(self, data: bytes) -> Any:
        try:
            return self.raw_loads(data)
        except Exception as exc:
            raise DecodeError(
                f"cannot decode a {len(data)}-byte payload with codec {self.name!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def __repr__(self) -> str:
        return f"<Codec {self.name}>"


def _json_reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json_default(obj: object) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


class _ScanContext:
    # The attributes `_json.make_scanner` reads from its context (a json.JSONDecoder).
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_json_reject_constant)
    memo: dict[str, str] = {}


_WS = " \t\n\r"


def _make_json_codec() -> Codec:
    try:
        import _json

        cj: Any = _json  # private API: untyped on purpose
        scan = cj.make_scanner(_ScanContext())
        markers: dict[int, object] = {}
        encode = cj.make_encoder(
            markers,
            _json_default,
            cj.encode_basestring,  # UTF-8 out: a lone surrogate cannot encode (§4)
            None,
            ":",
            ",",
            False,  # sort_keys
            False,  # skipkeys
            False,  # allow_nan: strict RFC 8259
        )

        def dumps(obj: Any) -> bytes:
            try:
                return "".join(encode(obj, 0)).encode("utf-8")
            except BaseException:
                markers.clear()  # the C encoder leaves stale entries behind on errors
                raise

        def loads(data: bytes) -> Any:
            s = data.decode("utf-8")
            idx = 0
            n = len(s)
            while idx < n and s[idx] in _WS:
                idx += 1
            try:
                obj, end = scan(s, idx)
            except StopIteration as exc:
                raise ValueError(f"invalid JSON at character {exc.value}") from None
            if end != n and s[end:].strip(_WS):
                raise ValueError(f"extra data after JSON value at character {end}")
            return obj

        # Self-test: fall back to the json module if the private API ever changes.
        probe = ["x\u00e9\n", 1, -2.5, None, True, {"k": [False]}]
        if loads(dumps(probe)) != probe or dumps((1,)) != b"[1]":
            raise RuntimeError("unexpected _json behaviour")
    except Exception:
        import json

        def dumps(obj: Any) -> bytes:
            text = json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
            return text.encode("utf-8")

        def loads(data: bytes) -> Any:
            return json.loads(data.decode("utf-8"), parse_constant=_json_reject_constant)

    return Codec("json", dumps, loads)


def _import_pickle_accelerator() -> None:
    """``import _pickle`` without paying for ``functools`` (~3 ms of start-up).

    The C module imports ``functools`` only to fetch ``partial``, which *is*
    ``_functools.partial``.  If ``functools`` is not loaded yet, a throwaway stand-in
    module is visible in ``sys.modules`` for the duration of the import only.
    """
    import sys

    if "_pickle" in sys.modules or "functools" in sys.modules:
        return
    try:
        partial = __import__("_functools").partial
    except (ImportError, AttributeError):  # pragma: no cover
        return
    stand_in: Any = type(sys)("functools")
    stand_in.partial = partial
    sys.modules["functools"] = stand_in
    try:
        import _pickle  # noqa: F401
    finally:
        if sys.modules.get("functools") is stand_in:
            del sys.modules["functools"]


def _make_pickle_codec() -> Codec:
    try:
        _import_pickle_accelerator()
        from _pickle import dumps as _dumps
        from _pickle import loads
    except ImportError:
        from pickle import dumps as _dumps
        from pickle import loads

    def dumps(obj: Any) -> bytes:
        return _dumps(obj, PICKLE_PROTOCOL)

    return Codec("pickle", dumps, loads)


_CODEC_FACTORIES: dict[str, Callable[[], Codec]] = {
    "pickle": _make_pickle_codec,
    "json": _make_json_codec,
}
CODEC_NAMES = ("pickle", "json")  # what the Python runtime offers, in preference order
_codecs: dict[str, Codec] = {}


def get_codec(name: str) -> Codec:
    """The codec called ``name`` ("pickle" or "json"); imported on first use."""
    codec = _codecs.get(name)
    if codec is None:
        factory = _CODEC_FACTORIES.get(name)
        if factory is None:
            raise ProtocolError(f"unknown codec {name!r} (known: {', '.join(CODEC_NAMES)})")
        codec = _codecs[name] = factory()
    return codec


def choose_codec(offered: Sequence[str], preferred: Sequence[str] = CODEC_NAMES) -> str:
    """The first of ``preferred`` that the worker ``offered`` in its hello."""
    for name in preferred:
        if name in offered and name in _CODEC_FACTORIES:
            return name
    raise ProtocolError(f"no common codec: worker offers {list(offered)}, we support {list(preferred)}")


class _Stub:
    """Stands in for every global while salvaging a request that failed to unpickle."""

    def __new__(cls, *args: object, **kwargs: object) -> _Stub:
        return object.__new__(cls)

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __call__(self, *args: object, **kwargs: object) -> _Stub:
        return _Stub()

    def __setstate__(self, state: object) -> None:
        pass

    def __setitem__(self, key: object, value: object) -> None:
        pass

    def append(self, item: object) -> None:
        pass

    def extend(self, items: object) -> None:
        pass


def salvage_request_id(payload: bytes, codec: str = "pickle") -> tuple[str, int] | None:
    """(kind, id) of a message that failed to decode, or None.

    JSON: read from the text's start (``["call",5,...``), so one bad argument (invalid
    UTF-8, a number the decoder cannot hold) costs one request, not the worker.
    Pickle:
    re-reads the pickle without importing anything (every global becomes a stub), so a
    request whose arguments reference a class the worker cannot import can still be
    answered with an error reply instead of tearing down the worker.
    """
    try:
        import io

        try:
            from _pickle import Unpickler
        except ImportError:  # pragma: no cover
            from pickle import Unpickler

        if codec == "json":
            import re

            match = re.match(rb'\s*\[\s*"([a-z]{1,16})"\s*,\s*(\d{1,16})\s*[,\]]', payload)
            return (match[1].decode(), int(match[2])) if match else None

        class _Salvager(Unpickler):
            def find_class(self, module: str, name: str) -> Any:
                return _Stub

        msg = _Salvager(io.BytesIO(payload)).load()
    except Exception:
        return None
    if type(msg) in (tuple, list) and len(msg) >= 2 and type(msg[0]) is str and type(msg[1]) is int:
        return msg[0], msg[1]
    return None


# --------------------------------------------------------------------------- handshake


def encode_json_object(obj: dict[str, Any]) -> bytes:
    """Encode a handshake object (hello / welcome); handshake frames are always JSON."""
    return get_codec("json").dumps(obj)


def decode_json_object(payload: bytes, expect: str) -> dict[str, Any]:
    """Decode a handshake frame and check that it is a JSON object with ``t == expect``."""
    obj = get_codec("json").loads(payload)
    if type(obj) is not dict:
        raise ProtocolError(f"expected a JSON object ({expect!r}), got {type(obj).__name__}")
    if obj.get("t") != expect:
        raise ProtocolError(f"expected a {expect!r} frame, got t={obj.get('t')!r}")
    return obj


def make_hello(
    pid: int,
    runtime: str,
    codecs: Sequence[str] = CODEC_NAMES,
    capabilities: Sequence[str] = CAPABILITIES,
) -> dict[str, Any]:
    return {
        "t": "hello",
        "protocol": PROTOCOL_VERSION,
        "pid": pid,
        "codecs": list(codecs),
        "runtime": runtime,
        "capabilities": list(capabilities),
    }


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise ProtocolError(what)


def _is_str_list(v: object) -> bool:
    return type(v) is list and all(type(x) is str for x in v)


def parse_hello(payload: bytes) -> dict[str, Any]:
    """Decode and validate a worker's hello frame (parent side)."""
    h = decode_json_object(payload, "hello")
    proto = h.get("protocol")
    _check(type(proto) is int, f"hello.protocol must be an integer, got {proto!r}")
    _check(
        proto == PROTOCOL_VERSION,
        f"worker speaks protocol {proto}, this corral speaks {PROTOCOL_VERSION}",
    )
    _check(type(h.get("pid")) is int, f"hello.pid must be an integer, got {h.get('pid')!r}")
    _check(
        _is_str_list(h.get("codecs")) and bool(h["codecs"]),
        f"hello.codecs must be a non-empty list of strings, got {h.get('codecs')!r}",
    )
    _check(type(h.get("runtime", "")) is str, "hello.runtime must be a string")
    h.setdefault("runtime", "unknown")
    _check(_is_str_list(h.get("capabilities", [])), "hello.capabilities must list strings")
    h.setdefault("capabilities", [])
    return h


def make_welcome(
    codec: str,
    worker_id: str,
    module: str | None = None,
    *,
    max_frame: int = DEFAULT_MAX_FRAME,
    sys_path: Sequence[str] | None = None,
    init_args: Sequence[Any] | None = None,
    features: Sequence[str] = (),
    pipeline: bool = False,
) -> dict[str, Any]:
    w: dict[str, Any] = {
        "t": "welcome",
        "codec": codec,
        "max_frame": max_frame,
        "worker_id": worker_id,
        "module": module,
    }
    if sys_path is not None:
        w["sys_path"] = list(sys_path)
    if init_args is not None:
        w["init_args"] = list(init_args)
    if pipeline:
        w["pipeline"] = True
    if features:
        w["features"] = list(features)
    return w


def parse_welcome(payload: bytes) -> dict[str, Any]:
    """Decode and validate the parent's welcome frame (worker side)."""
    w = decode_json_object(payload, "welcome")
    _check(type(w.get("codec")) is str, f"welcome.codec must be a string, got {w.get('codec')!r}")
    mf = w.get("max_frame", DEFAULT_MAX_FRAME)
    _check(
        type(mf) is int and 1024 <= mf <= MAX_FRAME_LIMIT,
        f"welcome.max_frame must be an integer in [1024, {MAX_FRAME_LIMIT}], got {mf!r}",
    )
    w["max_frame"] = mf
    _check(type(w.get("worker_id", "")) is str, "welcome.worker_id must be a string")
    _check(w.get("module") is None or type(w["module"]) is str, "welcome.module: str or null")
    _check(
        w.get("sys_path") is None or _is_str_list(w["sys_path"]),
        "welcome.sys_path must be a list of strings",
    )
    _check(
        w.get("init_args") is None or type(w["init_args"]) is list,
        "welcome.init_args must be a list",
    )
    _check(w.get("pipeline") in (None, True, False), "welcome.pipeline must be a boolean")
    _check(w.get("features") is None or _is_str_list(w["features"]), "welcome.features must list strings")
    return w


# --------------------------------------------------------------------------- messages


def qualified_type_name(cls: type) -> str:
    """``ValueError`` for builtins, else ``module.QualName``."""
    mod = getattr(cls, "__module__", None)
    qn: str = getattr(cls, "__qualname__", None) or cls.__name__
    return qn if mod in (None, "builtins") else f"{mod}.{qn}"
