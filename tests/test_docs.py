"""Every example in the docs runs: README.md, docs/*.md and examples/*.py.

Each fenced ```python block is a complete program, run in a fresh interpreter from the
repository root (so ``"examples.handlers"`` imports in the workers too) and must exit 0.
A block whose first line is ``# not run`` is a fragment and is skipped. A block that
ends with a comment block starting ``# prints:`` must print exactly those lines.

A block whose first line is ``# save as NAME`` is a file the reader saves (a handler
module, say): it is not run itself; every runnable block after it on the same page runs
in a fresh folder holding those files, from that folder, as a reader would after pasting
them. A block whose first line is ``# run with pytest`` is a test file: it runs under
``python -m pytest`` and must pass.

The first pages a reader meets (FIRST_DOCS) must not need the repository: their blocks
run without it on ``sys.path`` (``src`` only), and tests/test_wheel.py runs them again
against an installed wheel, outside the checkout.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = (
    "README.md",
    "docs/index.md",
    "docs/getting-started.md",
    "docs/supervision.md",
    "docs/pool.md",
    "docs/testing.md",
    "docs/telemetry.md",
    "docs/procman.md",
    "docs/cookbook/model-server.md",
    "docs/cookbook/token-streaming.md",
    "docs/cookbook/cpu-bound.md",
    "docs/cookbook/node-worker.md",
    "docs/cookbook/embedded-supervisor.md",
    "docs/cookbook/property-tests.md",
    "docs/cookbook/systemd.md",
)
FIRST_DOCS = ("README.md", "docs/index.md", "docs/getting-started.md")
# Pages whose examples other tests run (or that have none): their links are checked here.
LINKED_ONLY = (
    "docs/protocol.md",
    "docs/cookbook/index.md",
    "docs/reference.md",
    "docs/cookbook/web-service.md",  # tests/test_recipe_web_service.py runs it
)
SCRIPTS = ("examples.supervision_tree", "examples.pool_quickstart")
TIMEOUT = 30.0

_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_SAVE_AS = re.compile(r"# save as ([\w./-]+\.\w+)")
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@attrs.frozen
class Block:
    doc: str
    line: int  # of the opening fence, 1-based
    code: str

    @property
    def name(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def first_line(self) -> str:
        return self.code.lstrip().split("\n", 1)[0].strip()

    @property
    def skipped(self) -> bool:
        return self.first_line.startswith("# not run")

    @property
    def saved_as(self) -> str | None:
        """The file name of a ``# save as NAME`` block, else None."""
        m = _SAVE_AS.match(self.first_line)
        return m.group(1) if m else None

    @property
    def runnable(self) -> bool:
        return not self.skipped and self.saved_as is None

    @property
    def pytest(self) -> bool:
        return self.first_line.startswith("# run with pytest")

    def expected_output(self) -> list[str] | None:
        """The lines of a trailing ``# prints:`` comment block, if there is one."""
        lines = self.code.rstrip().splitlines()
        for i in range(len(lines) - 1, -1, -1):
            line = lines[i].strip()
            if line == "# prints:":
                return [_uncomment(x) for x in lines[i + 1 :]]
            if not line.startswith("#"):
                return None
        return None


def _uncomment(line: str) -> str:
    line = line.strip()
    return line[2:] if line.startswith("# ") else line[1:]


def blocks(doc: str) -> list[Block]:
    text = (ROOT / doc).read_text(encoding="utf-8")
    return [Block(doc, text.count("\n", 0, m.start()) + 1, m.group(1)) for m in _FENCE.finditer(text)]


ALL_BLOCKS = [b for doc in DOCS for b in blocks(doc)]


def saved_files(block: Block) -> dict[str, str]:
    """The ``# save as`` files of ``block``'s page that come before it: name -> text."""
    return {b.saved_as: b.code for b in blocks(block.doc) if b.saved_as and b.line < block.line}


def _env(*, repository: bool = True) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT), str(ROOT / "src")] if repository else [str(ROOT / "src")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.pop("PYTHONSTARTUP", None)
    return env


def _run(argv: list[str], what: str, *, cwd: Path = ROOT, repository: bool = True) -> str:
    try:
        proc = subprocess.run(
            argv,
            cwd=cwd,
            env=_env(repository=repository),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{what} did not finish within {TIMEOUT} s; output so far:\n{exc.stdout!r}")
    if proc.returncode != 0:
        pytest.fail(
            f"{what} exited with code {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc.stdout


def test_every_doc_has_examples() -> None:
    for doc in DOCS:
        assert [b for b in ALL_BLOCKS if b.doc == doc and b.runnable], f"{doc} has no runnable example"


def write_example(block: Block, folder: Path) -> Path:
    """Lay out ``block`` as a reader would: its page's saved files, then the script."""
    for name, text in saved_files(block).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    prefix = "test_" if block.pytest else ""
    script = folder / (prefix + re.sub(r"\W", "_", block.name) + ".py")
    script.write_text(block.code, encoding="utf-8")
    return script


def command(block: Block, script: Path, python: str = sys.executable) -> list[str]:
    if block.pytest:  # -p no:cacheprovider: leave nothing behind in the reader's folder
        return [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(script)]
    return [python, str(script)]


def check_output(block: Block, stdout: str) -> None:
    expected = block.expected_output()
    if expected is not None:
        assert [line.rstrip() for line in stdout.rstrip("\n").splitlines()] == expected, block.name


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[b.name for b in ALL_BLOCKS])
def test_doc_example_runs(block: Block, tmp_path: Path) -> None:
    if block.skipped:
        pytest.skip("marked '# not run'")
    if block.saved_as:
        pytest.skip(f"a file to save ({block.saved_as}): the blocks after it run with it")
    script = write_example(block, tmp_path)
    # The first pages, a page with files to save and a test file run in their own folder,
    # as in a reader's empty one; the others from the repository root, which their paths
    # (examples/...) are relative to.
    first = block.doc in FIRST_DOCS
    cwd = tmp_path if first or block.pytest or saved_files(block) else ROOT
    stdout = _run(command(block, script), f"the example at {block.name}", cwd=cwd, repository=not first)
    check_output(block, stdout)


def test_first_pages_need_no_repository() -> None:
    """What a pip user reads first runs without this repository's examples/ package."""
    for doc in FIRST_DOCS:
        for b in blocks(doc):
            assert "examples." not in b.code and "examples/" not in b.code, b.name


@pytest.mark.parametrize("module", SCRIPTS)
def test_example_script_runs(module: str) -> None:
    _run([sys.executable, "-m", module], f"python -m {module}")


@pytest.mark.parametrize("doc", [*DOCS, *LINKED_ONLY])
def test_relative_links_resolve(doc: str) -> None:
    text = (ROOT / doc).read_text(encoding="utf-8")
    base = (ROOT / doc).parent
    broken = [
        target
        for target in _LINK.findall(text)
        if "://" not in target and not target.startswith("mailto:") and not (base / target).exists()
    ]
    assert not broken, f"{doc} links to missing files: {broken}"
