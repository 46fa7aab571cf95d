"""run_sync of a function defined in the main script works where the peers' does
(multiprocessing's spawn, ProcessPoolExecutor, trio-parallel): the worker loads the
script as ``__mp_main__``, so its ``if __name__ == "__main__":`` block does not run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
sys.path.insert(0, {root!r})
import trio, corral

def square(x):
    return x * x

async def main():
    async with corral.open_pool(None, size=1) as pool:
        print(await pool.run_sync(square, 7))
        print(await pool.run_sync(square, 8))

{guard}
"""


def _run(tmp_path: Path, guard: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "app.py"
    script.write_text(SCRIPT.format(root=str(ROOT), guard=guard))
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )


def test_run_sync_of_a_function_of_the_main_script(tmp_path: Path) -> None:
    result = _run(tmp_path, 'if __name__ == "__main__":\n    trio.run(main)')
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["49", "64"]


def test_an_unguarded_main_script_fails_the_call_and_says_why(tmp_path: Path) -> None:
    result = _run(tmp_path, "trio.run(main)")
    assert result.returncode != 0
    assert "RemoteError" in result.stderr or "DecodeError" in result.stderr, result.stderr[-3000:]
    assert 'if __name__ == \\\\"__main__\\\\"' in result.stderr or "__name__" in result.stderr
