"""The Python worker runtime: handshake, then serve requests until EOF or shutdown.

`main` sets the worker up (private protocol pipes, hello, signals, welcome, the handler
module and its ``init()``); `_Server` then answers the requests, strictly in order: one
handler per message kind, and one place (`_Server.send`) that retires a request id.
Normative behaviour is in docs/protocol.md.

Standard library only, and cheap to start: before the worker is ready it imports only
``os``, ``sys`` and ``_signal`` (loaded by the interpreter already), the built-in
``_collections``, ``_ctypes`` (Linux: the parent-death signal) and the C codecs
``_json`` / ``_pickle``; ``traceback`` is imported on the first error, ``atexit`` on
shutdown.
"""

from __future__ import annotations

import os
import sys

from _corral_child import _frames

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
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
    if n < _SMALL_FRAME and n <= max_frame:  # the hot path: `pack_header` inlined
        data = n.to_bytes(4, "big") + payload
        done = os.write(fd, data)
        if done == n + 4:
            return
        view = memoryview(data)
        while done < n + 4:
            done += os.write(fd, view[done:])
        return
    header = _frames.pack_header(n, max_frame)  # raises FrameTooLarge if n > max_frame
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


_main_loaded = False
_main_error: str | None = None  # why loading the main script failed, for the DecodeError


def _needs_main(exc: Exception) -> bool:
    """Unpickling failed on a name of the parent's ``__main__`` (a function of a script)."""
    return isinstance(exc, AttributeError) and "'__main__'" in str(exc) and not _main_loaded


def _load_main() -> bool:
    """Run the parent's main script as ``__mp_main__``, as multiprocessing's spawn
    does, so that what it defines can be unpickled; its ``if __name__ ==
    "__main__":`` block does not run. True if there was a script to load."""
    global _main_loaded
    path = os.environ.get("CORRAL_MAIN_PATH")
    if not path or _main_loaded:
        return False
    _main_loaded = True
    import runpy
    import types

    module = types.ModuleType("__mp_main__")
    module.__file__ = path
    os.environ["CORRAL_LOADING_MAIN"] = "1"  # open_pool() refuses to run from here
    try:
        module.__dict__.update(runpy.run_path(path, run_name="__mp_main__"))
    except BaseException as exc:  # the request fails with DecodeError; the worker lives
        global _main_error
        _main_error = (
            f"the worker could not load your main script {path!r} ({exc!r}); keep the code "
            'that runs your program under `if __name__ == "__main__":`, or move the function '
            "to a module"
        )
        sys.stderr.write(f"corral: {_main_error}\n")
        return False
    finally:
        del os.environ["CORRAL_LOADING_MAIN"]
    sys.modules["__mp_main__"] = sys.modules["__main__"] = module
    return True


def parent_gone(expected: str | None) -> bool:
    """Whether the parent named by ``CORRAL_PARENT_PID`` has died.

    Not "is it our direct parent": a wrapper (``sh -c``, ``sudo``, ``uv run``) may
    stand between the parent and us (docs/protocol.md §7), so the named process itself
    is checked. A process we may not signal (another user's) is alive."""
    if not expected or not expected.isdigit():
        return False
    pid = int(expected)
    if os.getppid() == pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


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
    # A crash in C (SIGSEGV, SIGABRT...) prints the Python stack of every thread to
    # stderr, which crash reports quote (WorkerCrashed.stderr_tail). A builtin module.
    faulthandler: Any = __import__("faulthandler")
    faulthandler.enable()
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
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)  # no request runs before the welcome
    environ = os.environ
    if sys.platform == "linux" and environ.get("CORRAL_PDEATHSIG", "1") != "0":
        _set_pdeathsig()
    if parent_gone(environ.get("CORRAL_PARENT_PID")):
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
    server = _Server(req_fd, reply_fd, decoder, codec, max_frame, welcome.get("pipeline") is True)
    server.reports = "progress" in (welcome.get("features") or ())
    # Frames that came with the welcome are queued now, ahead of anything a SIGINT's
    # read-ahead may pull in while init() runs: the queue keeps the pipe's order.
    server._enqueue(frames)
    global _server
    _server = server
    _signal.signal(_signal.SIGINT, server.on_sigint)
    if welcome.get("worker_id"):
        environ["CORRAL_WORKER_ID"] = welcome["worker_id"]

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
        server.send(_encode_error(codec.raw_dumps, 0, _error_info(exc, tb, server.is_pickle), max_frame))
        _fatal(_frames.EXIT_INIT_FAILED, f"init failed: {type(exc).__name__}: {exc}")
    server.starting = False
    server.send(codec.raw_dumps(("ready", 0, {"pid": os.getpid()})))

    # -- 6. serve.
    server.serve(module)


