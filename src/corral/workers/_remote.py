"""Workers on other hosts, over OpenSSH: the same protocol on the same stdin/stdout.

The remote host needs only ``python3`` and the handler module: the child runtime
itself travels inside the command line (compressed source, ~12 KB), so corral need
not be installed there. The remote worker ends when the connection does: sshd's
session process is its parent (PDEATHSIG) and its stdin reaches EOF.
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
from corral.workers._launch import Launch

_RUNTIME_FILES = ("__init__.py", "_frames.py", "_runtime.py")


@functools.cache
def remote_bootstrap() -> str:
    """A ``python3 -c`` program that installs the child runtime from its own text."""
    import _corral_child

    pkg = os.path.dirname(os.path.abspath(_corral_child.__file__))
    sources = {}
    for name in _RUNTIME_FILES:
        with open(os.path.join(pkg, name), encoding="utf-8") as f:
            sources[name] = f.read()
    blob = base64.b64encode(zlib.compress(repr(sources).encode(), 9)).decode("ascii")
    return (
        "import sys,types,zlib,base64,ast\n"
        f"S=ast.literal_eval(zlib.decompress(base64.b64decode('{blob}')).decode())\n"
        "P=types.ModuleType('_corral_child');P.__path__=[];sys.modules['_corral_child']=P\n"
        "exec(compile(S['__init__.py'],'<corral>/__init__.py','exec'),P.__dict__)\n"
        "for n in ('_frames','_runtime'):\n"
        " m=types.ModuleType('_corral_child.'+n);m.__package__='_corral_child'\n"
        " sys.modules[m.__name__]=m;setattr(P,n,m)\n"
        " exec(compile(S[n+'.py'],'<corral>/'+n+'.py','exec'),m.__dict__)\n"
        "sys.modules['_corral_child._runtime'].main()\n"
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


@attrs.frozen
class SSH:
    """Run workers on ``host`` through the ``ssh`` client (keys, config, agents: yours).

    ``corral.open_pool("myapp.handlers", hosts=[SSH("gpu1"), SSH("gpu2", weight=2)])``.
    ``python`` is the remote interpreter; ``cwd`` and ``env`` apply on the remote side;
    ``options`` are extra ``ssh`` arguments (e.g. ``["-o", "StrictHostKeyChecking=no"]``).
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
    connect_timeout: int = attrs.field(default=10, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host or self.host.startswith("-"):
            raise InvalidSpec("ssh.host", f"must be a host name, got {self.host!r}")
        if not isinstance(self.weight, int | float) or not self.weight > 0:
            raise InvalidSpec("ssh.weight", f"must be a number > 0, got {self.weight!r}")
        if self.port is not None and not (isinstance(self.port, int) and 0 < self.port < 65536):
            raise InvalidSpec("ssh.port", f"must be a TCP port, got {self.port!r}")

    @property
    def name(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}{':' + str(self.port) if self.port else ''}"

    def remote_command(self) -> str:
        parts = []
        if self.cwd:
            parts.append(f"cd {shlex.quote(self.cwd)} &&")
        parts.append("exec")
        if self.env:
            parts.append("env")
            parts.extend(shlex.quote(f"{k}={v}") for k, v in self.env.items())
        parts += [shlex.quote(self.python), "-c", shlex.quote(remote_bootstrap())]
        if self.module:
            parts.append(shlex.quote(self.module))
        return " ".join(parts)

    def argv(self) -> list[str]:
        argv = [
            self.ssh,
            "-T",  # no pty: the channel stays 8-bit clean
            "-o", "BatchMode=yes",  # never prompt for a password
            "-o", f"ConnectTimeout={self.connect_timeout}",
            "-o", "ServerAliveInterval=5",
            "-o", "ServerAliveCountMax=3",
        ]  # fmt: skip
        if self.port is not None:
            argv += ["-p", str(self.port)]
        if self.user:
            argv += ["-l", self.user]
        if self.identity_file:
            argv += ["-i", self.identity_file]
        argv += list(self.options)
        argv += [self.host, "--", self.remote_command()]
        return argv

    def launch(self, worker_id: str) -> Launch:
        welcome: dict[str, Any] = {"module": self.module}
        return Launch(tuple(self.argv()), None, None, ("pickle", "json"), welcome)
