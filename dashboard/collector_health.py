"""What the pages say about the collector itself: a component that is down or degraded, or a
collector that stopped reporting (pure; no st.*)."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from dashboard.transforms import cut_text
from store.contract import ComponentRow

# The collector reports every second: a report older than this means it is not running (or
# cannot write its store), and every figure on the page is as old.
STALE_S = 30.0
NAME_LIMIT = 60  # characters of a component's name in a headline


@dataclass(frozen=True)
class Note:
    """One line about the collector: 'error' or 'warning', a headline, and the reason as the
    collector gave it (untrusted text: shown as code, never as Markdown)."""

    level: str
    headline: str
    reason: str | None = None


def collector_notes(rows: Sequence[ComponentRow], now_s: float) -> list[Note]:
    """The notes for the collectors' last health reports; none when all is well or when no
    collector ever reported into this store. Where several collectors share the store, each
    is named, and one that stopped reporting while others go on is said so."""
    if not rows:
        return []
    reported = max(row.at_s for row in rows)
    if now_s - reported > STALE_S:
        return [Note("warning", f"The collector has not reported for {_age(now_s - reported)} "
                     f"(last report {_clock(reported)}): it is stopped or cannot write the "
                     "store, and what the pages show is as old.")]
    last: dict[str, float] = {}
    for row in rows:
        last[row.collector] = max(last.get(row.collector, row.at_s), row.at_s)
    several = len(last) > 1
    notes = [Note("warning", f"Collector `{_name(collector)}` has not reported since "
                  f"{_clock(at_s)}: it is stopped or cannot write the store; the other "
                  "collectors of its group take its partitions over.")
             for collector, at_s in sorted(last.items()) if reported - at_s > STALE_S]
    for row in rows:
        if several and reported - last[row.collector] > STALE_S:
            continue
        name = _name(f"{row.component} on {row.collector}" if several else row.component)
        if row.state == "down":
            notes.append(Note("error", f"Collector component `{name}` is down since "
                              f"{_clock(row.since_s)} (restarted {row.restarts} times); "
                              "what it feeds is missing meanwhile.", row.reason))
        elif row.state == "degraded":
            notes.append(Note("warning", f"Collector component `{name}` is degraded "
                              f"since {_clock(row.since_s)}.", row.reason))
    return notes


def _name(component: str) -> str:
    """A component's name for inline code in a headline: cut, and without the backticks,
    line breaks and control characters that would end the code span or hide in it (the store
    may hold any text)."""
    return cut_text(re.sub(r"[`\s\x00-\x1f\x7f-\x9f]+", " ", component), NAME_LIMIT) or "?"


def _age(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _clock(at_s: float) -> str:
    try:
        return time.strftime("%H:%M:%S", time.localtime(at_s))
    except (OverflowError, OSError, ValueError):
        return "an unknown time"
