"""CPU-bound functions for ``pool.run_sync`` (docs/cookbook/cpu-bound.md).

``run_sync`` pickles the function *by reference* (module and name), so it must live in a
module the worker can import, like this one: not in ``__main__``, not a lambda, not a
nested function. Arguments and results are pickled by value.
"""

from __future__ import annotations

import hashlib
import math


def count_primes(lo: int, hi: int) -> int:
    """How many primes in ``[lo, hi)``: pure Python, holds the GIL the whole time."""
    return sum(1 for n in range(max(lo, 2), hi) if all(n % d for d in range(2, math.isqrt(n) + 1)))


def stretch_key(password: str, rounds: int) -> str:
    """A deliberately slow key derivation (hashlib releases the GIL only per call)."""
    return hashlib.pbkdf2_hmac("sha256", password.encode(), b"corral", rounds).hex()[:16]
