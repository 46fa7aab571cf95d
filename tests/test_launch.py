"""Launchers: the handler module's bytecode is written once, in the parent."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from corral.workers._protocol import ensure_bytecode, module_sources


def test_module_sources_finds_packages_then_module_without_importing(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg_for_sources" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "pkg_for_sources" / "__init__.py").write_text("raise RuntimeError('imported!')\n")
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text("X = 1\n")
    found = module_sources("pkg_for_sources.sub.mod", [str(tmp_path)])
    assert found == [
        str(tmp_path / "pkg_for_sources" / "__init__.py"),
        str(pkg / "__init__.py"),
        str(pkg / "mod.py"),
    ]
    assert "pkg_for_sources" not in sys.modules
    assert module_sources("pkg_for_sources.sub.missing", [str(tmp_path)]) == []
    assert module_sources("no_such_top_level_module_xyz", [str(tmp_path)]) == []


def test_ensure_bytecode_writes_a_fresh_cache_once(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("Y = 2\n")
    cache = Path(importlib.util.cache_from_source(str(source)))
    assert ensure_bytecode(str(source)) and cache.exists()
    mtime = cache.stat().st_mtime_ns
    assert ensure_bytecode(str(source))
    assert cache.stat().st_mtime_ns == mtime  # fresh: not rewritten
    os.utime(source, (1, 1))  # stale: rewritten
    assert ensure_bytecode(str(source)) and cache.stat().st_mtime_ns != mtime
