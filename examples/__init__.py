"""Runnable examples for corral (tested by tests/test_docs.py).

A package so that ``"examples.handlers"`` imports from the repository root: run the
scripts as ``python -m examples.pool_quickstart`` from there.
"""
