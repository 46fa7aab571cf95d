"""What a handler module may use inside a corral worker. Standard library only.

``progress(fraction, text)`` reports how far ``init()`` or the running call has come;
the parent shows it in ``pool.workers()``, pool events, the demo and the exporter.
Outside a corral worker it does nothing, so handler modules stay testable alone.
"""

from _corral_child._runtime import progress

__all__ = ["progress"]
