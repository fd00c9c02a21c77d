"""A flow's hops as waterfall segments on a display axis where long idle stretches are
collapsed, so a flow with a 10-minute retry backoff stays readable. Pure pandas."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

import pandas as pd

from store.records import Hop


def build_waterfall(hops: Sequence[Hop], collapse_after_ms: float = 2000.0,
              collapsed_ms: float = 300.0) -> tuple[pd.DataFrame, list[tuple[float, float]]]:
    """The segments of a flow's waterfall on a display axis (ms from the flow's start) where
    every stretch longer than collapse_after_ms with nothing being produced or processed is
    drawn collapsed_ms wide. Returns the segments and the collapsed stretches as
    (display position, true length in ms)."""
    segments = []
    for index, hop in enumerate(hops):
        label = _hop_label(index, hop)
        for kind, start, end in (("produce", hop.produce_start_ns, hop.produce_end_ns),
                                 ("wait", hop.produce_end_ns, hop.consume_start_ns),
                                 ("process", hop.consume_start_ns, hop.consume_end_ns)):
            if start is not None and end is not None and end >= start:
                segments.append({"row": index, "hop": label, "kind": kind, "start_ns": start,
                                 "end_ns": end, "error": hop.error and kind == "process"})
    columns = ["row", "hop", "kind", "start_ns", "end_ns", "error", "start_ms", "width_ms",
               "true_ms"]
    if not segments:
        return pd.DataFrame(columns=columns), []
    # Offsets in Python integers: times at both ends of int64 overflow its differences.
    origin = min(s["start_ns"] for s in segments)
    busy = sorted((s["start_ns"] - origin, s["end_ns"] - origin) for s in segments
                  if s["kind"] != "wait")
    gaps = _idle_gaps(busy, max(s["end_ns"] for s in segments) - origin,
                      collapse_after_ms * 1e6)
    to_display = _display_axis(gaps, collapsed_ms * 1e6)
    for segment in segments:
        start = to_display(segment["start_ns"] - origin) / 1e6
        segment.update(start_ms=start,
                       width_ms=to_display(segment["end_ns"] - origin) / 1e6 - start,
                       true_ms=(segment["end_ns"] - segment["start_ns"]) / 1e6)
    frame = pd.DataFrame(segments)
    breaks = [(to_display(start) / 1e6, (end - start) / 1e6) for start, end in gaps]
    return frame[columns], breaks


def _hop_label(index: int, hop: Hop) -> str:
    where = f"{hop.producer_service or '?'} → {hop.topic} → {hop.consumer_service or '…'}"
    attempt = f" (attempt {hop.retry_attempt})" if hop.retry_attempt and hop.retry_attempt > 1 \
        else ""
    return f"{index + 1}. {where}{attempt}"


def _idle_gaps(busy: list[tuple[int, int]], end: int, longer_than: float
               ) -> list[tuple[int, int]]:
    """Stretches of [0, end] not covered by any busy interval and longer than longer_than."""
    gaps, covered = [], 0
    for start, stop in busy:
        if start - covered > longer_than:
            gaps.append((covered, start))
        covered = max(covered, stop)
    if end - covered > longer_than:
        gaps.append((covered, end))
    return gaps


def _display_axis(gaps: list[tuple[int, int]], width: float):  # type: ignore[no-untyped-def]
    """Map true ns offsets to display ns offsets, each gap squeezed to width; a binary search
    among the gaps, so a flow with thousands of them costs no more than one with a few."""
    starts = [start for start, _ in gaps]
    removed_before = [0.0]
    for start, end in gaps:
        removed_before.append(removed_before[-1] + (end - start) - width)

    def to_display(t: int) -> float:
        index = bisect_right(starts, t) - 1  # the last gap starting at or before t
        if index < 0:
            return float(t)
        start, end = gaps[index]
        if t >= end:
            return float(t) - removed_before[index + 1]
        return float(t) - removed_before[index] - (t - start) * (1 - width / (end - start))

    return to_display
