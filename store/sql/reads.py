"""The Store's read methods that both SQL backends serve with the shared queries of store/sql:
a backend gives its flow rules, bucket width, edge rollups and a connection to read on."""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AbstractContextManager

from store.contract import (
    DeadLetter,
    EdgeBucket,
    FailedStep,
    FlowCounts,
    FlowRow,
    LatencyBucket,
    Topology,
)
from store.records import GROUP_LAG_COLUMNS, LAG_COLUMNS, GroupLag, Hop, LagRow
from store.sql import readers, summaries
from store.sql.rows import Db, window_edges
from store.vocabulary import NS_PER_MS, NS_PER_S, FlowFlag, FlowRules, bucket_start

# A lag row as stored (a queue's row has partition -1: a key column cannot be NULL).
LAG_SELECT = ", ".join("NULLIF(partition, -1)" if c == "partition" else f'"{c}"'
                       for c in LAG_COLUMNS)
GROUP_SELECT = ", ".join(f'"{c}"' for c in GROUP_LAG_COLUMNS)


class SqlReads:
    """Read methods of the Store contract over the shared SQL."""

    rules: FlowRules
    bucket_s: int
    rollup: tuple[int, int]  # the edge rollups' width and the bucket they are complete from

    def _reading(self) -> AbstractContextManager[Db]:
        """A connection to read on (qmark parameters)."""
        raise NotImplementedError

    def counters(self) -> dict[str, int]:
        """All counters."""
        with self._reading() as db:
            return {name: int(value) for name, value in
                    db.execute("SELECT name, value FROM counters").fetchall()}

    def lag(self, group: str | None = None) -> tuple[list[LagRow], list[GroupLag]]:
        """The latest lag of every partition and group (or of one group)."""
        where, params = ('WHERE "group" = ?', (group,)) if group else ("", ())
        # Read back as stored: a status is the vocabulary's text (a StrEnum equals its text),
        # and text another writer left outside the vocabulary is shown as it is, not refused.
        with self._reading() as db:
            rows = [LagRow(*r) for r in db.execute(
                f"SELECT {LAG_SELECT} FROM lag_current {where} "
                'ORDER BY system, "group", topic, partition', params)]
            groups = [GroupLag(*g) for g in db.execute(
                f'SELECT {GROUP_SELECT} FROM lag_groups {where} ORDER BY system, "group"',
                params)]
        return rows, groups

    def lag_history(self, since_ns: int, group: str | None = None) -> list[LagRow]:
        """Partition lag over time since since_ns, oldest first."""
        since_s = since_ns / NS_PER_S
        extra, params = ('AND "group" = ?', (since_s, group)) if group else ("", (since_s,))
        with self._reading() as db:
            return [LagRow(*r) for r in db.execute(
                f"SELECT {LAG_SELECT} FROM lag_samples WHERE at_s >= ? {extra} ORDER BY at_s",
                params)]

    def topology(self, since_ns: int) -> Topology:
        """The service/topic graph from the edge aggregates since since_ns."""
        with self._reading() as db:
            return readers.read_topology(db, self._window(since_ns))[0]

    def busiest_topology(self, since_ns: int, limit: int, by: str = "count",
                         touching: str | None = None) -> tuple[Topology, int]:
        """The graph of the `limit` busiest edges since since_ns (by messages, or by
        retries; those of the node `touching` first), and how many edges there are in
        all."""
        with self._reading() as db:
            return readers.read_topology(db, self._window(since_ns), limit, by, touching)

    def _bucket(self, ns: int) -> int:
        return bucket_start(ns, self.bucket_s)

    def _window(self, since_ns: int) -> list[object]:
        """The parameters of readers.WINDOW_EDGES for the window from since_ns on."""
        return window_edges(self.rollup, self._bucket(since_ns))

    def flows(self, since_ns: int, now_ns: int, limit: int = 100) -> list[FlowRow]:
        """Flows active since since_ns, newest first."""
        with self._reading() as db:
            return readers.read_flows(db, since_ns, limit,
                                      lambda flags, errors, last: self.rules.status(
                                          flags, errors, last, now_ns))

    def flow(self, flow_or_trace_id: str, now_ns: int) -> tuple[FlowRow, list[Hop]] | None:
        """One flow with its hops in time order."""
        found = self.flow_head(flow_or_trace_id, now_ns, None)
        return None if found is None else found[:2]

    def flow_head(self, flow_or_trace_id: str, now_ns: int, limit: int | None
                  ) -> tuple[FlowRow, list[Hop], int] | None:
        """One flow with its first `limit` hops in time order, and how many more it has."""
        with self._reading() as db:
            return readers.read_flow(db, flow_or_trace_id,
                                     lambda flags, errors, last: self.rules.status(
                                         flags, errors, last, now_ns),
                                     limit)

    def failed_steps(self, flow_id: str, limit: int = 50) -> list[FailedStep]:
        """The spans of a flow that ended in error, oldest first (read by the flow index)."""
        with self._reading() as db:
            return [FailedStep(*row) for row in db.execute(
                "SELECT start_ns, service, name, kind, error_type, trace_id FROM spans "
                "WHERE flow_id = ? AND error = 1 ORDER BY start_ns LIMIT ?", (flow_id, limit))]

    def flow_counts(self, window_ns: int, now_ns: int) -> FlowCounts:
        """Outcomes and starts in this window and the one before; in flight and stuck now."""
        with self._reading() as db:
            return summaries.count_flows(db, window_ns, now_ns, self.rules)

    def topology_nodes(self, since_ns: int) -> dict[str, str]:
        """The nodes of the topology since since_ns (name -> 'service' or 'topic'), without
        reading the edges' histograms."""
        nodes: dict[str, str] = {}
        with self._reading() as db:
            # one pass over the window's buckets (a UNION of sources and targets takes two)
            for source, source_kind, target, target_kind in db.execute(
                    "SELECT DISTINCT source, source_kind, target, target_kind FROM "
                    f"{readers.WINDOW_EDGES}", self._window(since_ns)):
                nodes[source], nodes[target] = source_kind, target_kind
        return dict(sorted(nodes.items()))

    def edge_buckets(self, since_ns: int, edges: Sequence[tuple[str, str]] | None = None
                     ) -> list[EdgeBucket]:
        """Every edge (or these (source, target) edges) per time bucket since since_ns,
        oldest first."""
        with self._reading() as db:
            return summaries.read_edge_buckets(db, self._bucket(since_ns), edges)

    def flow_latency(self, since_ns: int) -> list[LatencyBucket]:
        """End-to-end latency histograms of completed flows per bucket and type."""
        with self._reading() as db:
            return summaries.read_flow_latency(db, self._bucket(since_ns))

    def find_flows(self, text: str) -> list[str]:
        """Flow ids named by a correlation ID, trace ID, message id or message key."""
        with self._reading() as db:
            return summaries.find_flow_ids(db, text)

    def retry_attempts(self, since_ns: int, sample: int | None = None
                       ) -> list[tuple[str, int, int]]:
        """(topic, attempt, messages) of tapped messages since since_ns (the newest
        `sample` of them, when given)."""
        with self._reading() as db:
            return summaries.read_retry_attempts(db, since_ns // NS_PER_MS, sample)

    def dead_letters(self, since_ns: int, limit: int = 200, flow_id: str | None = None
                     ) -> list[DeadLetter]:
        """Messages on dead-letter topics since since_ns (of one flow), newest first."""
        with self._reading() as db:
            if flow_id:  # the flow's own messages: any topic it reached
                row = db.execute("SELECT topics FROM flows WHERE flow_id = ?",
                                 (flow_id,)).fetchone()
                topics = json.loads(row[0] if row else "[]")
            else:  # every tapped topic, also those no instrumented producer writes to
                topics = summaries.tapped_topics(db)
            topics = [t for t in topics if self.rules.flag_of(t) == FlowFlag.DEAD_LETTERED]
            return summaries.read_dead_letters(db, topics, since_ns // NS_PER_MS, limit,
                                               flow_id)
