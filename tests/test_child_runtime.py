"""The Python worker runtime (`_corral_child`) over raw pipes.

Plain blocking subprocesses with reader threads; every read has a timeout and every
process is killed in a `finally`. The `Worker` harness and the `spawn` fixture also
serve tests/test_node_worker.py (the Node.js example worker).
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
if str(SRC) not in sys.path:  # corral not installed: use the checkout
    sys.path.insert(0, str(SRC))

from _corral_child import _frames as F  # noqa: E402

NODE_WORKER = ROOT / "examples" / "node_worker" / "worker.js"
TIMEOUT = 10.0
FORBIDDEN = ("trio", "attrs", "attr", "corral")


def python_argv(module: str | None = "tests.handlers_basic", *, via_m: bool = False) -> list[str]:
    if via_m:
        return [sys.executable, "-m", "_corral_child", *([module] if module else [])]
    bootstrap = f"import sys;sys.path.insert(0,{str(SRC)!r});from _corral_child._runtime import main;main()"
    return [sys.executable, "-c", bootstrap, *([module] if module else [])]


class Worker:
    """Drives one worker process over its pipes."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(ROOT)])
        full_env["CORRAL_PARENT_PID"] = str(os.getpid())
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=full_env,
            start_new_session=True,
        )
        self.decoder = F.FrameDecoder()
        self.frames: queue.Queue[bytes | None] = queue.Queue()
        self.stderr_lines: list[str] = []
        self.codec: F.Codec = F.get_codec("json")
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        try:
            while True:
                data = os.read(fd, 65536)
                if not data:
                    break
                for frame in self.decoder.feed(data):
                    self.frames.put(frame)
        except (OSError, F.ProtocolError):
            pass
        finally:
            self.frames.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line.decode("utf-8", "replace"))

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def read_frame(self, timeout: float = TIMEOUT) -> bytes:
        frame = self.frames.get(timeout=timeout)
        if frame is None:
            raise EOFError(f"worker closed stdout; stderr:\n{self.stderr}")
        return frame

    def read(self, timeout: float = TIMEOUT) -> Any:
        return self.codec.loads(self.read_frame(timeout))

    def write_raw(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, msg: Any) -> None:
        self.write_raw(F.encode_frame(self.codec.dumps(msg)))

    def request(self, *msg: Any) -> Any:
        self.send(msg)
        return self.read()

    def hello(self) -> dict[str, Any]:
        return F.parse_hello(self.read_frame())

    def welcome(self, codec: str = "pickle", module: str | None = None, **kw: Any) -> None:
        kw.setdefault("sys_path", [*sys.path, str(ROOT)])
        welcome = F.make_welcome(codec, "w-test", module, **kw)
        self.write_raw(F.encode_frame(F.encode_json_object(welcome)))
        self.codec = F.get_codec(codec)

    def start(self, codec: str = "pickle", module: str | None = "tests.handlers_basic") -> Any:
        hello = self.hello()
        assert codec in hello["codecs"]
        self.welcome(codec, module)
        ready = self.read()
        assert ready[0] == "ready", (ready, self.stderr)
        return ready

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def wait(self, timeout: float = TIMEOUT) -> int:
        """The exit code, once the process has exited *and* its output is all read
        (under load the reader threads may lag behind the exit)."""
        code = self.proc.wait(timeout=timeout)
        for thread in self._threads:
            thread.join(timeout)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=TIMEOUT)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        for t in self._threads:
            t.join(timeout=TIMEOUT)


@pytest.fixture
def spawn() -> Iterator[Any]:
    workers: list[Worker] = []

    def _spawn(argv: list[str] | None = None, env: dict[str, str] | None = None) -> Worker:
        w = Worker(argv or python_argv(), env)
        workers.append(w)
        return w

    try:
        yield _spawn
    finally:
        for w in workers:
            w.kill()


@pytest.fixture
def pyworker(spawn: Any) -> Worker:
    w: Worker = spawn()
    w.start("pickle")
    return w


# ------------------------------------------------------------------ handshake


@pytest.mark.parametrize("via_m", [False, True])
def test_handshake(spawn: Any, via_m: bool) -> None:
    w: Worker = spawn(python_argv(via_m=via_m))
    hello = w.hello()
    assert hello["t"] == "hello"
    assert hello["protocol"] == F.PROTOCOL_VERSION
    assert hello["pid"] == w.proc.pid
    assert hello["codecs"] == ["pickle", "json"]
    assert hello["runtime"].startswith(f"{sys.implementation.name}/{sys.version_info.major}.")
    assert (
        set(hello["capabilities"])
        == set(F.CAPABILITIES)
        == {
            "call",
            "apply",
            "ping",
            "cancel",
            "pipeline",
            "kwargs",
            "stream",
            "progress",
            "withdraw",
        }
    )
    w.welcome("pickle", "tests.handlers_basic")
    assert w.read() == ("ready", 0, {"pid": w.proc.pid})
    assert w.request("call", 1, "getpid", ()) == ("ok", 1, w.proc.pid)


