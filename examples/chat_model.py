"""The handler module of the model-server recipe (docs/cookbook/model-server.md).

``init()`` loads the "model" once per worker process; ``chat`` keeps each session's
history in the worker, which is why the server calls it with ``session=user``: the
history is only on the worker that served the session before. Standard library only.
"""

from __future__ import annotations

import os

_model: dict[str, str] = {}
_histories: dict[str, list[str]] = {}


def init() -> None:
    """Runs once per worker before it serves anything: load weights, warm caches here."""
    _model.update({"hello": "hi there", "bye": "see you", "weather": "sunny, as always"})


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
