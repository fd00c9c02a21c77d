"""Time of the flow map and the flow explorer's waterfall as senders create many services and
topics, and on flows of many hops.

For each edge count, fills a fresh store (tests/extreme_store.py, without its rows of extreme
times and hostile strings) with that many edges, each in every 10-second bucket of the last
`--buckets` buckets, and a flow of `--hops` hops, each 3 s after the one before (so every gap
between them is collapsed in the waterfall). Then times, several times, and prints the median
and the worst of:
  flow map query     dashboard/queries.py load_flow_map (15-minute window)
  flow map figure    charts.flow_map, serialised as Streamlit sends it
  waterfall query    load_flow of a flow of 200 hops (200 gaps), of --hops hops and of
                     --big-hops hops
  waterfall figure   build_waterfall, charts.waterfall, serialised

    .venv/bin/python bench/dashboard_extremes.py [--edges 100,400,2000,5000] [--hops 10000]
        [--big-hops 100000] [--buckets 90] [--repeat 5] [--timeout 120]

A call still running after --timeout seconds is stopped and shown as over it.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from base.settings import Settings
from dashboard import charts, queries, waterfall
from store.factory import open_store
from tests.extreme_store import LONG_FLOW, build_extreme_store

WINDOW_S = 900


class Stopped(Exception):
    """A call ran past the timeout."""


def _stop(signum: int, frame: object) -> None:
    raise Stopped


def measure(call: Callable[[], object], repeat: int, timeout_s: int) -> tuple[str, str]:
    """(median, worst) in ms of `repeat` calls, or '>timeout' when one ran past it."""
    times = []
    for _ in range(repeat):
        signal.alarm(timeout_s)
        started = time.perf_counter()
        try:
            call()
        except Stopped:
            return f">{timeout_s * 1000:,}", f">{timeout_s * 1000:,}"
        finally:
            signal.alarm(0)
        times.append((time.perf_counter() - started) * 1000)
    return f"{statistics.median(times):,.1f}", f"{max(times):,.1f}"


def flow_map_calls(store) -> dict[str, Callable[[], object]]:  # type: ignore[no-untyped-def]
    """The flow map's query and its figure (from one query's result)."""
    data = queries.load_flow_map(store, WINDOW_S, time.time_ns())
    return {
        "flow map query": lambda: queries.load_flow_map(store, WINDOW_S, time.time_ns()),
        "flow map figure": lambda: charts.flow_map(data.nodes, data.edges, data.statuses,
                                                   None).to_json(),
    }


def waterfall_calls(store, flow: str = LONG_FLOW  # type: ignore[no-untyped-def]
                    ) -> dict[str, Callable[[], object]]:
    """A flow's query and its waterfall figure (from one query's result)."""
    found = queries.load_flow(store, flow, time.time_ns())

    def figure() -> object:
        segments, breaks = waterfall.build_waterfall(found.hops)
        return charts.waterfall(segments, breaks).to_json()

    return {"waterfall query": lambda: queries.load_flow(store, flow, time.time_ns()),
            "waterfall figure": figure}


def open_filled(home: Path, edges: int, hops: int, buckets: int):  # type: ignore[no-untyped-def]
    """A read-only store of `edges` edges and a flow of `hops` hops."""
    settings = Settings.from_env({"FLOWSCOPE_HOME": str(home)})
    build_extreme_store(settings.collect.store, settings, edges=edges, hops=hops,
                        buckets=buckets, extreme_values=False)
    return open_store(settings, readonly=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", default="100,400,2000,5000")
    parser.add_argument("--hops", type=int, default=10_000)
    parser.add_argument("--big-hops", type=int, default=100_000,
                        help="hops of a flow of twice as many spans (0: not timed)")
    parser.add_argument("--buckets", type=int, default=90)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--timeout", type=int, default=120)
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, _stop)
    print(f"{'store':24} {'what':18} {'median ms':>11} {'max ms':>11}", flush=True)
    sizes = [int(n) for n in args.edges.split(",")]
    cases = [(f"{n:,} edges", n, 200, flow_map_calls) for n in sizes]
    cases += [(f"{hops:,}-hop flow", sizes[0], hops, waterfall_calls)
              for hops in (200, args.hops, args.big_hops) if hops]
    for label, edges, hops, calls_of in cases:
        with tempfile.TemporaryDirectory() as scratch:
            store = open_filled(Path(scratch), edges, hops, args.buckets)
            try:
                for name, call in calls_of(store).items():
                    median, worst = measure(call, args.repeat, args.timeout)
                    print(f"{label:24} {name:18} {median:>11} {worst:>11}", flush=True)
            finally:
                store.close()


if __name__ == "__main__":
    main()