def test_module_from_command_line_is_a_fallback(spawn: Any) -> None:
    w: Worker = spawn(python_argv("tests.handlers_basic"))
    w.hello()
    welcome = F.make_welcome("pickle", "w", None, sys_path=[*sys.path, str(ROOT)])
    del welcome["module"]
    w.write_raw(F.encode_frame(F.encode_json_object(welcome)))
    w.codec = F.get_codec("pickle")
    assert w.read()[0] == "ready"
    assert w.request("call", 1, "add", (2, 3)) == ("ok", 1, 5)


def test_worker_is_free_of_trio_attrs_and_corral(pyworker: Worker) -> None:
    _, _, mods = pyworker.request("call", 1, "modules", ())
    leaked = [m for m in mods if m.split(".")[0] in FORBIDDEN]
    assert leaked == []
    assert "_corral_child._runtime" in mods


def test_environment(pyworker: Worker) -> None:
    for i, name in enumerate(["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"]):
        assert pyworker.request("call", i, "environ", (name,)) == ("ok", i, "1")
    assert pyworker.request("call", 9, "environ", ("CORRAL_WORKER_ID",)) == ("ok", 9, "w-test")


def test_thread_env_not_overridden(spawn: Any) -> None:
    w: Worker = spawn(env={"OMP_NUM_THREADS": "7"})
    w.start()
    assert w.request("call", 1, "environ", ("OMP_NUM_THREADS",)) == ("ok", 1, "7")


# ------------------------------------------------------------------ calls


def test_calls_and_errors_pickle(pyworker: Worker) -> None:
    w = pyworker
    assert w.request("call", 1, "echo", ({"a": [1, 2.5, b"x"]},)) == ("ok", 1, {"a": [1, 2.5, b"x"]})
    assert w.request("call", 2, "add", (2, 3)) == ("ok", 2, 5)
    kind, mid, info = w.request("call", 3, "boom", ("kaput",))
    assert (kind, mid) == ("error", 3)
    assert info["type"] == "ValueError"
    assert info["message"] == "kaput"
    assert "handlers_basic.py" in info["traceback"] and "raise ValueError" in info["traceback"]
    assert "_runtime.py" not in info["traceback"]
    exc = pickle.loads(info["exc"])
    assert isinstance(exc, ValueError) and exc.args == ("kaput",)
    # bad arity is the handler's TypeError, not a protocol problem
    kind, mid, info = w.request("call", 4, "add", (1,))
    assert (kind, mid, info["type"]) == ("error", 4, "TypeError")
    assert w.request("ping", 5) == ("pong", 5)
    assert w.request("apply", 6, divmod, (7, 2)) == ("ok", 6, (3, 1))


def test_unknown_handler(pyworker: Worker) -> None:
    kind, mid, info = pyworker.request("call", 1, "no_such_handler", ())
    assert (kind, mid, info["type"]) == ("error", 1, "UnknownHandler")
    assert "no_such_handler" in info["message"]
    kind, mid, info = pyworker.request("call", 2, "TYPE_CHECKING", ())  # not callable
    assert (kind, mid, info["type"]) == ("error", 2, "UnknownHandler")
    assert pyworker.request("call", 3, "echo", (1,)) == ("ok", 3, 1)


def test_unencodable_result(pyworker: Worker) -> None:
    kind, mid, info = pyworker.request("call", 1, "unencodable", ())
    assert (kind, mid, info["type"]) == ("error", 1, "EncodeError")
    assert "function" in info["message"]
    assert pyworker.request("call", 2, "echo", ("still alive",)) == ("ok", 2, "still alive")


def test_result_larger_than_max_frame(spawn: Any) -> None:
    w: Worker = spawn()
    w.hello()
    w.welcome("pickle", "tests.handlers_basic", max_frame=4096)
    assert w.read()[0] == "ready"
    kind, mid, info = w.request("call", 1, "big", (10_000,))
    assert (kind, mid, info["type"]) == ("error", 1, "EncodeError")
    assert "max_frame" in info["message"]
    assert w.request("call", 2, "big", (10,)) == ("ok", 2, b"x" * 10)


def test_undecodable_arguments_get_an_error_reply(pyworker: Worker) -> None:
    # A request whose argument's class does not exist in the worker.
    payload = pickle.dumps(("call", 1, "echo", (Path("x"),)), protocol=5)
    payload = payload.replace(b"pathlib", b"nolibxy")
    pyworker.write_raw(F.encode_frame(payload))
    kind, mid, info = pyworker.read()
    assert (kind, mid, info["type"]) == ("error", 1, "DecodeError")
    assert "nolibxy" in info["message"]
    assert pyworker.request("call", 2, "echo", (3,)) == ("ok", 2, 3)


