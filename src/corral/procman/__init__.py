"""``corral run CONFIG.toml``: supervise OS commands as an OTP supervision tree.

A TOML file describes a tree of supervisors whose leaves are OS commands. Each
command runs in its own process group; its exit code is its exit reason (0 normal,
anything else abnormal), its stdout/stderr lines go to a rotating log file and, in
the foreground, to the console. Stopping is two-phase: ``stop_signal`` to the group,
then ``SIGKILL`` to the group once the ``shutdown`` grace is over. See docs/procman.md.

Where each part lives (each usable on its own; the tests do):

* ``_config``: the frozen model (``Config``, ``SupervisorConfig``, ``ProcessConfig``,
  ``LogSettings``) and the rules between its fields;
* ``_load``: TOML -> ``Config`` with cattrs (``load_config``, ``loads_config``,
  ``parse_config``; ``InvalidSpec`` naming the TOML path, e.g. ``child[2].restart``);
* ``_logs``: a command's rotating log file and the terminal, one line format for both;
* ``_runner``: ``run_process``, the child function running one command;
* ``_reload``: ``diff``, what a reload changes (old ``Config``, new ``Config`` -> a plan);
* ``_tree``: ``build_tree`` (``Config`` -> ``corral.Supervisor``\\ s), ``describe_tree``,
  ``ProcessTree.apply`` (a reload's plan, carried out);
* ``_control``: the pid file, and ``corral run --reload`` finding the running instance;
* ``_serve``: ``serve``, the foreground process manager (signals, reload, console);
* ``_cli``: ``corral run`` on the command line.

Not imported by ``import corral``.
"""

from corral.procman._cli import add_run_parser, run_command
from corral.procman._config import Config, LogSettings, ProcessConfig, SupervisorConfig
from corral.procman._load import load_config, loads_config, parse_config
from corral.procman._logs import Console, LineFormatter, RotatingLog
from corral.procman._runner import ProcessExited, run_process, show_command
from corral.procman._serve import serve
from corral.procman._tree import ProcessTree, build_tree, describe_tree

__all__ = [
    "Config",
    "Console",
    "LineFormatter",
    "LogSettings",
    "ProcessConfig",
    "ProcessExited",
    "ProcessTree",
    "RotatingLog",
    "SupervisorConfig",
    "add_run_parser",
    "build_tree",
    "describe_tree",
    "load_config",
    "loads_config",
    "parse_config",
    "run_command",
    "run_process",
    "serve",
    "show_command",
]
