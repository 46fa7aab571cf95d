"""corral side by side with the other Python process pools, in one run.

    python -m benchmarks.peers [--quick] [--rounds N] [--systems a,b] [--metrics a,b] [--update-docs]

Every measurement runs in a fresh interpreter (benchmarks/peers_metrics.py: one
subprocess per (system, metric, round)); systems take turns round by round (the order
rotates each round) and the report gives medians over rounds. Ratios to the floor are
taken within each round and then the median is reported. Writes
benchmarks/peers_results.json and the plots in docs/img/; ``--update-docs`` also
rewrites the generated block of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

from benchmarks.peers_systems import SYSTEMS

X = "\u00d7"  # multiplication sign
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "peers_results.json")
IMG = os.path.join(ROOT, "docs", "img")
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
BEGIN = "<!-- peers:generated:begin (benchmarks/peers.py --update-docs rewrites this block) -->"
END = "<!-- peers:generated:end -->"

ORDER = list(SYSTEMS)  # floor, corral, then the peers
PEERS = [s for s in ORDER if s != "floor" and not s.startswith("corral")]
METRICS = ["cold", "latency", "throughput", "echo", "crash", "cancel", "busy64", "ready"]

Result = dict[str, Any]
# (rounds full, rounds quick, params full, params quick) per metric
PLAN: dict[str, tuple[int, int, Result, Result]] = {
    "cold": (5, 1, {}, {}),
    "latency": (5, 1, {"n": 2000}, {"n": 300}),
    "throughput": (5, 1, {"n": 4000}, {"n": 800}),
    "echo": (5, 1, {"n": 150}, {"n": 20}),
    "crash": (3, 1, {}, {}),
    "cancel": (3, 1, {}, {}),
    "busy64": (3, 1, {"workers": 64}, {"workers": 16}),
    "ready": (3, 1, {"reps": 9}, {"reps": 3}),
}


#: ``--base DIR``: systems named "<system>@base" run against the corral in DIR/src (an
#: older checkout, e.g. a git worktree), so a change is measured before and after in
#: one run, taking turns with everything else.
BASE_SUFFIX = "@base"
_base_dir: str | None = None


def run_one(system: str, metric: str, params: Result, timeout: float = 180.0) -> Result:
    env = None
    if system.endswith(BASE_SUFFIX):
        assert _base_dir is not None, "--base DIR is needed for @base systems"
        system = system[: -len(BASE_SUFFIX)]
        env = {**os.environ, "PYTHONPATH": os.path.join(_base_dir, "src") + os.pathsep + ROOT}
    argv = [sys.executable, "-m", "benchmarks.peers_metrics", system, metric, json.dumps(params)]
    try:
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            parsed: Result = json.loads(line[len("RESULT ") :])
            return parsed
    return {"error": (proc.stderr or proc.stdout)[-2000:] or f"exit code {proc.returncode}"}


def machine() -> Result:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for dist in ("trio", "trio-parallel", "anyio", "pebble", "loky"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": versions,
        "loadavg_start": os.getloadavg()[0],
    }


def measure(systems: Sequence[str], metrics: Sequence[str], quick: bool, rounds: int | None) -> Result:
    raw: dict[str, dict[str, list[Result]]] = {s: {m: [] for m in metrics} for s in systems}
    plan: dict[str, tuple[int, Result]] = {}
    for m in metrics:
        full_rounds, quick_rounds, full_params, quick_params = PLAN[m]
        plan[m] = (rounds or (quick_rounds if quick else full_rounds), quick_params if quick else full_params)
    most = max(r for r, _ in plan.values())
    started = time.monotonic()
    for rnd in range(most):
        for metric in metrics:
            n_rounds, params = plan[metric]
            if rnd >= n_rounds:
                continue
            # start-to-READY is corral's alone (and its --base checkout's)
            targets = (
                [s for s in systems if s in ("corral", "corral" + BASE_SUFFIX)]
                if metric == "ready"
                else list(systems)
            )
            shift = rnd % len(targets)
            for system in targets[shift:] + targets[:shift]:
                if system not in raw:
                    continue
                result = run_one(system, metric, params)
                result["round"] = rnd
                raw[system][metric].append(result)
                flag = "  ERROR" if "error" in result else ""
                print(
                    f"[{time.monotonic() - started:6.1f}s] round {rnd + 1}/{n_rounds} {metric:<10} "
                    f"{system:<20}{flag} {_brief(result)}",
                    flush=True,
                )
    info = machine()
    info["loadavg_end"] = os.getloadavg()[0]
    info["elapsed_s"] = time.monotonic() - started
    info["quick"] = quick
    return {"machine": info, "raw": raw}


def _brief(result: Result) -> str:
    if "error" in result:
        return str(result["error"]).strip().splitlines()[-1][:150]
    parts = []
    for key, value in result.items():
        if key == "round":
            continue
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


# -- aggregation -------------------------------------------------------------------


def _ok(rows: list[Result]) -> list[Result]:
    return [r for r in rows if "error" not in r]


def med(rows: list[Result], key: str) -> float | None:
    """Median over rounds; None if most rounds have no value (e.g. never recovered)."""
    values = [r.get(key) for r in _ok(rows)]
    nums = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if not nums or len(nums) * 2 < len(values):
        return None
    return statistics.median(nums)


def mode(rows: list[Result], key: str) -> str:
    values = [str(r.get(key)) for r in _ok(rows) if key in r]
    if not values:
        return "?"
    (top, count), *_ = collections.Counter(values).most_common(1)
    return top if count == len(values) else f"{top} ({count}/{len(values)})"


def ratio(raw: dict[str, dict[str, list[Result]]], system: str, metric: str, key: str) -> float | None:
    """Median over rounds of system/floor, paired by round (same round = nearby in time)."""
    floor = {r["round"]: r.get(key) for r in _ok(raw.get("floor", {}).get(metric, []))}
    ratios = []
    for r in _ok(raw.get(system, {}).get(metric, [])):
        mine, base = r.get(key), floor.get(r["round"])
        if isinstance(mine, int | float) and isinstance(base, int | float) and base:
            ratios.append(mine / base)
    return statistics.median(ratios) if ratios else None


def _f(value: float | None, fmt: str, scale: float = 1.0) -> str:
    return "n/a" if value is None else format(value * scale, fmt)


def summarize(data: Result) -> Result:
    raw: dict[str, dict[str, list[Result]]] = data["raw"]
    rows: dict[str, Result] = {}
    for system, by_metric in raw.items():
        g = by_metric.get
        row: Result = {
            "cold_s": med(g("cold", []), "cold_s"),
            "p50_us": med(g("latency", []), "p50_us"),
            "p99_us": med(g("latency", []), "p99_us"),
            "calls_per_s": med(g("throughput", []), "calls_per_s"),
            "echo_mib_s": med(g("echo", []), "echo_mib_s"),
            "crash_gets": mode(g("crash", []), "caller_gets"),
            "crash_error_s": med(g("crash", []), "error_s"),
            "crash_recover_s": med(g("crash", []), "recover_s"),
            "crash_works_after": mode(g("crash", []), "works_after"),
            "cancel_return_ms": med(g("cancel", []), "return_ms"),
            "cancel_worker": mode(g("cancel", []), "worker"),
            "cancel_gone_ms": med(g("cancel", []), "gone_ms"),
            "busy64_s": med(g("busy64", []), "busy64_s"),
            "pss_mib": med(g("busy64", []), "pss_mib"),
            "processes": med(g("busy64", []), "processes"),
            "errors": sum(1 for rs in by_metric.values() for r in rs if "error" in r),
        }
        for metric, key in (
            ("cold", "cold_s"),
            ("latency", "p50_us"),
            ("latency", "p99_us"),
            ("throughput", "calls_per_s"),
            ("echo", "echo_mib_s"),
            ("busy64", "busy64_s"),
            ("busy64", "pss_mib"),
        ):
            row[f"x_{key}"] = ratio(raw, system, metric, key)
        rows[system] = row
    ready = raw.get("corral", {}).get("ready", [])
    ready_ratios = [r["ready_ms"] / r["python_c_pass_ms"] for r in _ok(ready) if r.get("python_c_pass_ms")]
    extra: Result = {
        "ready_ms": med(ready, "ready_ms"),
        "ready_nomodule_ms": med(ready, "ready_nomodule_ms"),
        "ready_forkserver_ms": med(ready, "ready_forkserver_ms"),
        "python_c_pass_ms": med(ready, "python_c_pass_ms"),
        "ready_ratio": statistics.median(ready_ratios) if ready_ratios else None,
        "ready_nomodule_ratio": statistics.median(
            [r["ready_nomodule_ms"] / r["python_c_pass_ms"] for r in _ok(ready) if r.get("python_c_pass_ms")]
        )
        if _ok(ready)
        else None,
    }
    return {"rows": rows, "ready": extra}


def _cancel_cell(row: Result) -> str:
    worker = str(row["cancel_worker"])
    if worker.startswith("killed") and row["cancel_gone_ms"] is not None:
        return f"{worker} after {row['cancel_gone_ms']:.0f} ms"
    return worker


def _gets_cell(row: Result) -> str:
    gets = str(row["crash_gets"])
    if gets == "hangs" or row["crash_error_s"] is None:
        return "hangs (gave up after 3 s)" if gets == "hangs" else gets
    return f"{gets} after {row['crash_error_s'] * 1e3:.0f} ms"


def _crash_cell(row: Result) -> str:
    if row["crash_recover_s"] is None:
        return "never (pool broken)"
    works = "" if row["crash_works_after"] == "True" else f"; works after: {row['crash_works_after']}"
    return f"{row['crash_recover_s'] * 1e3:.0f} ms{works}"


def _present(rows: Result) -> list[str]:
    """The systems measured, in ORDER, each "@base" variant right after its system."""
    return [name for s in ORDER for name in (s, s + BASE_SUFFIX) if name in rows]


def table(summary: Result) -> str:
    rows: dict[str, Result] = summary["rows"]
    out = [
        "| system | cold start s | no-op p50 µs | no-op p99 µs | calls/s, 8 callers | 1 MiB echo MiB/s "
        "| crash: caller gets | crash: serves again after | cancel: caller back in | "
        f"cancelled call's worker | 64 {X} 0.2 s busy, s | 64 workers PSS MiB |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---|---:|---:|",
    ]
    for system in _present(rows):
        r = rows[system]
        name = "**corral**" if system == "corral" else ("floor (bare pipes)" if system == "floor" else system)
        out.append(
            f"| {name} | {_f(r['cold_s'], '.3f')} | {_f(r['p50_us'], '.0f')} | {_f(r['p99_us'], '.0f')} "
            f"| {_f(r['calls_per_s'], ',.0f')} | {_f(r['echo_mib_s'], '.0f')} | {_gets_cell(r)} "
            f"| {_crash_cell(r)} | {_f(r['cancel_return_ms'], '.1f')} ms | {_cancel_cell(r)} "
            f"| {_f(r['busy64_s'], '.2f')} | {_f(r['pss_mib'], '.0f')} |"
        )
    return "\n".join(out)


def ratio_table(summary: Result) -> str:
    rows: dict[str, Result] = summary["rows"]
    out = [
        "| system | cold start | no-op p50 | no-op p99 | calls/s | 1 MiB echo | 64 busy time | 64 PSS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for system in _present(rows):
        if system == "floor":
            continue
        r = rows[system]
        name = "**corral**" if system == "corral" else system
        cells = [
            _f(r[f"x_{k}"], ".2f") + f"{X}"
            for k in ("cold_s", "p50_us", "p99_us", "calls_per_s", "echo_mib_s", "busy64_s", "pss_mib")
        ]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def targets(summary: Result) -> list[tuple[str, str, bool | None]]:
    rows: dict[str, Result] = summary["rows"]
    c = rows.get("corral")
    if c is None:
        return []
    res: list[tuple[str, str, bool | None]] = []

    x = c["x_p50_us"]
    res.append(
        (
            f"no-op p50 ≤ 1.1{X} floor",
            f"{_f(x, '.2f')}{X} ({_f(c['p50_us'], '.0f')} µs)",
            None if x is None else x <= 1.1,
        )
    )
    x = c["x_p99_us"]
    res.append(
        (
            f"no-op p99 ≤ 1.2{X} floor",
            f"{_f(x, '.2f')}{X} ({_f(c['p99_us'], '.0f')} µs)",
            None if x is None else x <= 1.2,
        )
    )
    peers = {s: rows[s]["calls_per_s"] for s in PEERS if s in rows and rows[s]["calls_per_s"]}
    best = max(peers, key=lambda s: peers[s]) if peers else None
    if best is not None and c["calls_per_s"] is not None:
        res.append(
            (
                f"throughput ≥ 2{X} the best peer",
                f"{c['calls_per_s']:,.0f}/s vs best peer {best} {peers[best]:,.0f}/s "
                f"({c['calls_per_s'] / peers[best]:.2f}{X})",
                c["calls_per_s"] >= 2 * peers[best],
            )
        )
    x = c["x_calls_per_s"]
    res.append(
        (
            f"throughput ≥ 1.0{X} floor (stretch 1.5{X})",
            f"{_f(x, '.2f')}{X} ({_f(c['calls_per_s'], ',.0f')}/s)",
            None if x is None else x >= 1.0,
        )
    )
    one = rows.get("corral (pipeline=1)")
    if one is not None:
        res.append(
            (
                "for comparison: `pipeline=1` (one call at a time, the old default)",
                f"{_f(one['x_calls_per_s'], '.2f')}{X} floor ({_f(one['calls_per_s'], ',.0f')}/s)",
                None,
            )
        )
    x = c["x_echo_mib_s"]
    res.append(
        (
            f"1 MiB echo ≥ 1.0{X} floor",
            f"{_f(x, '.2f')}{X} ({_f(c['echo_mib_s'], '.0f')} MiB/s)",
            None if x is None else x >= 1.0,
        )
    )
    x = c["x_cold_s"]
    res.append(
        (
            f"cold start ≤ 1.5{X} floor",
            f"{_f(x, '.2f')}{X} ({_f(c['cold_s'], '.3f')} s)",
            None if x is None else x <= 1.5,
        )
    )
    rec = c["crash_recover_s"]
    res.append(
        (
            "replacement serving ≤ 50 ms after a crash",
            f"{_f(rec, '.0f', 1e3)} ms",
            None if rec is None else rec <= 0.050,
        )
    )
    ret = c["cancel_return_ms"]
    res.append(
        (
            "cancelled call returns ≤ 10 ms",
            f"{_f(ret, '.2f')} ms (worker: {c['cancel_worker']})",
            None if ret is None else ret <= 10,
        )
    )
    ready = summary["ready"]
    rr = ready["ready_ratio"]
    res.append(
        (
            f"worker start-to-READY ≤ 1.2{X} `python -c pass`",
            f"{_f(rr, '.2f')}{X} ({_f(ready['ready_ms'], '.1f')} ms vs "
            f"{_f(ready['python_c_pass_ms'], '.1f')} ms; "
            f"no handler module: {_f(ready['ready_nomodule_ratio'], '.2f')}{X}; "
            f"forkserver: {_f(ready.get('ready_forkserver_ms'), '.1f')} ms)",
            None if rr is None else rr <= 1.2,
        )
    )
    return res


def targets_table(summary: Result) -> str:
    out = ["| target | corral, this run | met? |", "|---|---|---|"]
    for name, figure, ok in targets(summary):
        out.append(f"| {name} | {figure} | {'n/a' if ok is None else ('**met**' if ok else '**missed**')} |")
    return "\n".join(out)


def machine_text(info: Result) -> str:
    v = info["versions"]
    return (
        f"{info['date']}; {info['cpu']}, {info['cores']} cores; Linux {info['kernel']}; "
        f"Python {info['python']}; trio {v['trio']}, trio-parallel {v['trio-parallel']}, "
        f"anyio {v['anyio']}, pebble {v['pebble']}, loky {v['loky']}. "
        f"Load average {info['loadavg_start']:.1f} at the start, {info['loadavg_end']:.1f} at the end; "
        f"the harness took {info['elapsed_s'] / 60:.1f} min."
    )


# -- plots -------------------------------------------------------------------------


def _colors(names: list[str]) -> list[str]:
    return ["#d62728" if n.startswith("corral") else "#7f7f7f" if n == "floor" else "#1f77b4" for n in names]


def plot(summary: Result, info: Result) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: dict[str, Result] = summary["rows"]
    os.makedirs(IMG, exist_ok=True)
    written = []
    stamp = f"{info['date']} · {info['cores']} cores · Python {info['python']} · medians over rounds"

    def bars(ax: Any, key: str, title: str, fmt: str, log: bool = False) -> None:
        names = [s for s in ORDER if s in rows and rows[s][key] is not None]
        values = [float(rows[s][key]) for s in names]
        ax.barh(names[::-1], values[::-1], color=_colors(names)[::-1])
        for i, value in enumerate(values[::-1]):
            ax.text(value, i, " " + format(value, fmt), va="center", fontsize=8)
        ax.set_title(title, fontsize=10)
        if log:
            ax.set_xscale("log")
        ax.margins(x=0.25)

    def save(fig: Any, name: str) -> None:
        fig.suptitle(stamp, fontsize=8, y=0.02)
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        path = os.path.join(IMG, name)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    bars(axes[0], "p50_us", "warm no-op round trip, p50 (µs, lower is better)", ".0f")
    bars(axes[1], "p99_us", "warm no-op round trip, p99 (µs, log, lower is better)", ".0f", log=True)
    save(fig, "peers-latency.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    bars(axes[0], "calls_per_s", "no-op calls/s, 8 callers on 2 workers (higher is better)", ",.0f")
    bars(axes[1], "echo_mib_s", "1 MiB echo, MiB/s, one caller (higher is better)", ".0f")
    save(fig, "peers-throughput.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    bars(axes[0], "cold_s", "cold start: 2 workers to the first result (s, log)", ".3f", log=True)
    bars(axes[1], "busy64_s", f"64 workers, 64 {X} 0.2 s sleeps, from cold (s, log)", ".2f", log=True)
    save(fig, "peers-start.png")
    return written


# -- docs --------------------------------------------------------------------------


def generated_block(summary: Result, info: Result) -> str:
    return "\n".join(
        [
            BEGIN,
            "",
            f"Run: {machine_text(info)}",
            "",
            table(summary),
            "",
            "Ratios to the floor (median over rounds of the per-round ratio; for times and PSS "
            "lower is better, for calls/s and MiB/s higher is better):",
            "",
            ratio_table(summary),
            "",
            "corral against its targets (docs/DESIGN §5):",
            "",
            targets_table(summary),
            "",
            "![latency](img/peers-latency.png)",
            "",
            "![throughput](img/peers-throughput.png)",
            "",
            "![start](img/peers-start.png)",
            "",
            END,
        ]
    )


def update_docs(block: str) -> bool:
    try:
        with open(DOC) as f:
            text = f.read()
    except OSError:
        return False
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        return False
    with open(DOC, "w") as f:
        f.write(text[:start] + block + text[end + len(END) :])
    return True


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round, fewer calls: a smoke test")
    parser.add_argument("--rounds", type=int, default=None, help="rounds for every metric")
    parser.add_argument("--systems", default=",".join(ORDER))
    parser.add_argument("--metrics", default=",".join(METRICS))
    parser.add_argument("--out", default=RESULTS, help="raw results (JSON)")
    parser.add_argument("--report", default=None, help="re-render plots/tables from a results JSON")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--update-docs", action="store_true", help="rewrite the generated block of the doc")
    parser.add_argument("--base", default=None, help="a checkout to measure as '<system>@base'")
    args = parser.parse_args(argv)
    if args.report:
        with open(args.report) as f:
            data = json.load(f)
    else:
        systems = [s for s in args.systems.split(",") if s]
        metrics = [m for m in args.metrics.split(",") if m]
        global _base_dir
        _base_dir = args.base
        known = set(SYSTEMS) | {s + BASE_SUFFIX for s in SYSTEMS if s.startswith("corral")}
        unknown = sorted(set(systems) - known) + sorted(set(metrics) - set(METRICS))
        if unknown:
            parser.error(f"unknown: {', '.join(unknown)}")
        data = measure(systems, metrics, args.quick, args.rounds)
        with open(args.out, "w") as f:
            json.dump(data, f, indent=1)
    summary = summarize(data)
    info = data["machine"]
    show: Callable[[str], None] = print
    show(f"\n{machine_text(info)}\n")
    show(table(summary))
    show("\nratios to the floor:\n" + ratio_table(summary))
    show("\ncorral targets:\n" + targets_table(summary))
    if not args.no_plots:
        for path in plot(summary, info):
            show(f"wrote {os.path.relpath(path, ROOT)}")
    if args.update_docs:
        if info.get("quick"):
            show("--quick run: docs/benchmarks.md left alone")
        elif update_docs(generated_block(summary, info)):
            show(f"updated the generated block of {os.path.relpath(DOC, ROOT)}")
        else:
            show(f"no generated block in {os.path.relpath(DOC, ROOT)}; nothing rewritten")


if __name__ == "__main__":
    main()
