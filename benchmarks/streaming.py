"""Streaming against one reply: the same bytes as chunks of a stream, or in one reply.

    python -m benchmarks.streaming [--repeat 5]

Two shapes, each moved both ways on one real worker (pickle codec):

- 10,000 chunks of 16 bytes: ``pool.stream("chunks", ...)`` against one reply holding
  the list of 10,000 16-byte ``bytes`` (what a token stream costs per item);
- 100 chunks of 1 MiB: the stream against one reply of the 100 MiB ``bytes``
  (``max_frame`` raised to fit it): what large results cost when streamed.

Prints the median wall time of ``--repeat`` runs per variant and the ratio
stream / one reply, for each ``stream_window`` given.
"""

from __future__ import annotations

import argparse
import statistics
import time

import trio

import corral

SHAPES = [(10_000, 16), (100, 1 << 20)]


async def measure(repeat: int, windows: list[int]) -> list[tuple[str, float, float]]:
    rows: list[tuple[str, float, float]] = []
    for window in windows:
        async with corral.open_pool(
            "benchmarks.handlers", size=1, stream_window=window, max_frame=256 << 20
        ) as pool:
            for n, size in SHAPES:
                streamed: list[float] = []
                single: list[float] = []
                one_reply = "all_chunks" if size < 1024 else "blob"
                for _ in range(repeat):
                    began = time.perf_counter()
                    got = 0
                    async with pool.stream("chunks", n, size) as chunks:
                        async for chunk in chunks:
                            got += len(chunk)
                    streamed.append(time.perf_counter() - began)
                    assert got == n * size
                    began = time.perf_counter()
                    result = await pool.call(one_reply, n, size)
                    single.append(time.perf_counter() - began)
                    assert (len(result) if one_reply == "blob" else len(result) * size) == n * size
                rows.append(
                    (
                        f"{n:,} x {size:,} B, window {window}",
                        statistics.median(streamed),
                        statistics.median(single),
                    )
                )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--windows", type=int, nargs="+", default=[8, 64])
    args = parser.parse_args(argv)
    rows = trio.run(measure, args.repeat, args.windows)
    print(f"{'shape':34} {'stream':>10} {'one reply':>10} {'ratio':>7}")
    for name, streamed, single in rows:
        print(f"{name:34} {streamed * 1e3:8.1f}ms {single * 1e3:8.1f}ms {streamed / single:7.2f}")


if __name__ == "__main__":
    main()
