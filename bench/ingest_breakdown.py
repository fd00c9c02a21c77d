"""Where the collector's time per span goes, in-process: decoding, normalising, and each step
of the write path (the backend's set-based writes and flow derivation's own work).

The same demo-like batches as collector_ingest.py (512 spans: a send and a process span per
message, correlation IDs, partitions, offsets), written into a fresh SQLite store through
FlowWriter, without HTTP. Times are the process's CPU time, so that a busy machine does not
inflate them; each figure is the median of --runs runs.

    .venv/bin/python bench/ingest_breakdown.py [--batches 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from base.settings import IngestLimits
from bench.collector_ingest import make_batch, shift_base_to_now
from collectors.flows import hops, writer
from collectors.ingest.decode import decode_request
from collectors.normalize import NormalizeReport, normalize_request
from store.factory import open_store_at
from store.sqlite import writes
from store.vocabulary import FlowRules

RULES = FlowRules(("*done",), ("*.dlq",), ("*cancelled",), 300)
STEPS = ("known_flows", "adopt_flows", "insert_spans", "spans", "sends_by_message_id",
         "consumes_of", "waiting", "waiting_hops", "add_links", "take_links", "delete_hops",
         "insert_hops", "merge_flows", "merge_edges", "merge_flow_latency")


def timed(owner: object, name: str, label: str, spent: Counter[str]) -> None:
    """Wrap owner.name so that its CPU time adds to spent[label]."""
    work = getattr(owner, name)

    def run(*args: object, **kwargs: object) -> object:
        started = time.process_time()
        try:
            return work(*args, **kwargs)
        finally:
            spent[label] += time.process_time() - started

    setattr(owner, name, run)


def one_run(bodies: list[bytes]) -> tuple[Counter[str], int]:
    """Decode, normalise and write every body into a fresh store; CPU seconds by step."""
    spent: Counter[str] = Counter()
    spans = 0
    with tempfile.TemporaryDirectory() as home:
        store = open_store_at(Path(home) / "store.db", RULES)
        flow_writer = writer.FlowWriter(store, RULES, 10)
        for body in bodies:
            started = time.process_time()
            request = decode_request(body, "application/x-protobuf")
            decoded = time.process_time()
            records = list(normalize_request(request, NormalizeReport(), IngestLimits()))
            normalised = time.process_time()
            flow_writer.write_spans(records)
            spent["decode"] += decoded - started
            spent["normalise"] += normalised - decoded
            spent["write_spans (all of the store's part)"] += time.process_time() - normalised
            spans += len(records)
        store.close()
    return spent, spans


def instrument(spent: Counter[str]) -> Callable[[], None]:
    """Time the write path's steps into spent; returns the undo."""
    saved = [(writes.SqliteWrites, name, getattr(writes.SqliteWrites, name)) for name in STEPS]
    saved += [(writer, "flow_deltas", writer.flow_deltas),
              (writer, "edge_deltas", writer.edge_deltas),
              (hops.HopMatcher, "run", hops.HopMatcher.run)]
    for name in STEPS:
        timed(writes.SqliteWrites, name, f"  backend: {name}", spent)
    timed(writer, "flow_deltas", "  derivation: flow totals of the batch", spent)
    timed(writer, "edge_deltas", "  derivation: edge totals of the batch", spent)
    timed(hops.HopMatcher, "run", "  derivation: hop matching (with its backend calls)", spent)

    def undo() -> None:
        for owner, name, work in saved:
            setattr(owner, name, work)

    return undo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200, help="batches of 512 spans")
    parser.add_argument("--runs", type=int, default=3, help="runs; medians are printed")
    args = parser.parse_args()
    offset_ms = shift_base_to_now()
    bodies = [make_batch(i, offset_ms) for i in range(args.batches)]
    per_run: list[dict[str, float]] = []
    for run in range(args.runs):
        spent: Counter[str] = Counter()
        undo = instrument(spent)
        try:
            totals, spans = one_run(bodies)
        finally:
            undo()
        spent.update(totals)
        per_run.append({step: seconds / spans * 1e6 for step, seconds in spent.items()})
        print(f"run {run + 1} of {args.runs}: {spans:,} spans", flush=True)
    steps = sorted(per_run[0], key=lambda step: -per_run[0][step])
    print(f"CPU time per span, median of {args.runs} runs of {args.batches} batches of 512 "
          "(steps indented are parts of write_spans; hop matching includes its backend calls):")
    for step in steps:
        print(f"  {statistics.median(r.get(step, 0.0) for r in per_run):7.2f} us  {step}")
    total = statistics.median(r["decode"] + r["normalise"] +
                              r["write_spans (all of the store's part)"] for r in per_run)
    print(f"decode + normalise + write: {total:.1f} us a span, "
          f"{1e6 / total:,.0f} spans per CPU-second (no HTTP)")


if __name__ == "__main__":
    main()
