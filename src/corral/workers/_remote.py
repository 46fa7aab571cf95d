"""Workers on other hosts, over OpenSSH: the same protocol on the same stdin/stdout.

The remote host needs only ``python3`` and the handler module: the child runtime
itself travels inside the command line (compressed source, ~14 KB), so corral need
not be installed there. The remote worker ends when the connection does: it is the
child of sshd's session process (PDEATHSIG), its stdin reaches EOF, and a small
watcher forked before the runtime starts kills the worker's whole process group
(whatever the handler spawned) once the worker is gone. See docs/remote.md.
"""

from __future__ import annotations

import base64
import functools
import os
import shlex
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from corral._errors import InvalidSpec
from corral._validate import check, number
from corral.workers._launch import Launch

_RUNTIME_FILES = ("__init__.py", "_frames.py", "_runtime.py", "_streams.py")

# Runs first on the remote side. Makes the worker lead its own process group, then
# forks a watcher that keeps only the worker's original stdin and a pipe that only the
# worker can write to. The watcher SIGKILLs the group when either hangs up: the worker
# died (EOF, crash, PDEATHSIG when sshd's session ended), or the parent is gone (stdin
# EOF, noticed even while a long call runs, when the runtime itself reads nothing).
# Never group 1: kill(-1) means "everyone".
_GROUP_WATCHER = """\
import os
def _corral_watch():
 p=os.getpid()
 try:
  if os.getpgrp()!=p:os.setpgid(0,0)
 except OSError:pass
 if os.getpgrp()!=p or p<=1 or not hasattr(os,'fork'):return
 r,w=os.pipe()
 if os.fork():
  os.close(r);return
 try:
  import _signal,select;_signal.signal(_signal.SIGINT,_signal.SIG_IGN)
  os.closerange(1,r);os.closerange(r+1,1<<16)
  q=select.poll();q.register(r,select.POLLIN)
  try:
   if os.fstat(0).st_mode&0o170000 in(0o10000,0o140000):q.register(0,getattr(select,'POLLRDHUP',0))
  except OSError:pass
  while not q.poll():pass
  os.killpg(p,9)
 finally:os._exit(0)
_corral_watch()
"""


@functools.cache
def remote_bootstrap() -> str:
    """A ``python3 -c`` program that installs the child runtime from its own text.

    Usable with any launcher whose far side has only ``python3`` (ssh, ``docker run -i``,
    ``kubectl exec -i``): ``[..., "python3", "-c", remote_bootstrap(), "myapp.handlers"]``.
    """
    import _corral_child

    pkg = os.path.dirname(os.path.abspath(_corral_child.__file__))
    sources = {}
    for name in _RUNTIME_FILES:
        with open(os.path.join(pkg, name), encoding="utf-8") as f:
            sources[name] = f.read()
    blob = base64.b64encode(zlib.compress(repr(sources).encode(), 9)).decode("ascii")
    return _GROUP_WATCHER + (
        "import sys,types,zlib,base64,ast\n"
        f"S=ast.literal_eval(zlib.decompress(base64.b64decode('{blob}')).decode())\n"
        "P=types.ModuleType('_corral_child');P.__path__=[];sys.modules['_corral_child']=P\n"
        "exec(compile(S['__init__.py'],'<corral>/__init__.py','exec'),P.__dict__)\n"
        "for n in ('_frames','_runtime','_streams'):\n"
        " m=types.ModuleType('_corral_child.'+n);m.__package__='_corral_child'\n"
        " sys.modules[m.__name__]=m;setattr(P,n,m)\n"
        " exec(compile(S[n+'.py'],'<corral>/'+n+'.py','exec'),m.__dict__)\n"
        # the handlers' API (corral_child.progress), as if corral were installed there
        "C=types.ModuleType('corral_child');C.progress=P._runtime.progress;sys.modules['corral_child']=C\n"
        "P._runtime.main()\n"
    )


