"""Parent-side view of the worker wire protocol, and how a Python worker is started.

The framing and codecs are one implementation for both sides: they come from
``_corral_child._frames`` (the standard-library-only module the child runtime uses).
The rest is the parent's start-up helpers: the child runtime's argv and source
directory, and byte-compiling the runtime and handler modules once, in the parent, so
that no worker pays for it (the only file I/O here). docs/protocol.md is the
normative spec.
"""

from __future__ import annotations

import os
import sys

import _corral_child
from _corral_child._frames import (
    CAPABILITIES,
    CODEC_NAMES,
    DEFAULT_MAX_FRAME,
    EXIT_INIT_FAILED,
    EXIT_OK,
    EXIT_PROTOCOL_ERROR,
    FEATURES,
    HEADER_SIZE,
    MAX_FRAME_LIMIT,
    PICKLE_PROTOCOL,
    PROTOCOL_VERSION,
    Codec,
    DecodeError,
    EncodeError,
    FrameDecoder,
    FrameTooLarge,
    ProtocolError,
    choose_codec,
    decode_json_object,
    encode_frame,
    encode_json_object,
    get_codec,
    make_hello,
    make_welcome,
    pack_header,
    parse_hello,
    parse_welcome,
    qualified_type_name,
    unpack_header,
)

__all__ = [
    "CAPABILITIES",
    "CODEC_NAMES",
    "DEFAULT_MAX_FRAME",
    "EXIT_INIT_FAILED",
    "EXIT_OK",
    "EXIT_PROTOCOL_ERROR",
    "FEATURES",
    "HEADER_SIZE",
    "MAX_FRAME_LIMIT",
    "PICKLE_PROTOCOL",
    "PROTOCOL_VERSION",
    "Codec",
    "DecodeError",
    "EncodeError",
    "FrameDecoder",
    "FrameTooLarge",
    "ProtocolError",
    "child_argv",
    "child_src_dir",
    "choose_codec",
    "decode_json_object",
    "encode_frame",
    "encode_json_object",
    "get_codec",
    "make_hello",
    "make_welcome",
    "pack_header",
    "parse_hello",
    "parse_welcome",
    "precompile_child",
    "qualified_type_name",
    "unpack_header",
]


def child_src_dir() -> str:
    """The directory that contains the ``_corral_child`` package."""
    return os.path.dirname(os.path.dirname(os.path.abspath(_corral_child.__file__)))


def child_argv(module: str | None = None, *, python: str | None = None) -> list[str]:
    """The argv that starts a Python worker running ``module`` (or the welcome's module).

    Uses ``python -c`` rather than ``python -m _corral_child``: ``-m`` imports runpy,
    which pulls in importlib.util/contextlib/collections and adds ~5 ms (40%) to start-up.
    The bootstrap puts ``_corral_child``'s directory first on sys.path, so the worker
    does not depend on PYTHONPATH or on corral being installed.
    """
    bootstrap = (
        f"import sys;sys.path.insert(0,{child_src_dir()!r});from _corral_child._runtime import main;main()"
    )
    argv = [python or sys.executable, "-c", bootstrap]
    if module is not None:
        argv.append(module)
    return argv


_CHILD_MODULES = ("__init__.py", "__main__.py", "_frames.py", "_runtime.py", "_streams.py", "_zygote.py")


def ensure_bytecode(source: str, *, force: bool = False) -> bool:
    """Write ``source``'s bytecode cache if it is missing or stale (or always, with
    ``force``); False if it cannot.

    A worker that compiles its modules from source starts several ms slower, and the
    interpreter never writes caches itself under PYTHONDONTWRITEBYTECODE.
    """
    import importlib.util
    import py_compile

    try:
        cache = importlib.util.cache_from_source(source)
        st = os.stat(source)
        try:
            with open(cache, "rb") as f:
                header = f.read(16)
        except OSError:
            header = b""
        fresh = (
            not force
            and len(header) == 16
            and header[:4] == importlib.util.MAGIC_NUMBER
            and int.from_bytes(header[4:8], "little") == 0  # timestamp-based pyc
            and int.from_bytes(header[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF
            and int.from_bytes(header[12:16], "little") == st.st_size & 0xFFFFFFFF
        )
        if not fresh:
            py_compile.compile(
                source,
                cfile=cache,
                doraise=True,
                invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP,
            )
    except (OSError, py_compile.PyCompileError):
        if force:  # a stale cache must not stand in for a source that does not compile
            try:
                os.remove(importlib.util.cache_from_source(source))
            except (OSError, ValueError):
                pass
        return False
    return True


def refresh_bytecode(module: str) -> None:
    """Compile a handler module (and its packages) as they are on disk now, before an
    upgrade starts workers of it: Python's cache check compares the source's mtime in
    whole seconds and its size, so an edit within the same second that keeps the size
    would otherwise run the old code."""
    for source in module_sources(module, sys.path):
        ensure_bytecode(source, force=True)


def precompile_child() -> bool:
    """Write ``_corral_child``'s bytecode caches if they are missing or stale.

    A worker that has to compile the runtime from source starts ~8 ms (70%) slower.
    Call once per parent process before spawning Python workers; returns False if a
    cache could not be written (e.g. a read-only install), which is harmless.
    """
    pkg = os.path.dirname(os.path.abspath(_corral_child.__file__))
    return all([ensure_bytecode(os.path.join(pkg, name)) for name in _CHILD_MODULES])


def module_sources(module: str, path: list[str]) -> list[str]:
    """The source files Python would execute to import ``module`` (its packages'
    ``__init__.py`` files, then the module), found on ``path`` without importing
    anything. Regular packages only; [] when not found (namespace, zip, extension)."""
    parts = module.split(".")
    for entry in path:
        base = entry or os.getcwd()
        found: list[str] = []
        for i, part in enumerate(parts):
            base = os.path.join(base, part)
            init = os.path.join(base, "__init__.py")
            if i < len(parts) - 1:
                if not os.path.isfile(init):
                    break
                found.append(init)
            elif os.path.isfile(base + ".py"):
                return [*found, base + ".py"]
            elif os.path.isfile(init):
                return [*found, init]
        if found and len(found) == len(parts) - 1:
            return []  # the package is here but not the module: Python would fail too
    return []