_server: _Server | None = None  # the worker this process runs, once the welcome came


def progress(fraction: float | None = None, text: str = "") -> None:
    """Tell the parent how far ``init()`` or the running request has come.

    ``fraction`` is in [0, 1] (or None: unknown), ``text`` says what is happening
    ("loading weights"). A no-op outside a worker, and when the parent did not ask for
    progress (docs/protocol.md §5, ``progress``). Call it from the thread that runs the
    handler: the reply pipe is that thread's alone.
    """
    if fraction is not None and (type(fraction) not in (int, float) or not 0 <= fraction <= 1):
        raise ValueError(f"progress fraction must be a number in [0, 1] or None, got {fraction!r}")
    if type(text) is not str:
        raise TypeError(f"progress text must be a str, got {type(text).__name__}")
    server = _server
    if server is None or not server.reports:
        return
    mid = server.current if server.current is not None else 0 if server.starting else None
    if mid is None:
        return  # between requests: nobody to report to
    import _thread

    if _thread.get_ident() != server.thread:
        raise RuntimeError("call progress() from the thread that runs the handler")
    server.send_masked(server.dumps(("progress", mid, fraction, text[:_MAX_ERROR_TEXT])))


class _Server:
    """One worker serving requests, and what its SIGINT handler shares with it.

    Requests are answered strictly in the order received, one at a time.  Frames are
    read ahead into ``queue``; small ones are decoded at once, so that a "cancel" (or a
    stream's "credit") arriving behind the request it names is noted before that
    request's turn.  Each message kind has one handler (``handlers``); `send` retires
    the request each answer is for: a "cancel" naming it after that is stale.
    """

    def __init__(
        self,
        req_fd: int,
        reply_fd: int,
        decoder: _frames.FrameDecoder,
        codec: _frames.Codec,
        max_frame: int,
        pipeline: bool,
    ) -> None:
        self.req_fd = req_fd
        self.reply_fd = reply_fd
        self.decoder = decoder
        self.loads = codec.raw_loads
        self.dumps = codec.raw_dumps
        self.is_pickle = codec.name == "pickle"
        self.max_frame = max_frame
        self.pipeline = pipeline  # the parent names what it cancels ("cancel" frames)
        self.reports = False  # the parent takes "progress" messages (welcome features)
        self.starting = True  # init() runs: progress goes out with id 0
        self.thread = __import__("_thread").get_ident()  # the one thread that writes replies
        self.module: ModuleType | None = None  # the handler module, once imported
        self.queue: deque[Any] = deque()  # frames (bytes) or decoded messages (tuple/list)
        self.current: int | None = None  # the id of the request running now
        self.cancelled: set[int] = set()  # ids cancelled before their reply was sent
        self.last_done = 0  # highest id answered: later cancels of it are stale
        self.reading = False  # (about to be) blocked reading requests, or decoding them
        self.drain_wanted = False  # a SIGINT asked for a drain while we were reading
        self.draining = False  # the SIGINT handler is draining (its fd non-blocking)
        self.withdraw_wanted: set[int] = set()  # ids the parent asks back ("withdraw")
        self.skipped: set[int] = set()  # answered "withdrawn", out of order: not in last_done
        self.withdraw_later = False  # a withdrawal came while a frame was being written
        self.answering = False  # _answer_withdrawals runs
        self.streaming: int | None = None  # the id of the stream running now
        self.credit = 0  # chunks that stream may still send before the parent grants more
        self.masked = False  # a frame is being written: an interrupt now would tear it
        self.deferred = False  # an interrupt came while masked: raised once the frame is out
        self.loop: Any = None  # an asyncio loop, made for the first async generator
        self.handlers: dict[str, Callable[[Any], None]] = {
            "call": self._on_call,
            "apply": self._on_apply,
            "stream": self._on_stream,
            "ping": self._on_ping,
            "cancel": self._on_cancel,
            "credit": self._on_credit,
            "withdraw": self._on_withdraw,
            "shutdown": self._on_shutdown,
        }

    # -- the loop

    def serve(self, module: ModuleType | None) -> NoReturn:
        """Answer requests until EOF or "shutdown" (both end the process)."""
        self.module = module
        queue = self.queue
        handlers = self.handlers
        loads = self.loads
        while True:
            while not queue:
                self.read_more()
            msg = queue.popleft()
            if type(msg) not in (list, tuple):  # a frame not decoded when it was read
                try:
                    msg = loads(msg)
                except Exception as exc:
                    if not (_needs_main(exc) and _load_main()):
                        self._undecodable(msg, exc)
                        continue
                    try:  # a function of the parent's __main__: its script is loaded now
                        msg = loads(msg)
                    except Exception as again:
                        self._undecodable(msg, again)
                        continue
                if type(msg) not in (list, tuple):
                    self._bad_request(msg)
                    continue
            try:
                handler = handlers[msg[0]]
            except (IndexError, KeyError, TypeError):  # no kind, an unknown one, or not even hashable
                self._bad_request(msg)
                continue
            handler(msg)

    def read_more(self) -> None:
        """Block for the next bytes of requests and queue the frames they complete.

        ``reading`` covers the read *and* the decoding: a SIGINT landing here must not
        feed the decoder from its handler (re-entrantly, mid-feed); it asks for a drain,
        done below once the decoder is ours again."""
        if self.decoder.failed is not None:  # met by a SIGINT's read-ahead: now in its turn
            _fatal(_frames.EXIT_PROTOCOL_ERROR, str(self.decoder.failed))
        self.reading = True
        try:
            chunk = os.read(self.req_fd, _READ_SIZE)
        except OSError as exc:
            _fatal(_frames.EXIT_PROTOCOL_ERROR, f"cannot read requests: {exc}")
        if not chunk:
            _exit(_frames.EXIT_OK)
        try:
            frames = self.decoder.feed(chunk)
        except _frames.ProtocolError as exc:
            _fatal(_frames.EXIT_PROTOCOL_ERROR, str(exc))
        self._enqueue(frames)
        if self.withdraw_wanted:
            self._answer_withdrawals()
        if not self.queue:
            big = self.decoder.take_big()
            if big is not None:  # the rest of the frame belongs to _read_rest alone
                self.queue.append(_read_rest(self.req_fd, *big))
        self.draining = True  # before reading is cleared: a SIGINT from here on asks us
        self.reading = False
        self._settle_drains()  # ...and we drain for it (and for any that came while we read)

    def _settle_drains(self) -> None:
        """With ``draining`` set: drain for every SIGINT that asked to, then hand draining
        back to the handler. The check after clearing the flag closes the gap where a
        signal asked just before: no request a SIGINT announced is left unread."""
        while True:
            while self.drain_wanted:
                self.drain_wanted = False
                self._drain()
            self.draining = False
            if not self.drain_wanted:
                return
            self.draining = True

    def _enqueue(self, frames: list[bytes]) -> None:
        """Queue frames just read; note the cancels and credits among them at once."""
        queue = self.queue
        for frame in frames:
            msg: Any = frame
            if len(frame) < 128:  # small: decode now, so that a "cancel" behind its request counts
                try:
                    msg = self.loads(frame)
                except Exception:
                    pass  # reported when its turn comes
            if type(msg) not in (list, tuple) or not msg:
                queue.append(msg)  # large, or not a request: decoded (again) in its turn
                continue
            kind = msg[0]
            if kind == "cancel" and self._note_cancel(msg):
                continue
            if kind == "credit" and self._note_credit(msg):
                continue
            if kind == "withdraw" and self._note_withdraw(msg):
                continue
            queue.append(msg)

    # -- cancellation (docs/protocol.md §6)

    def on_sigint(self, signum: int, frame: object) -> None:
        """Interrupt the running request, if it is one the parent wants stopped."""
        if self.pipeline:
            # Requests may be queued: interrupt only one the parent named in a "cancel"
            # frame, which it wrote before signalling. Pull those frames in first, but
            # not while the main flow reads (or decodes): it drains as soon as it can,
            # and a stream waiting for credit then sees its cancel itself. Nor while
            # this handler drains already (a second signal in the first one's drain):
            # the first drains again for it.
            if self.reading or self.draining:
                self.drain_wanted = True
                return
            self.draining = True
            self._drain()
            self._settle_drains()
            if self.withdraw_wanted:
                if self.masked:  # a frame is being written: answer right after it
                    self.withdraw_later = True
                else:
                    self._answer_withdrawals()
            mid = self.current
            if mid is None or mid not in self.cancelled:
                return
        else:
            mid = self.current
            if mid is None:
                return  # idle: a late signal for a call that has already answered
        if self.masked:
            self.deferred = True  # raised once the frame being written is whole
            return
        self.current = None  # one interrupt per call
        raise KeyboardInterrupt

    def _drain(self) -> None:
        """From the SIGINT handler: pull in the requests already written, so that a "cancel"
        frame sent just before the signal is seen. EOF, an oversized header or a bad
        frame stop the read-ahead only: the serve loop meets them in order and ends
        the worker as §7 says."""
        fd = self.req_fd
        try:
            os.set_blocking(fd, False)
            while True:
                try:
                    chunk = os.read(fd, _READ_SIZE)
                except BlockingIOError:
                    break
                if not chunk:
                    break  # EOF: the serve loop will see it again
                self._enqueue(self.decoder.feed(chunk))
        except (OSError, _frames.ProtocolError):
            pass  # the serve loop will meet the same problem and report it
        finally:
            try:
                os.set_blocking(fd, True)
            except OSError:
                pass

    def _note_cancel(self, msg: Any) -> bool:
        """True when ``msg`` is a well-formed "cancel" request (now recorded)."""
        if len(msg) != 2 or type(msg[1]) is not int:
            return False
        if msg[1] > self.last_done and msg[1] not in self.skipped:
            self.cancelled.add(msg[1])
        return True

    def _note_withdraw(self, msg: Any) -> bool:
        """True when ``msg`` is a well-formed "withdraw" request (now recorded)."""
        if len(msg) != 2 or type(msg[1]) is not int:
            return False
        if msg[1] > self.last_done and msg[1] not in self.skipped and msg[1] != self.current:
            self.withdraw_wanted.add(msg[1])
        return True

    def _answer_withdrawals(self) -> None:
        """Give back the queued requests the parent withdrew: each is answered
        "withdrawn" now, out of order, and will never run (docs/protocol.md §5). One
        that runs or has been answered is not withdrawn: its own reply comes."""
        if self.answering:
            self.withdraw_later = True
            return
        self.answering = True
        try:
            again = True
            while again:  # a signal during a reply below may bring more
                self.withdraw_later = False
                wanted = self.withdraw_wanted
                # A snapshot (one C call): a SIGINT's read-ahead may append to the queue.
                queued = [
                    m for m in tuple(self.queue) if type(m) in (list, tuple) and len(m) > 2 and m[1] in wanted
                ]
                for msg in queued:
                    if msg[0] in ("call", "apply", "stream"):
                        self.queue.remove(msg)
                        self._withdrawn(msg[1])
                again = self.withdraw_later
        finally:
            self.answering = False

    def _withdrawn(self, mid: int) -> None:
        self.withdraw_wanted.discard(mid)
        self.cancelled.discard(mid)
        self.skipped.add(mid)
        self.send(self.dumps(("withdrawn", mid)))

    def _note_credit(self, msg: Any) -> bool:
        """True when ``msg`` is a well-formed "credit" (counted if its stream runs)."""
        if len(msg) != 3 or type(msg[1]) is not int or type(msg[2]) is not int or msg[2] < 1:
            return False
        if msg[1] == self.streaming:
            self.credit += msg[2]
        return True  # a stale one (its stream has ended) is dropped

    # -- one handler per message kind

    def _on_call(self, msg: Any) -> None:
        mid = self._runnable(msg)
        if mid is not None:
            fn = self._handler(mid, msg[2])
            if fn is not None:
                self._run(mid, fn, msg[3], msg[4] if len(msg) == 5 else None)

    def _on_apply(self, msg: Any) -> None:
        mid = self._runnable(msg)
        if mid is None:
            return
        fn = msg[2]
        if not self.is_pickle or not callable(fn):
            self._refuse(mid, "ProtocolError", "'apply' needs the pickle codec and a callable")
            return
        self._run(mid, fn, msg[3], msg[4] if len(msg) == 5 else None)

    def _on_stream(self, msg: Any) -> None:
        if len(msg) != 6 or type(msg[5]) is not int or msg[5] < 1:
            self._bad_request(msg)
            return
        mid = self._runnable(msg[:5])
        if mid is not None:
            fn = self._handler(mid, msg[2])
            if fn is not None:
                from _corral_child import _streams  # on the first stream: start-up stays lean

                _streams.run(self, mid, fn, msg[3], msg[4], msg[5])

    def _on_ping(self, msg: Any) -> None:
        if len(msg) != 2 or type(msg[1]) is not int:
            self._bad_request(msg)
            return
        self.send(self.dumps(("pong", msg[1])), msg[1])

    def _on_cancel(self, msg: Any) -> None:
        if not self._note_cancel(msg):
            self._bad_request(msg)

    def _on_credit(self, msg: Any) -> None:
        if not self._note_credit(msg):
            self._bad_request(msg)

    def _on_withdraw(self, msg: Any) -> None:
        if not self._note_withdraw(msg):
            self._bad_request(msg)

    def _on_shutdown(self, msg: Any) -> NoReturn:
        try:
            import atexit

            atexit._run_exitfuncs()
        finally:
            _exit(_frames.EXIT_OK)

    # -- running a request and answering it

    def _runnable(self, msg: Any) -> int | None:
        """The id of a "call"/"apply"/"stream" request to run now; None when it has been
        answered here instead (malformed, or cancelled while it waited in the queue)."""
        if (
            len(msg) not in (4, 5)
            or type(msg[1]) is not int
            or type(msg[3]) not in (list, tuple)
            or (len(msg) == 5 and type(msg[4]) is not dict)
        ):
            self._bad_request(msg)
            return None
        mid: int = msg[1]
        if mid in self.cancelled:
            self.send(self.dumps(("cancelled", mid)), mid)
            return None
        if mid in self.withdraw_wanted:  # withdrawn while it was still a raw frame
            self._withdrawn(mid)
            return None
        return mid

    def _handler(self, mid: int, name: Any) -> Callable[..., Any] | None:
        """The module's function ``name``; None once the request was refused for it."""
        module = self.module
        fn = getattr(module, name, None) if module is not None and type(name) is str else None
        if callable(fn):
            return fn  # type: ignore[no-any-return]
        where = module.__name__ if module is not None else None
        self._refuse(mid, "UnknownHandler", f"no handler named {name!r} in module {where!r}")
        return None

    def _run(
        self, mid: int, fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any] | None
    ) -> None:
        """Run a handler and answer with its result, its error, or "cancelled" (SIGINT)."""
        dumps = self.dumps
        self.current = mid
        if mid in self.cancelled:  # named by a SIGINT that came before ``current`` was set
            self.current = None
            self.send(dumps(("cancelled", mid)), mid)
            return
        try:
            result = fn(*args, **kwargs) if kwargs else fn(*args)
            self.current = None
        except KeyboardInterrupt:
            self.current = None
            self.send(dumps(("cancelled", mid)), mid)
            return
        except BaseException as exc:
            self.current = None
            self._failed(mid, exc)
            return
        self.send(self._encode_ok(mid, "ok", result), mid)

    def _failed(self, mid: int, exc: BaseException) -> None:
        tb = exc.__traceback__
        info = _error_info(exc, tb and tb.tb_next, self.is_pickle)
        self.send(_encode_error(self.dumps, mid, info, self.max_frame), mid)

    def _encode_ok(self, mid: int, kind: str, value: Any) -> bytes:
        """``(kind, mid, value)`` encoded, or the EncodeError reply that replaces it."""
        dumps = self.dumps
        try:
            data: bytes = dumps((kind, mid, value))
        except Exception as exc:
            info = _simple_error(
                "EncodeError",
                f"cannot encode a result of type {type(value).__qualname__!r}: {type(exc).__name__}: {exc}",
                self.is_pickle,
            )
            return _encode_error(dumps, mid, info, self.max_frame)
        if len(data) > self.max_frame:
            info = _simple_error(
                "EncodeError",
                f"the encoded result ({type(value).__qualname__}, {len(data)} bytes) "
                f"exceeds max_frame ({self.max_frame} bytes)",
                self.is_pickle,
            )
            return _encode_error(dumps, mid, info, self.max_frame)
        return data

    def send_masked(self, data: bytes) -> None:
        """Write a frame while a request runs (a chunk, a progress report): an interrupt
        arriving meanwhile waits until the frame is whole, never tears it."""
        self._write(data)
        if self.deferred:
            self.deferred = False
            self.current = None
            raise KeyboardInterrupt

    def _refuse(self, mid: int, type_name: str, message: str) -> None:
        """Answer a request that cannot run with an error of ``type_name``."""
        self.send(self.dumps(("error", mid, _simple_error(type_name, message, self.is_pickle))), mid)

    def send(self, data: bytes, mid: int | None = None) -> None:
        """Write one reply. ``mid`` is the request it answers, retired here first, in
        one place for every kind of answer: from then on it is no longer cancelled and
        a "cancel" naming it is stale.  Without ``mid`` nothing is retired (ready, init
        error, errors for requests that cannot be read)."""
        if mid is not None:
            self.last_done = mid
            self.cancelled.discard(mid)
            if self.withdraw_wanted:
                self.withdraw_wanted.discard(mid)  # it ran: a withdrawal of it is stale
            if self.skipped:  # tuple(): one C call, so a SIGINT cannot change it mid-way
                for done in tuple(self.skipped):
                    if done <= mid:
                        self.skipped.discard(done)
        self._write(data)

    def _write(self, data: bytes) -> None:
        """Write one frame, masked: a SIGINT meanwhile neither tears it nor writes into
        it (its withdrawals are answered right after)."""
        self.masked = True
        try:
            write_frame(self.reply_fd, data, self.max_frame)
        except OSError:
            _exit(_frames.EXIT_OK)  # the parent closed the reply pipe: it is gone
        finally:
            self.masked = False
        if self.withdraw_later:
            self.withdraw_later = False
            self._answer_withdrawals()

    # -- requests that cannot be answered normally

    def _undecodable(self, frame: bytes, exc: Exception) -> None:
        """A frame that does not decode: answer it if its kind and id can be salvaged."""
        salvaged = _frames.salvage_request_id(frame, "pickle" if self.is_pickle else "json")
        if salvaged is None or salvaged[0] not in ("call", "apply", "stream", "ping"):
            _fatal(_frames.EXIT_PROTOCOL_ERROR, f"undecodable frame: {exc!r}")
        info = _error_info(exc, None, self.is_pickle, type_name="DecodeError")
        info["message"] = f"cannot decode {salvaged[0]!r} request: {type(exc).__name__}: {exc}"
        if _main_error is not None and "'__main__'" in str(exc):
            info["message"] += f"; {_main_error}"
        self._answer_unreadable(salvaged[1], _encode_error(self.dumps, salvaged[1], info, self.max_frame))

    def _bad_request(self, msg: Any) -> None:
        mid = msg[1] if type(msg) in (list, tuple) and len(msg) >= 2 else None
        text = repr(msg)
        if len(text) > 200:
            text = text[:200] + "..."
        if type(mid) is not int or mid < 0:
            _fatal(_frames.EXIT_PROTOCOL_ERROR, f"malformed request without an id: {text}")
        info = _simple_error("ProtocolError", f"malformed or unknown request: {text}", self.is_pickle)
        self._answer_unreadable(mid, _encode_error(self.dumps, mid, info, self.max_frame))

    def _answer_unreadable(self, mid: int, data: bytes) -> None:
        """Answer a request that could not be read whole. Its id is retired only when it
        is a plausible next one (above the last answered): a garbled id must not make
        real requests' cancels look stale."""
        self.send(data, mid if mid > self.last_done else None)


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
