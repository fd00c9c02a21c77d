"""A flow's hops as waterfall segments on a display axis where long idle stretches are
collapsed, so a flow with a 10-minute retry backoff stays readable. Pure pandas."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from collectors.store.interface import HopRow


def build_waterfall(hops: Sequence[HopRow], collapse_after_ms: float = 2000.0,
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
    frame = pd.DataFrame(segments)
    origin = int(frame["start_ns"].min())
    busy = sorted((s - origin, e - origin) for s, e, k in zip(
        frame["start_ns"], frame["end_ns"], frame["kind"], strict=True) if k != "wait")
    gaps = _idle_gaps(busy, int(frame["end_ns"].max()) - origin, collapse_after_ms * 1e6)
    to_display = _display_axis(gaps, collapsed_ms * 1e6)
    frame["start_ms"] = [to_display(s - origin) / 1e6 for s in frame["start_ns"]]
    frame["width_ms"] = [to_display(e - origin) / 1e6 - a for e, a in
                         zip(frame["end_ns"], frame["start_ms"], strict=True)]
    frame["true_ms"] = (frame["end_ns"] - frame["start_ns"]) / 1e6
    breaks = [(to_display(start) / 1e6, (end - start) / 1e6) for start, end in gaps]
    return frame[columns], breaks


def _hop_label(index: int, hop: HopRow) -> str:
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
    """Map true ns offsets to display ns offsets, each gap squeezed to width."""

    def to_display(t: float) -> float:
        removed = 0.0
        for start, end in gaps:
            if t >= end:
                removed += (end - start) - width
            elif t > start:
                removed += (t - start) * (1 - width / (end - start))
                break
            else:
                break
        return t - removed

    return to_display