def test_malformed_requests_with_an_id(pyworker: Worker) -> None:
    for i, msg in enumerate([("frobnicate", 1), ("call", 2, "echo"), ("call", 3, "echo", 5)]):
        kind, mid, info = pyworker.request(*msg)
        assert (kind, mid, info["type"]) == ("error", msg[1], "ProtocolError"), i
    assert pyworker.request("ping", 4) == ("pong", 4)


def test_prints_do_not_corrupt_the_channel(pyworker: Worker) -> None:
    assert pyworker.request("call", 1, "print_noise", ()) == ("ok", 1, "quiet")
    assert pyworker.request("call", 2, "read_stdin", ()) == ("ok", 2, "")
    assert pyworker.request("ping", 3) == ("pong", 3)
    deadline = time.monotonic() + TIMEOUT
    while "more noise" not in pyworker.stderr and time.monotonic() < deadline:
        time.sleep(0.01)
    err = pyworker.stderr
    assert "noise 0 via print()" in err and "garbage written to fd 1" in err


def test_pipelined_requests(pyworker: Worker) -> None:
    batch = b"".join(F.encode_frame(pyworker.codec.dumps(("call", i, "add", (i, 1)))) for i in range(50))
    pyworker.write_raw(batch + F.encode_frame(pyworker.codec.dumps(("ping", 50))))
    assert [pyworker.read() for _ in range(50)] == [("ok", i, i + 1) for i in range(50)]
    assert pyworker.read() == ("pong", 50)


def test_requests_sent_before_ready_are_served(spawn: Any) -> None:
    w: Worker = spawn()
    w.hello()
    w.welcome("pickle", "tests.handlers_basic")
    w.send(("call", 1, "echo", ("early",)))
    assert w.read()[0] == "ready"
    assert w.read() == ("ok", 1, "early")


def test_big_frames_round_trip(pyworker: Worker) -> None:
    blob = os.urandom(3 * 1024 * 1024 + 7)
    assert pyworker.request("call", 1, "echo", (blob,)) == ("ok", 1, blob)


def test_json_codec(spawn: Any) -> None:
    w: Worker = spawn()
    w.start("json")
    assert w.request("call", 1, "echo", ({"a": [1, 2.5, None, "é"]},)) == [
        "ok",
        1,
        {"a": [1, 2.5, None, "é"]},
    ]
    kind, mid, info = w.request("call", 2, "boom", ("x",))
    assert (kind, mid, info["type"], info["message"]) == ("error", 2, "ValueError", "x")
    assert "exc" not in info
    kind, mid, info = w.request("call", 3, "big", (3,))  # bytes are not JSON
    assert (kind, mid, info["type"]) == ("error", 3, "EncodeError")
    kind, mid, info = w.request("apply", 4, "len", [[1]])
    assert (kind, mid, info["type"]) == ("error", 4, "ProtocolError")
    assert w.request("ping", 5) == ["pong", 5]


# ------------------------------------------------------------------ signals, exits


def test_sigint_cancels_the_running_call(pyworker: Worker) -> None:
    pyworker.send(("call", 1, "sleep", (30,)))
    time.sleep(0.3)
    pyworker.proc.send_signal(signal.SIGINT)
    assert pyworker.read(timeout=5) == ("cancelled", 1)
    assert pyworker.request("call", 2, "echo", ("after",)) == ("ok", 2, "after")


def test_sigint_while_idle_is_ignored(pyworker: Worker) -> None:
    for _ in range(3):
        pyworker.proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
    assert pyworker.request("ping", 1) == ("pong", 1)
    assert pyworker.proc.poll() is None


def test_stdin_eof_exits_zero(pyworker: Worker) -> None:
    t = time.monotonic()
    pyworker.close_stdin()
    assert pyworker.wait() == 0
    assert time.monotonic() - t < 2


def test_shutdown_exits_zero(pyworker: Worker) -> None:
    pyworker.send(("shutdown",))
    assert pyworker.wait() == 0


def test_init_failure(spawn: Any) -> None:
    w: Worker = spawn(python_argv("tests.handlers_init_fails"))
    w.hello()
    w.welcome("pickle", "tests.handlers_init_fails")
    kind, mid, info = w.read()
    assert (kind, mid) == ("error", 0)
    assert info["type"] == "tests.handlers_init_fails.InitProblem"
    assert info["message"] == "database unreachable"
    assert "raise InitProblem" in info["traceback"]
    assert w.wait() == F.EXIT_INIT_FAILED


