"""open_pool is typed: mypy --strict catches a misspelt option in a user's program."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROGRAM = """
import trio
import corral


async def main() -> None:
    async with corral.open_pool("myapp.handlers", size=2, chekout_timeout=5.0) as pool:
        result: int = await pool.call("add", 1, 2)
        print(result)


trio.run(main)
"""


def test_mypy_strict_catches_a_misspelt_open_pool_option(tmp_path: Path) -> None:
    program = tmp_path / "user_program.py"
    program.write_text(PROGRAM)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", str(program)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert 'Unexpected keyword argument "chekout_timeout" for "open_pool"' in result.stdout, result.stdout
    assert result.stdout.count("error:") == 1, result.stdout  # nothing else is wrong
