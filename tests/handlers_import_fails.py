"""A handler module whose import fails (tests/test_forkserver.py)."""

raise ImportError("this module refuses to be imported")
