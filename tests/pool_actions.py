"""Random call plans shared by the pool fuzz tests (plain and pipelined)."""

from __future__ import annotations

from hypothesis import strategies as st

#: One step of a caller's plan: a good call, a handler error, a crash (exit code), a
#: cancellation after some seconds, or a request timeout.
ACTIONS = st.one_of(
    st.tuples(st.just("echo"), st.integers()),
    st.tuples(st.just("error"), st.text(alphabet="ab Z-\u00e9\u2713\U0001f600", max_size=20)),
    st.tuples(st.just("crash"), st.sampled_from([0, 1, 7])),
    st.tuples(st.just("cancel"), st.floats(0.0, 0.03)),
    st.tuples(st.just("timeout"), st.just(0.05)),
)
