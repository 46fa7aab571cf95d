"""Every example in the docs runs: README.md, docs/*.md and examples/*.py.

Each fenced ```python block is a complete program, run in a fresh interpreter from the
repository root (so ``"examples.handlers"`` imports in the workers too) and must exit 0.
A block whose first line is ``# not run`` is a fragment and is skipped. A block that
ends with a comment block starting ``# prints:`` must print exactly those lines.
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
    "docs/cookbook/model-server.md",
    "docs/cookbook/cpu-bound.md",
    "docs/cookbook/node-worker.md",
    "docs/cookbook/embedded-supervisor.md",
    "docs/cookbook/property-tests.md",
    "docs/cookbook/systemd.md",
)
LINKED_ONLY = ("docs/protocol.md", "docs/cookbook/index.md", "docs/reference.md")
SCRIPTS = ("examples.supervision_tree", "examples.pool_quickstart")
TIMEOUT = 30.0

_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
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
    def skipped(self) -> bool:
        return self.code.lstrip().startswith("# not run")

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


def _env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT), str(ROOT / "src")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.pop("PYTHONSTARTUP", None)
    return env


def _run(argv: list[str], what: str) -> str:
    try:
        proc = subprocess.run(
            argv, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT, check=False
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
        assert [b for b in ALL_BLOCKS if b.doc == doc and not b.skipped], f"{doc} has no runnable example"


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[b.name for b in ALL_BLOCKS])
def test_doc_example_runs(block: Block, tmp_path: Path) -> None:
    if block.skipped:
        pytest.skip("marked '# not run'")
    script = tmp_path / (re.sub(r"\W", "_", block.name) + ".py")
    script.write_text(block.code, encoding="utf-8")
    stdout = _run([sys.executable, str(script)], f"the example at {block.name}")
    expected = block.expected_output()
    if expected is not None:
        assert [line.rstrip() for line in stdout.rstrip("\n").splitlines()] == expected, block.name


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