def _options(value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise InvalidSpec("ssh.options", f"must be a list of strings, got {value!r}")
    return tuple(str(v) for v in value)


def _remote_env(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and k.isidentifier() and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidSpec("ssh.env", f"must map variable names to strings, got {value!r}")
    return dict(value)


def _remote_dir(path: str) -> str:
    """Quote a remote directory for the remote shell, keeping a leading ``~``."""
    if path == "~":
        return "~"
    if path.startswith("~/"):
        return "~/" + shlex.quote(path[2:])
    return shlex.quote(path)


@attrs.frozen
class SSH:
    """Run workers on ``host`` through the ``ssh`` client (keys, config, agents: yours).

    ``corral.open_pool("myapp.handlers", hosts=[SSH("gpu1"), SSH("gpu2", weight=2)])``.
    ``python`` is the remote interpreter; ``cwd`` (``~/`` allowed) and ``env`` apply on
    the remote side; ``options`` are extra ``ssh`` arguments (e.g. ``["-F", "cfg"]``);
    they come before corral's own defaults, so they override them (ssh keeps the first
    value it sees for an option).
    """

    host: str
    module: str | None = attrs.field(default=None, kw_only=True)
    python: str = attrs.field(default="python3", kw_only=True)
    user: str | None = attrs.field(default=None, kw_only=True)
    port: int | None = attrs.field(default=None, kw_only=True)
    identity_file: str | None = attrs.field(default=None, kw_only=True)
    options: tuple[str, ...] = attrs.field(default=(), kw_only=True, converter=_options)
    cwd: str | None = attrs.field(default=None, kw_only=True)
    env: dict[str, str] | None = attrs.field(default=None, kw_only=True, converter=_remote_env)
    weight: float = attrs.field(default=1.0, kw_only=True)
    ssh: str = attrs.field(default="ssh", kw_only=True)
    connect_timeout: float = attrs.field(default=10, kw_only=True)
    alive_interval: float = attrs.field(default=5, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host or self.host.startswith("-"):
            raise InvalidSpec("ssh.host", f"must be a host name, got {self.host!r}")
        check(self.weight, number(minimum=0, strict=True, field="ssh.weight"))
        if self.port is not None and not (
            isinstance(self.port, int) and not isinstance(self.port, bool) and 0 < self.port < 65536
        ):
            raise InvalidSpec("ssh.port", f"must be a TCP port, got {self.port!r}")
        for field in ("connect_timeout", "alive_interval"):
            check(getattr(self, field), number(minimum=1, what="seconds", field=f"ssh.{field}"))
        for field in ("module", "user", "identity_file", "cwd"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, str) or not value):
                raise InvalidSpec(f"ssh.{field}", f"must be a non-empty string or None, got {value!r}")
        if self.user is not None and self.user.startswith("-"):
            raise InvalidSpec("ssh.user", f"must be a user name, got {self.user!r}")

    @property
    def name(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}{':' + str(self.port) if self.port else ''}"

    def remote_command(self) -> str:
        """The command line the remote login shell runs (POSIX sh syntax)."""
        parts = []
        if self.cwd:
            parts.append(f"cd {_remote_dir(self.cwd)} &&")
        parts.append("exec")  # the shell becomes the worker: sshd's session is its parent
        if self.env:
            parts.append("env")
            parts.extend(shlex.quote(f"{k}={v}") for k, v in self.env.items())
        parts += [shlex.quote(self.python), "-c", shlex.quote(remote_bootstrap())]
        if self.module:
            parts.append(shlex.quote(self.module))
        return " ".join(parts)

    def argv(self) -> list[str]:
        # ssh keeps the FIRST value it gets for an option (command line before config
        # files): the explicit fields, then the user's options, then our defaults.
        argv = [self.ssh]
        if self.port is not None:
            argv += ["-p", str(self.port)]
        if self.user:
            argv += ["-l", self.user]
        if self.identity_file:
            argv += ["-i", self.identity_file]
        argv += list(self.options)
        interval = max(1, round(self.alive_interval))
        argv += [
            "-T",  # no pty: the channel stays 8-bit clean
            "-o", "BatchMode=yes",  # never prompt for a password or a host key
            "-o", f"ConnectTimeout={max(1, round(self.connect_timeout))}",
            "-o", f"ServerAliveInterval={interval}",  # a silent host: ssh exits within 3 intervals
            "-o", "ServerAliveCountMax=3",
            # One connection per worker: a dropped connection ends exactly its worker
            # (sshd's session exits, PDEATHSIG), and no master process outlives the pool.
            "-o", "ControlMaster=no",
            "-o", "ControlPath=none",
            "-o", "ForwardAgent=no",
            "-o", "ForwardX11=no",
            "-o", "ClearAllForwardings=yes",
        ]  # fmt: skip
        argv += [self.host, "--", self.remote_command()]
        return argv

    def launch(self, worker_id: str) -> Launch:
        welcome: dict[str, Any] = {"module": self.module}
        # CORRAL_PDEATHSIG / CORRAL_PARENT_PID describe the *local* parent: sshd does not
        # forward them, and the remote worker's parent is sshd's session process.
        return Launch(tuple(self.argv()), None, None, ("pickle", "json"), welcome)
