"""The command line: ``corral run CONFIG.toml`` (``add_run_parser`` registers it on the
``corral`` command, ``run_command`` runs it and returns the exit status)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from functools import partial

import trio

from corral._errors import CorralError, InvalidSpec
from corral.procman._control import pid_file, send_reload
from corral.procman._load import load_config
from corral.procman._logs import Console
from corral.procman._serve import serve
from corral.procman._tree import build_tree, describe_tree

RUN_DESCRIPTION = """\
Supervise OS commands as an Erlang/OTP supervision tree described in a TOML file:
a process manager with OTP restart strategies (one_for_one, one_for_all,
rest_for_one), restart types (permanent, transient, temporary), restart intensity
that escalates up the tree, restart backoff, and a two-phase stop (stop_signal,
then SIGKILL after the shutdown grace) of each command's whole process group.

Each command's stdout/stderr lines go to LOG_DIR/<id>.log (rotated by size) and,
prefixed with the id, to this terminal. Ctrl-C or SIGTERM stops the tree in
reverse start order and exits 0; a second Ctrl-C kills everything at once.

SIGHUP, or `corral run --reload CONFIG.toml` from another terminal, reloads the
file: children added are started at their place, removed ones stopped, changed
ones restarted; an invalid file is rejected and nothing changes."""

RUN_EPILOG = """\
example (see examples/procman.toml and docs/procman.md for every option):

  [supervisor]                 # the root: options only
  strategy = "rest_for_one"    # one_for_one | one_for_all | rest_for_one
  max_restarts = 5             # more than this many restarts ...
  max_seconds = 10             # ... within this window: give up (exit 1)
  backoff = { initial = 0.5, maximum = 10 }
  log_dir = "logs"             # relative to this file

  [[child]]
  id = "db"
  command = ["postgres", "-D", "data"]   # a list: no shell, no splitting
  shutdown = 30                # seconds between stop_signal and SIGKILL
  stop_signal = "SIGINT"

  [[child]]                    # restarted whenever db restarts (rest_for_one)
  id = "web"
  command = ["sh", "-c", "exec ./server --port $PORT"]
  env = { PORT = "8080" }
  restart = "transient"        # restarted only after a nonzero exit

  [[child]]                    # a nested supervisor with its own children
  id = "jobs"
  type = "supervisor"
  strategy = "one_for_one"
  [[child.child]]
  id = "mailer"
  command = ["python", "-m", "mailer"]

reload (edit the file, then either):
  kill -HUP <pid>                    # the pid is in LOG_DIR/corral.pid
  corral run --reload app.toml       # checks the file first, then sends SIGHUP

exit status: 0 after a stop, 1 when the tree gave up or failed to start,
2 for an invalid config, 130 after a second Ctrl-C. With --reload: 0 when
SIGHUP was sent, 1 when no corral run runs that file, 2 for an invalid config."""


def add_run_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``corral run`` on the ``corral`` command's subparsers."""
    parser = sub.add_parser(
        "run",
        help="supervise OS commands from a TOML file (a process manager with OTP strategies)",
        description=RUN_DESCRIPTION,
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", metavar="CONFIG.toml", help="the tree to run (see the example below)")
    parser.add_argument(
        "--log-dir",
        metavar="DIR",
        help="write the log files here instead of the config's log_dir",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--check",
        action="store_true",
        help="validate the config, print the tree it describes, and exit",
    )
    mode.add_argument(
        "--reload",
        action="store_true",
        help="validate the config, then make the corral run running it reload it (SIGHUP)",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="do not echo the commands' output here (the log files still get it)",
    )


def run_command(args: argparse.Namespace) -> int:
    """``corral run``: returns the process exit status."""
    try:
        config = load_config(args.config, log_dir=args.log_dir)
    except InvalidSpec as exc:
        if args.reload:
            print(
                f"corral run --reload: {args.config}: {exc}; nothing was sent: the running "
                "corral run keeps its config",
                file=sys.stderr,
            )
        else:
            print(f"corral run: {args.config}: {exc}", file=sys.stderr)
        return 2
    if args.reload:
        status, message = send_reload(config, args.config)
        print(f"corral run --reload: {message}", file=sys.stderr if status else sys.stdout)
        return status
    if args.check:
        print("\n".join(describe_tree(config)))
        return 0
    # Events are printed by serve(); keep the supervisor's logger from printing them twice.
    logging.getLogger("corral").addHandler(logging.NullHandler())
    width = max((len(p.id) for p in config.processes()), default=0)
    console = Console(sys.stdout, sys.stderr, width)
    tree = build_tree(config, None if args.quiet else console)
    # A SIGHUP outside serve()'s signal receiver (trio hands the ones still pending back
    # when the receiver closes, after the tree stopped) must not kill corral run, as
    # SIGHUP's default action would. A Python handler, not SIG_IGN: an ignored signal
    # stays ignored across exec, in every command corral starts. Once the tree is down
    # (no more exec), SIG_IGN: Python resets its own handlers to SIG_DFL as it exits.
    signal.signal(signal.SIGHUP, _ignore)
    try:
        return trio.run(
            partial(serve, config_path=args.config, log_dir=args.log_dir, pid_file=pid_file(config.logs)),
            tree,
            console,
        )
    except KeyboardInterrupt:  # before the signal receiver was installed
        return 130
    except CorralError as exc:  # pragma: no cover - serve() handles the tree's own errors
        print(f"corral run: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _ignore(signum: int, frame: object) -> None:
    """SIGHUP while no reload can be made: nothing to do."""
