"""A pip user's first hour, outside this repository.

Build a wheel from the checkout, install it (not editable) in a fresh virtual environment
outside the checkout, and there, in an empty folder: run the examples of the pages a reader
meets first (README.md, docs/index.md, docs/getting-started.md) as pasted, the command line
(`corral demo`, `corral run --check`), and a later page's example with the one handler
module it needs copied next to it, as docs/index.md tells a reader to do.

Dependencies come from the package index (pip's cache makes that quick). The whole module
takes about 15 s; each step is bounded by a subprocess timeout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_docs import FIRST_DOCS, ROOT, Block, blocks, check_output, command, write_example

FIRST_BLOCKS = [b for doc in FIRST_DOCS for b in blocks(doc) if b.runnable]


def _clean_env() -> dict[str, str]:
    """The environment of a shell outside the checkout: no PYTHONPATH, no virtualenv of ours."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP", "VIRTUAL_ENV")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _run(argv: list[str], cwd: Path, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            argv, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{argv} did not finish within {timeout} s; output so far:\n{exc.stdout!r}")
    if proc.returncode != 0:
        output = f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        pytest.fail(f"{argv} exited with {proc.returncode}\n{output}")
    return proc


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The bin/ folder of a fresh virtual environment with corral installed from a wheel."""
    work = tmp_path_factory.mktemp("wheel")
    assert not work.resolve().is_relative_to(ROOT), "the test must run outside the checkout"
    # Build from a copy: an in-tree build leaves build/ and *.egg-info in the checkout.
    source = work / "source"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(work / "dist"), str(source)], work)
    [wheel] = (work / "dist").glob("corral-*.whl")
    # --without-pip and `pip --python`: the venv gets no pip of its own, which saves seconds.
    _run([sys.executable, "-m", "venv", "--without-pip", str(work / "venv")], work)
    bin_dir = work / "venv" / "bin"
    _run([*pip, "--python", str(bin_dir / "python"), "install", "--quiet", str(wheel)], work)
    yield bin_dir


@pytest.fixture
def empty_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    return folder


def test_corral_is_the_installed_wheel(venv: Path, empty_folder: Path) -> None:
    code = "import corral, _corral_child.demo; print(corral.__file__)"
    out = _run([str(venv / "python"), "-c", code], empty_folder).stdout.strip()
    assert Path(out).is_relative_to(venv.parent), out  # not the checkout's src/


@pytest.mark.parametrize("block", FIRST_BLOCKS, ids=[b.name for b in FIRST_BLOCKS])
def test_first_examples_run_as_pasted(venv: Path, empty_folder: Path, block: Block) -> None:
    script = write_example(block, empty_folder)
    proc = _run(command(block, script, python=str(venv / "python")), empty_folder, timeout=60)
    check_output(block, proc.stdout)


def test_corral_demo_help_and_a_short_demo(venv: Path, empty_folder: Path) -> None:
    assert "--seconds" in _run([str(venv / "corral"), "demo", "--help"], empty_folder).stdout
    out = _run([str(venv / "corral"), "demo", "--seconds", "3"], empty_folder, timeout=60).stdout
    assert "summary" in out and "a handler calls os._exit" in out, out  # plain output: not a terminal


def test_corral_run_check(venv: Path, empty_folder: Path) -> None:
    config = empty_folder / "app.toml"
    config.write_text(
        '[supervisor]\nstrategy = "rest_for_one"\n\n'
        '[[child]]\nid = "db"\ncommand = ["sleep", "60"]\n\n'
        '[[child]]\nid = "api"\ncommand = ["sleep", "60"]\n',
        encoding="utf-8",
    )
    out = _run([str(venv / "corral"), "run", "--check", str(config)], empty_folder).stdout
    assert "db" in out and "api" in out, out


def test_a_later_page_runs_with_examples_handlers_copied(venv: Path, empty_folder: Path) -> None:
    """docs/index.md: save examples/handlers.py in your folder and the later pages run there."""
    (empty_folder / "examples").mkdir()
    shutil.copy(ROOT / "examples" / "handlers.py", empty_folder / "examples" / "handlers.py")
    [block] = [b for b in blocks("docs/telemetry.md") if "observe_calls" in b.code and b.runnable]
    script = write_example(block, empty_folder)
    proc = _run(command(block, script, python=str(venv / "python")), empty_folder, timeout=60)
    check_output(block, proc.stdout)
