"""The ``corral`` command: ``corral demo``, ``corral run CONFIG.toml``."""

from __future__ import annotations

import argparse
import sys

_EPILOG = """\
corral is mostly a library; this command shows it and runs process trees:

  corral demo                      watch a pool survive crashes, hangs, segfaults and an upgrade
  corral run examples/procman.toml supervise OS commands with OTP strategies
  corral run --check app.toml      validate a tree without starting it

In a Trio program:

  async with corral.open_pool("myapp.handlers", size=4) as pool:
      result = await pool.call("predict", x)       # a worker process runs it

  async with corral.open_supervisor(children, strategy=corral.Strategy.ONE_FOR_ALL):
      ...

Guides: docs/supervision.md, docs/pool.md, docs/protocol.md (or `make docs`).
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="corral",
        description="Erlang/OTP-style supervision trees and worker pools for Trio.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_EPILOG,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="a supervised pool under load while faults are injected",
        description=(
            "A pool of 3 worker processes serves a steady load while a worker calls "
            "os._exit, one segfaults, one hangs past its request timeout, a session's worker "
            "is killed, a caller gives up mid-call and a replacement's init fails twice; midway "
            "the pool is upgraded to a version 2, worker by worker, without a failed call. "
            "Watch the supervisor replace them; the load goes on. Live view on a terminal "
            "(rich), plain log otherwise; Ctrl-C ends it in order, with the summary."
        ),
    )
    demo.add_argument("--seconds", type=float, default=20.0, help="how long the demo runs (seconds)")
    from corral.procman import add_run_parser, run_command

    add_run_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "run":
        return run_command(args)
    if args.command == "demo":
        from corral._demo import run_demo

        return run_demo(args.seconds)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
