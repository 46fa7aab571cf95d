"""The Python worker runtime: handshake, then serve requests until EOF or shutdown.

Normative behaviour is in docs/protocol.md.  Standard library only, and cheap to start:
only modules the interpreter has already loaded (``os``, ``sys``, ``_signal``) plus the
C codecs are imported before the worker is ready; ``traceback`` is imported on the
first error.
"""

from __future__ import annotations

import os
import sys

from _corral_child import _frames

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType, TracebackType
    from typing import Any, NoReturn
if TYPE_CHECKING:
    from collections import deque
else:
    from _collections import deque  # `collections` itself costs ~2.5 ms to import

_SMALL_FRAME = 256 * 1024  # below this, header + payload are joined into one write
_READ_SIZE = 64 * 1024  # larger reads malloc via mmap: ~10 us of page faults per call
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
_MAX_ERROR_TEXT = 8192  # used only if a full error reply would exceed max_frame


def _exit(code: int) -> NoReturn:
    """Leave at once: flush Python's std streams, skip interpreter finalisation."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass
    os._exit(code)


def _fatal(code: int, message: str) -> NoReturn:
    try:
        sys.stderr.write(f"corral worker {os.getpid()}: {message}\n")
    except Exception:
        pass
    _exit(code)


def write_frame(fd: int, payload: bytes, max_frame: int = _frames.MAX_FRAME_LIMIT) -> None:
    """Write one frame to a blocking fd, looping on partial writes.

    Small frames go out as one joined ``bytes`` (one syscall); large ones use
    ``os.writev`` so the payload is never copied.
    """
    n = len(payload)
    header = _frames.pack_header(n, max_frame)
    if n < _SMALL_FRAME:
        data = header + payload
        done = os.write(fd, data)
        if done == n + 4:
            return
        view = memoryview(data)
        while done < n + 4:
            done += os.write(fd, view[done:])
        return
    done = os.writev(fd, [header, payload])
    while done < 4:
        done += os.writev(fd, [header[done:], payload])
    view = memoryview(payload)
    done -= 4
    while done < n:
        done += os.write(fd, view[done:])


def _format_traceback(exc: BaseException, tb: TracebackType | None) -> str:
    try:
        import traceback

        return "".join(traceback.format_exception(type(exc), exc, tb))
    except Exception:
        return f"{type(exc).__name__}: (traceback unavailable)\n"


def _error_info(
    exc: BaseException, tb: TracebackType | None, with_exc: bool, *, type_name: str | None = None
) -> dict[str, Any]:
    try:
        message = str(exc)
    except Exception:
        message = f"<unprintable {type(exc).__name__} object>"
    info: dict[str, Any] = {
        "type": type_name or _frames.qualified_type_name(type(exc)),
        "message": message,
        "traceback": _format_traceback(exc, tb),
    }
    if with_exc:
        try:
            info["exc"] = _frames.get_codec("pickle").raw_dumps(exc)
        except Exception:
            info["exc"] = None
    return info


def _simple_error(type_name: str, message: str, with_exc: bool) -> dict[str, Any]:
    info: dict[str, Any] = {"type": type_name, "message": message, "traceback": ""}
    if with_exc:
        info["exc"] = None
    return info


def _encode_error(dumps: Any, mid: int, info: dict[str, Any], max_frame: int) -> bytes:
    """Encode an error reply; shrink it if it is too large; never raises."""
    try:
        data: bytes = dumps(("error", mid, info))
        if len(data) <= max_frame:
            return data
    except Exception:
        pass
    small: dict[str, Any] = {
        "type": str(info.get("type", "Exception")),
        "message": str(info.get("message", ""))[:_MAX_ERROR_TEXT],
        "traceback": str(info.get("traceback", ""))[-_MAX_ERROR_TEXT:],
    }
    if "exc" in info:
        small["exc"] = None
    try:
        return dumps(("error", mid, small))  # type: ignore[no-any-return]
    except Exception:
        small["message"] = small["message"].encode("ascii", "backslashreplace").decode()
        small["traceback"] = small["traceback"].encode("ascii", "backslashreplace").decode()
        return dumps(("error", mid, small))  # type: ignore[no-any-return]


def _set_pdeathsig() -> None:
    """Linux: ask the kernel to SIGKILL us when our parent (thread!) dies.

    Uses ``_ctypes`` directly: ``import ctypes`` costs several ms, ``_ctypes`` well
    under one.  Falls back to ``ctypes``; any failure is ignored (stdin EOF still
    stops an idle worker).
    """
    try:
        import _ctypes

        ct: Any = _ctypes  # private API: untyped on purpose

        class _Int(ct._SimpleCData):  # type: ignore[misc]
            _type_ = "i"

        class _ULong(ct._SimpleCData):  # type: ignore[misc]
            _type_ = "L"

        class _Func(ct.CFuncPtr):  # type: ignore[misc]
            _flags_ = ct.FUNCFLAG_CDECL
            _restype_ = _Int

        class _Lib:
            _handle = ct.dlopen(None, os.RTLD_NOW)

        prctl = _Func(("prctl", _Lib()))
        prctl(_Int(1), _ULong(9))  # PR_SET_PDEATHSIG, SIGKILL
    except Exception:
        try:
            import ctypes

            ctypes.CDLL(None).prctl(1, ctypes.c_ulong(9))
        except Exception:
            pass


def main(argv: list[str] | None = None) -> NoReturn:
    args = sys.argv[1:] if argv is None else argv
    fallback_module = args[0] if args else None

    # -- 1. protect the channel: frames go to a private dup of the original stdout,
    #    fd 1 becomes stderr, and fd 0 becomes /dev/null (requests are read from a
    #    private dup), so neither print(), os.write(1, ...), input() nor a grandchild
    #    process can touch the protocol pipes.
    try:
        reply_fd = os.dup(1)
        req_fd = os.dup(0)
        os.dup2(2, 1)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    except OSError as exc:
        _fatal(_frames.EXIT_PROTOCOL_ERROR, f"cannot set up the protocol channel: {exc}")
    stdout = sys.stdout
    if stdout is not None:
        try:
            stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        except Exception:
            pass

    # -- 2. hello, first thing: the parent prepares the welcome while we set up.
    v = sys.version_info
    runtime = f"{sys.implementation.name}/{v.major}.{v.minor}.{v.micro}"
    try:
        hello = _frames.encode_json_object(_frames.make_hello(os.getpid(), runtime))
        write_frame(reply_fd, hello)
    except OSError:
        _exit(_frames.EXIT_OK)  # parent already gone

    # -- 3. signals, parent death, environment.
    _signal: Any = __import__("_signal")  # `import signal` pulls in enum: slow

    state = _State()

    def on_sigint(signum: int, frame: object) -> None:
        mid = state.current
        if mid is None:
            # Between two requests: note a cancel already written, so that the cancelled
            # request queued next is skipped. Not while blocked in read(): the read would
            # resume and wait for more input with requests sitting in the queue.
            if state.pipeline and not state.reading:
                _drain(state)
            return
        if state.pipeline:
            # Several requests may be queued: interrupt only the one the parent named
            # in a "cancel" frame, which it wrote before signalling.
            _drain(state)
            if mid not in state.cancelled:
                return
            state.cancelled.discard(mid)
        state.current = None  # one interrupt per call
        raise KeyboardInterrupt

    _signal.signal(_signal.SIGINT, on_sigint)
    environ = os.environ
    if sys.platform == "linux" and environ.get("CORRAL_PDEATHSIG", "1") != "0":
        _set_pdeathsig()
    expected_ppid = environ.get("CORRAL_PARENT_PID")
    if expected_ppid and expected_ppid.isdigit() and os.getppid() != int(expected_ppid):
        _exit(_frames.EXIT_OK)  # the parent died before PDEATHSIG was armed
    for name in _THREAD_ENV:
        if name not in environ:
            environ[name] = "1"

    # -- 4. welcome.
    decoder = _frames.FrameDecoder(_frames.DEFAULT_MAX_FRAME)
    read = os.read
    frames: list[bytes] = []
    try:
        while not frames:
            chunk = read(req_fd, _READ_SIZE)
            if not chunk:
                _exit(_frames.EXIT_OK)
            frames = decoder.feed(chunk)
        welcome = _frames.parse_welcome(frames[0])
        codec = _frames.get_codec(welcome["codec"])
    except _frames.ProtocolError as exc:
        _fatal(_frames.EXIT_PROTOCOL_ERROR, f"bad handshake: {exc}")
    del frames[0]
    max_frame: int = welcome["max_frame"]
    decoder.max_frame = max_frame
    for f in frames:
        if len(f) > max_frame:
            _fatal(_frames.EXIT_PROTOCOL_ERROR, f"frame of {len(f)} bytes exceeds max_frame")
    is_pickle = codec.name == "pickle"
    dumps = codec.raw_dumps
    loads = codec.raw_loads
    state.pipeline = welcome.get("pipeline") is True
    state.decoder = decoder
    state.req_fd = req_fd
    state.loads = loads
    if welcome.get("worker_id"):
        environ["CORRAL_WORKER_ID"] = welcome["worker_id"]

    def send(data: bytes) -> None:
        try:
            write_frame(reply_fd, data, max_frame)
        except OSError:
            _exit(_frames.EXIT_OK)  # the parent closed the reply pipe: it is gone

    # -- 5. import the handler module and run its init().
    module_name = welcome.get("module", fallback_module)
    module: ModuleType | None = None
    try:
        if welcome.get("sys_path") is not None:
            sys.path[:] = welcome["sys_path"]
        if module_name:
            __import__(module_name)
            module = sys.modules[module_name]
        init = getattr(module, "init", None) if module is not None else None
        init_args = welcome.get("init_args") or []
        if callable(init):
            init(*init_args)
        elif init_args:
            raise TypeError(f"init_args given but module {module_name!r} has no init()")
    except BaseException as exc:
        tb = exc.__traceback__
        send(_encode_error(dumps, 0, _error_info(exc, tb, is_pickle), max_frame))
        _fatal(_frames.EXIT_INIT_FAILED, f"init failed: {type(exc).__name__}: {exc}")
    send(dumps(("ready", 0, {"pid": os.getpid()})))

    # -- 6. serve.
    state.queue.extend(frames)
    _serve(state, send, dumps, module, is_pickle, max_frame)


class _State:
    """What the serve loop and the SIGINT handler share."""

    def __init__(self) -> None:
        self.current: int | None = None  # the id of the request running now
        self.pipeline = False  # the parent names what it cancels ("cancel" frames)
        self.cancelled: set[int] = set()  # ids cancelled before their reply was sent
        self.last_done = 0  # highest id answered: later cancels of it are stale
        self.queue: deque[Any] = deque()  # frames (bytes) or decoded messages (tuple/list)
        self.decoder: _frames.FrameDecoder | None = None
        self.req_fd = 0
        self.loads: Any = None
        self.reading = False  # the serve loop is (about to be) blocked reading requests


def _note_cancel(state: _State, msg: Any) -> bool:
    """True when ``msg`` is a well-formed "cancel" request (now recorded)."""
    if type(msg) not in (list, tuple) or len(msg) != 2 or msg[0] != "cancel" or type(msg[1]) is not int:
        return False
    if msg[1] > state.last_done:
        state.cancelled.add(msg[1])
    return True


def _drain(state: _State) -> None:
    """From the SIGINT handler: pull in the requests already written, so that a "cancel"
    frame sent just before the signal is seen. The others are queued, decoded."""
    fd = state.req_fd
    assert state.decoder is not None
    try:
        os.set_blocking(fd, False)
        while True:
            try:
                chunk = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                break
            if not chunk:
                break  # EOF: the serve loop will see it again
            for frame in state.decoder.feed(chunk):
                try:
                    msg = state.loads(frame) if len(frame) < 128 else frame
                except Exception:
                    msg = frame
                if not _note_cancel(state, msg):
                    state.queue.append(msg)
    except (OSError, _frames.ProtocolError):
        pass  # the serve loop will meet the same problem and report it
    finally:
        try:
            os.set_blocking(fd, True)
        except OSError:
            pass


def _serve(
    state: _State,
    send: Any,
    dumps: Any,
    module: ModuleType | None,
    is_pickle: bool,
    max_frame: int,
) -> NoReturn:
    read = os.read
    decoder = state.decoder
    assert decoder is not None
    feed = decoder.feed
    loads = state.loads
    req_fd = state.req_fd
    queue = state.queue
    cancelled = state.cancelled
    getattr_ = getattr
    while True:
        if not queue:
            try:
                state.reading = True
                chunk = read(req_fd, _READ_SIZE)
                state.reading = False
            except OSError as exc:
                _fatal(_frames.EXIT_PROTOCOL_ERROR, f"cannot read requests: {exc}")
            if not chunk:
                _exit(_frames.EXIT_OK)
            try:
                new = feed(chunk)
            except _frames.ProtocolError as exc:
                _fatal(_frames.EXIT_PROTOCOL_ERROR, str(exc))
            for frame in new:
                if len(frame) < 128:  # small: decode now, so a "cancel" behind its request counts
                    try:
                        msg = loads(frame)
                    except Exception:
                        queue.append(frame)  # reported when its turn comes
                        continue
                    if _note_cancel(state, msg):
                        continue
                    queue.append(msg if type(msg) in (list, tuple) else frame)
                else:
                    queue.append(frame)
            if not queue:
                big = decoder.take_big()
                if big is None:
                    continue
                state.reading = True  # the rest of the frame belongs to _read_rest alone
                queue.append(_read_rest(req_fd, *big))
                state.reading = False
        while queue:
            frame = queue.popleft()
            if type(frame) in (list, tuple):
                msg = frame  # decoded already, by _drain
            else:
                try:
                    msg = loads(frame)
                except Exception as exc:
                    salvaged = _frames.salvage_request_id(frame) if is_pickle else None
                    if salvaged is None:
                        _fatal(_frames.EXIT_PROTOCOL_ERROR, f"undecodable frame: {exc!r}")
                    info = _error_info(exc, None, is_pickle, type_name="DecodeError")
                    info["message"] = f"cannot decode {salvaged[0]!r} request: {type(exc).__name__}: {exc}"
                    send(_encode_error(dumps, salvaged[1], info, max_frame))
                    continue
            kind = msg[0] if type(msg) in (list, tuple) and msg else None
            if kind == "cancel":
                if not _note_cancel(state, msg):
                    _bad_request(msg, send, dumps, is_pickle, max_frame)
                continue
            if kind == "call" or kind == "apply":
                if len(msg) != 4 or type(msg[1]) is not int or type(msg[3]) not in (list, tuple):
                    _bad_request(msg, send, dumps, is_pickle, max_frame)
                    continue
                mid = msg[1]
                if mid in cancelled:  # cancelled while it waited in the queue
                    cancelled.discard(mid)
                    state.last_done = mid
                    send(dumps(("cancelled", mid)))
                    continue
                if kind == "call":
                    name = msg[2]
                    fn = getattr_(module, name, None) if module is not None and type(name) is str else None
                    if not callable(fn):
                        info = _simple_error(
                            "UnknownHandler",
                            f"no handler named {name!r} in module "
                            f"{module.__name__ if module is not None else None!r}",
                            is_pickle,
                        )
                        state.last_done = mid
                        cancelled.discard(mid)
                        send(dumps(("error", mid, info)))
                        continue
                else:
                    fn = msg[2]
                    if not is_pickle or not callable(fn):
                        info = _simple_error(
                            "ProtocolError",
                            "'apply' needs the pickle codec and a callable",
                            is_pickle,
                        )
                        state.last_done = mid
                        cancelled.discard(mid)
                        send(dumps(("error", mid, info)))
                        continue
                state.current = mid
                try:
                    result = fn(*msg[3])
                    state.current = None
                except KeyboardInterrupt:
                    state.current = None
                    state.last_done = mid
                    cancelled.discard(mid)
                    send(dumps(("cancelled", mid)))
                    continue
                except BaseException as exc:
                    state.current = None
                    state.last_done = mid
                    cancelled.discard(mid)
                    tb = exc.__traceback__
                    send(_encode_error(dumps, mid, _error_info(exc, tb and tb.tb_next, is_pickle), max_frame))
                    continue
                try:
                    data = dumps(("ok", mid, result))
                except Exception as exc:
                    info = _simple_error(
                        "EncodeError",
                        f"cannot encode a result of type {type(result).__qualname__!r}: "
                        f"{type(exc).__name__}: {exc}",
                        is_pickle,
                    )
                    data = _encode_error(dumps, mid, info, max_frame)
                if len(data) > max_frame:
                    info = _simple_error(
                        "EncodeError",
                        f"the encoded result ({type(result).__qualname__}, {len(data)} bytes) "
                        f"exceeds max_frame ({max_frame} bytes)",
                        is_pickle,
                    )
                    data = _encode_error(dumps, mid, info, max_frame)
                state.last_done = mid
                cancelled.discard(mid)
                send(data)
            elif kind == "ping":
                if len(msg) != 2 or type(msg[1]) is not int:
                    _bad_request(msg, send, dumps, is_pickle, max_frame)
                    continue
                state.last_done = msg[1]
                cancelled.discard(msg[1])
                send(dumps(("pong", msg[1])))
            elif kind == "shutdown":
                try:
                    import atexit

                    atexit._run_exitfuncs()
                finally:
                    _exit(_frames.EXIT_OK)
            else:
                _bad_request(msg, send, dumps, is_pickle, max_frame)


def _read_rest(fd: int, frame: bytearray, have: int) -> bytearray:
    """Read the rest of a large frame straight into its final buffer."""
    view = memoryview(frame)
    size = len(frame)
    readv = os.readv
    while have < size:
        n = readv(fd, [view[have:]])
        if not n:
            _exit(_frames.EXIT_OK)  # EOF in the middle of a request: the parent is gone
        have += n
    view.release()
    return frame


def _bad_request(msg: Any, send: Any, dumps: Any, is_pickle: bool, max_frame: int) -> None:
    mid = msg[1] if type(msg) in (list, tuple) and len(msg) >= 2 else None
    text = repr(msg)
    if len(text) > 200:
        text = text[:200] + "..."
    if type(mid) is not int:
        _fatal(_frames.EXIT_PROTOCOL_ERROR, f"malformed request without an id: {text}")
    info = _simple_error("ProtocolError", f"malformed or unknown request: {text}", is_pickle)
    send(_encode_error(dumps, mid, info, max_frame))
