"""corral's child-side runtime (standard library only; see docs/protocol.md).

This package is deliberately *not* inside ``corral``: importing ``corral`` pulls in
trio and attrs, and a worker process must start fast and stay free of them.
"""
