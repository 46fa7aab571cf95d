"""Instructions the Python worker runtime spends per no-op request, under callgrind.

    python -m benchmarks.child_loop [--src DIR] [--n 2000]

A noise-free figure for the worker's request loop (``_corral_child``), the hot path of
every call: wall-clock round trips on a shared 2-core machine vary by ±10% between
identical runs, instruction counts by well under 1%. The worker is driven over raw
pipes (pickle codec, ``benchmarks.handlers.noop``), once with 200 requests and once
with 200 + n; the difference divided by n is the cost of one request, start-up
excluded. Lockstep (one request in flight) and pipelined (4 written at once).
PYTHONHASHSEED is fixed: with random hashing the count wanders by ~1%.

``--src`` names the directory holding another ``_corral_child`` (e.g. a worktree of
main), to compare a change against its base in the same sitting. Needs ``valgrind``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

from _corral_child import _frames as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HANDLERS = "benchmarks.handlers"


def instructions(src: str, requests: int, batch: int) -> int:
    """Instructions the worker process executes in all: start-up, ``requests`` no-op
    calls written ``batch`` at a time, exit on EOF."""
    boot = f"import sys;sys.path.insert(0,{src!r});from _corral_child._runtime import main;main()"
    env = dict(os.environ, CORRAL_PDEATHSIG="0", PYTHONPATH=ROOT, PYTHONHASHSEED="0")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-c", boot]
        pipe = subprocess.PIPE
        proc = subprocess.Popen(argv, stdin=pipe, stdout=pipe, stderr=subprocess.DEVNULL, env=env)
        assert proc.stdin is not None and proc.stdout is not None
        to_worker, from_worker = proc.stdin.fileno(), proc.stdout.fileno()
        decoder = F.FrameDecoder()
        pending: list[bytes] = []

        def read() -> bytes:
            while not pending:
                chunk = os.read(from_worker, 65536)
                if not chunk:
                    raise RuntimeError("the worker exited early")
                pending.extend(decoder.feed(chunk))
            return pending.pop(0)

        F.parse_hello(read())
        welcome = F.make_welcome("pickle", "w-bench", HANDLERS)
        welcome["pipeline"] = batch > 1
        os.write(to_worker, F.encode_frame(F.encode_json_object(welcome)))
        codec = F.get_codec("pickle")
        if codec.loads(read())[0] != "ready":
            raise RuntimeError("the worker did not get ready")
        mid = 0
        for _ in range(requests // batch):
            data = b""
            for _ in range(batch):
                mid += 1
                data += F.encode_frame(codec.dumps(("call", mid, "noop", ())))
            os.write(to_worker, data)
            for _ in range(batch):
                reply = codec.loads(read())
                if reply[0] != "ok":
                    raise RuntimeError(f"unexpected reply {reply!r}")
        proc.stdin.close()
        proc.wait()
        with open(out) as f:
            match = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
    if match is None:
        raise RuntimeError("no instruction count in callgrind's output")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=os.path.join(ROOT, "src"), help="where _corral_child is")
    parser.add_argument("--n", type=int, default=2000, help="requests measured (a multiple of 4)")
    args = parser.parse_args()
    for batch, label in ((1, "lockstep"), (4, "4 in flight")):
        base = instructions(args.src, 200, batch)
        total = instructions(args.src, 200 + args.n, batch)
        print(f"{label:12s} {(total - base) / args.n:9.0f} instructions per no-op request  ({args.src})")


if __name__ == "__main__":
    main()