def test_missing_module(spawn: Any) -> None:
    w: Worker = spawn()
    w.hello()
    w.welcome("json", "tests.no_such_module_here")
    kind, mid, info = w.read()
    assert (kind, mid, info["type"]) == ("error", 0, "ModuleNotFoundError")
    assert w.wait() == F.EXIT_INIT_FAILED


def test_init_args(spawn: Any) -> None:
    w: Worker = spawn()
    w.hello()
    w.welcome("json", "tests.handlers_basic", init_args=[1])  # no init() to take them
    kind, mid, info = w.read()
    assert (kind, mid, info["type"]) == ("error", 0, "TypeError")
    assert w.wait() == F.EXIT_INIT_FAILED


@pytest.mark.parametrize(
    "welcome",
    [
        b"not json",
        b'{"t": "hello"}',
        b'{"t": "welcome", "codec": "msgpack"}',
        b'{"t": "welcome", "codec": "json", "max_frame": -1}',
        b'{"t": "welcome", "codec": "json", "max_frame": 100}',
        b'{"t": "welcome", "max_frame": 65536}',
        b'{"t": "welcome", "codec": "json", "pipeline": "yes"}',
        b'{"t": "welcome", "codec": "json", "features": "progress"}',
    ],
)
def test_bad_welcome_exits_4(spawn: Any, welcome: bytes) -> None:
    w: Worker = spawn()
    w.hello()
    w.write_raw(F.encode_frame(welcome))
    assert w.wait() == F.EXIT_PROTOCOL_ERROR
    assert "handshake" in w.stderr


def test_oversized_frame_exits_4(pyworker: Worker) -> None:
    pyworker.write_raw((F.DEFAULT_MAX_FRAME + 1).to_bytes(4, "big"))
    assert pyworker.wait() == F.EXIT_PROTOCOL_ERROR
    assert "max_frame" in pyworker.stderr


def test_garbage_and_idless_requests_exit_4(spawn: Any) -> None:
    for payload in [b"\x80\x05garbage", pickle.dumps(("frobnicate",))]:
        w: Worker = spawn()
        w.start("pickle")
        w.write_raw(F.encode_frame(payload))
        assert w.wait() == F.EXIT_PROTOCOL_ERROR


def test_parent_gone_at_startup(spawn: Any) -> None:
    gone = subprocess.Popen(["true"])  # the process named as our parent has died
    gone.wait()
    w: Worker = spawn(env={"CORRAL_PARENT_PID": str(gone.pid)})
    with pytest.raises(EOFError):
        w.read_frame()  # hello, then it notices and leaves
        w.read_frame()
    assert w.wait() == 0


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux-only")
def test_parent_death_kills_a_busy_worker(tmp_path: Path) -> None:
    # An intermediate parent starts a worker, makes it busy (so stdin EOF is not
    # noticed), prints the worker pid, then is SIGKILLed: the worker must die too.
    script = f"""
import os, sys, subprocess
sys.path.insert(0, {str(SRC)!r})
from _corral_child import _frames as F
env = dict(os.environ, CORRAL_PARENT_PID=str(os.getpid()))
p = subprocess.Popen({python_argv()!r}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
d = F.FrameDecoder()
def read():
    while True:
        fr = d.feed(os.read(p.stdout.fileno(), 65536))
        if fr:
            return fr[0]
read()
w = F.make_welcome("pickle", "w", "tests.handlers_basic", sys_path={[*sys.path, str(ROOT)]!r})
os.write(p.stdin.fileno(), F.encode_frame(F.encode_json_object(w)))
read()
os.write(p.stdin.fileno(), F.encode_frame(F.get_codec("pickle").dumps(("call", 1, "sleep", (60,)))))
print(p.pid, flush=True)
sys.stdin.read()
"""
    mid = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
        start_new_session=True,
    )
    worker_pid = None
    try:
        assert mid.stdout is not None
        line = _readline_with_timeout(mid.stdout, TIMEOUT)
        worker_pid = int(line)
        time.sleep(0.2)
        assert _alive(worker_pid)
        mid.kill()
        mid.wait(timeout=TIMEOUT)
        deadline = time.monotonic() + 5
        while _alive(worker_pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(worker_pid)
    finally:
        if mid.poll() is None:
            mid.kill()
            mid.wait(timeout=TIMEOUT)
        if worker_pid is not None and _alive(worker_pid):
            os.kill(worker_pid, signal.SIGKILL)
        for s in (mid.stdin, mid.stdout):
            if s is not None:
                s.close()


def _readline_with_timeout(stream: Any, timeout: float) -> bytes:
    box: queue.Queue[bytes] = queue.Queue()
    threading.Thread(target=lambda: box.put(stream.readline()), daemon=True).start()
    return box.get(timeout=timeout)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
