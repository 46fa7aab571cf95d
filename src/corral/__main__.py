"""The ``corral`` command: ``corral demo``, ``corral run CONFIG.toml``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="corral",
        description="Erlang/OTP-style supervision trees and worker pools for Trio.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="a supervised pool under load while faults are injected")
    demo.add_argument("--seconds", type=float, default=20.0, help="how long the demo runs (seconds)")
    from corral._procman import add_run_parser, run_command

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
