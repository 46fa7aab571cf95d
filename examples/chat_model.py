"""The handler module of the model-server recipe (docs/cookbook/model-server.md).

``init()`` loads the "model" once per worker process; ``chat`` keeps each session's
history in the worker, which is why the server calls it with ``session=user``: the
history is only on the worker that served the session before. Standard library only.
"""

from __future__ import annotations

import os
import time

from corral_child import progress

TYPE_CHECKING = False  # typing's, without importing typing
if TYPE_CHECKING:  # collections.abc costs a worker ~3 ms at start-up
    from collections.abc import Iterator

_model: dict[str, str] = {}
_histories: dict[str, list[str]] = {}


def init() -> None:
    """Runs once per worker before it serves anything: load weights, warm caches here."""
    progress(0.0, "loading weights")  # pool.workers() and the events show how far it got
    _model.update({"hello": "hi there", "bye": "see you", "weather": "sunny, as always"})
    progress(1.0, "model ready")


_generations = {"finished": 0, "stopped early": 0}


def generate(prompt: str, max_tokens: int = 20) -> Iterator[str]:
    """Token by token (docs/cookbook/token-streaming.md): a stream, ``pool.stream``."""
    words = [w.strip("?!.,") for w in prompt.lower().split()] or ["..."]
    produced = 0
    try:
        while produced < max_tokens:
            time.sleep(0.005)  # one forward pass
            yield words[produced % len(words)] if produced < len(words) else "la"
            produced += 1
    finally:  # runs however the stream ends: the caller left, or was cancelled
        _generations["finished" if produced == max_tokens else "stopped early"] += 1


def generations() -> dict[str, int]:
    """How this worker's generations ended."""
    return dict(_generations)


def chat(user: str, text: str) -> str:
    """Answer ``text`` in ``user``'s conversation; the reply knows the conversation so far."""
    history = _histories.setdefault(user, [])
    history.append(text)
    words = [w.strip("?!.,") for w in text.lower().split()]
    answer = next((_model[w] for w in words if w in _model), "tell me more")
    return f"{answer} (turn {len(history)})"


def forget(user: str) -> bool:
    """Drop a finished conversation; True if there was one on this worker."""
    return _histories.pop(user, None) is not None


def crash() -> None:
    """Simulate the model's process dying (a segfault in a C extension, the OOM killer)."""
    os._exit(1)
