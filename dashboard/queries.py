"""Data for the pages: the only module with st.cache_*. It opens the store read-only and never
talks to Kafka. Each `load_*` function is plain (benchmarked in bench/dashboard_queries.py);
the cached wrappers below them are what pages call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pandas as pd
import streamlit as st

from base.errors import FlowscopeError
from base.settings import Settings
from dashboard import layout, transforms
from store.contract import FailedStep, FlowRow, Store, StoreError
from store.factory import open_store
from store.records import GroupLag, Hop, LagRow
from store.vocabulary import FlowStatus

CACHE_TTL_S = 2
RECENT_FLOWS = 200
# Senders create services and topics at will: the pages draw the busiest edges only, and a
# flow's first hops, so that their cost stays bounded whatever the store holds.
MAP_EDGES = 200
FLOW_HOPS = 500
SERIES_EDGES = 8  # lines of a throughput or retries chart
PROPAGATION_SAMPLE = 10_000  # the newest messages of the window the share is computed on
ATTEMPTS_SAMPLE = 10_000  # and those the attempt distribution is drawn from


class StoreUnavailable(Exception):
    """The store cannot be read; the message says why and what to do."""


@dataclass(frozen=True)
class FlowMap:
    """The flow map page: the graph, its edges, node statuses and the overview."""

    nodes: pd.DataFrame
    edges: pd.DataFrame  # the MAP_EDGES busiest
    edges_total: int  # in the window
    statuses: dict[str, str]
    metrics: list[tuple[str, str, str | None]]
    worst: GroupLag | None


@dataclass(frozen=True)
class Lag:
    """The lag page: latest partitions and groups, and the trend over the window."""

    rows: list[LagRow]
    groups: list[GroupLag]
    trend: pd.DataFrame


@dataclass(frozen=True)
class Retries:
    """The retries page: retry shares per hop, attempts, the edges that saw retries (most
    first, for the chart over time), dead letters."""

    rates: pd.DataFrame
    attempts: pd.DataFrame
    retried: pd.DataFrame
    dead_letters: pd.DataFrame
    edges_total: int


@dataclass(frozen=True)
class Latency:
    """The latency page: end-to-end percentiles over time and the per-hop breakdown."""

    series: pd.DataFrame
    hops: pd.DataFrame
    edges_total: int


# -- opening the store -----------------------------------------------------------------------


def settings() -> Settings:
    """The settings, from the environment (cheap; not cached, so tests can change it)."""
    return Settings.from_env()


class GuardedStore:
    """The read-only store and a lock: Streamlit serves sessions from several threads."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.lock = threading.Lock()

    @contextmanager
    def use(self) -> Iterator[Store]:
        """The store, held for one query."""
        with self.lock:
            yield self.store


@st.cache_resource(show_spinner=False)
def _open(path: str) -> GuardedStore:
    del path  # the cache key: one store per path
    return GuardedStore(open_store(settings(), readonly=True))


def guarded_store() -> GuardedStore:
    """The store, or StoreUnavailable saying why it cannot be read (not cached, so a store
    created after the dashboard started is found on the next refresh)."""
    try:
        return _open(str(settings().collect.store))
    except FlowscopeError as exc:
        raise StoreUnavailable(exc.render()) from None
    except StoreError as exc:
        raise StoreUnavailable(f"{exc}. Run `make demo` (or `flowscope collect` next to your "
                               "services) to fill it.") from None


def tick() -> int:
    """A clock that moves every CACHE_TTL_S seconds: the cache key of live queries."""
    return int(time.time() // CACHE_TTL_S)


# -- plain loaders -----------------------------------------------------------------------------


def load_flow_map(store: Store, window_s: float, now_ns: int,
                  focus: str | None = None) -> FlowMap:
    """Topology (the busiest edges, the focused node's first), lag statuses and the
    overview with deltas against the window before."""
    since = now_ns - int(window_s * 1e9)
    topology, total = store.busiest_topology(since, MAP_EDGES, touching=focus)
    observed = transforms.observed_seconds(window_s, topology.first_bucket_s, now_ns / 1e9,
                                           store.bucket_s)
    edges = transforms.build_edges(topology, observed)
    rows, groups = store.lag()
    counts = store.flow_counts(int(window_s * 1e9), now_ns)
    return FlowMap(layout.layout_nodes(topology.nodes, edges), edges, total,
                   transforms.node_statuses(topology.nodes, edges, rows, groups),
                   transforms.overview_metrics(counts, window_s, observed),
                   transforms.worst_group(groups))


def load_edge_series(store: Store, argument: tuple[float, tuple[tuple[str, str], ...]],
                     now_ns: int) -> pd.DataFrame:
    """Messages and retries per second over the window (argument: the window in seconds and
    the (source, target) edges to read)."""
    window_s, edges = argument
    since = now_ns - int(window_s * 1e9)
    return transforms.edge_series(store.edge_buckets(since, edges), store.bucket_s,
                                  since / 1e9, now_ns / 1e9)


def load_lag(store: Store, window_s: float, now_ns: int) -> Lag:
    """The latest lag and its history over the window."""
    rows, groups = store.lag()
    return Lag(rows, groups, transforms.lag_trend(store.lag_trend(now_ns - int(window_s * 1e9))))


def load_retries(store: Store, window_s: float, now_ns: int,
                 focus: str | None = None) -> Retries:
    """Retry shares from the edge aggregates (of the edges with the most retries, the
    focused node's first), attempts and dead letters from the tap."""
    since = now_ns - int(window_s * 1e9)
    topology, total = store.busiest_topology(since, MAP_EDGES, by="retries", touching=focus)
    edges = transforms.build_edges(topology, window_s)
    retried = edges[edges["retries"] > 0].sort_values(["retries", "count"], ascending=False)
    return Retries(transforms.retry_rates(edges),
                   transforms.attempts_table(store.retry_attempts(since, ATTEMPTS_SAMPLE)),
                   retried[["source", "target", "retries"]],
                   transforms.dead_letter_table(store.dead_letters(since)), total)


def load_latency(store: Store, window_s: float, now_ns: int,
                 focus: str | None = None) -> Latency:
    """Completed flows' end-to-end latency over time, and the per-hop breakdown (of the
    busiest edges, the focused node's first)."""
    since = now_ns - int(window_s * 1e9)
    topology, total = store.busiest_topology(since, MAP_EDGES, touching=focus)
    edges = transforms.build_edges(topology, window_s)
    return Latency(transforms.latency_series(store.flow_latency(since), since / 1e9, window_s),
                   transforms.hop_breakdown(edges), total)


def load_propagation(store: Store, window_s: float, now_ns: int) -> pd.DataFrame:
    """Trace-context share per topic and producer over the window."""
    return transforms.propagation_table(store.propagation(
        now_ns - int(window_s * 1e9), PROPAGATION_SAMPLE, now_ns))


def load_recent_flows(store: Store, window_s: float, now_ns: int) -> list[FlowRow]:
    """The newest flows of the window."""
    return store.flows(now_ns - int(window_s * 1e9), now_ns, RECENT_FLOWS)


@dataclass(frozen=True)
class FoundFlow:
    """A search's result: every flow it matched, and the first with its first FLOW_HOPS hops
    (and how many more it has) and dead letters."""

    matches: list[str]
    flow: FlowRow | None
    hops: list[Hop]
    dead_letters: pd.DataFrame
    failed_steps: list[FailedStep]
    hops_left_out: int = 0


def load_flow(store: Store, text: str, now_ns: int) -> FoundFlow:
    """The flows a search names, and the first of them with its hops and dead letters."""
    matches = store.find_flows(text)
    found = store.flow_head(matches[0], now_ns, FLOW_HOPS) if matches else None
    if found is None:
        return FoundFlow(matches, None, [], transforms.dead_letter_table([]), [])
    flow, hops, left_out = found
    dead = flow.status == FlowStatus.DEAD_LETTERED
    return FoundFlow(matches, flow, hops, transforms.dead_letter_table(
        store.dead_letters(0, 20, flow_id=flow.id) if dead else []),
        store.failed_steps(flow.id) if flow.errors else [], left_out)


# -- cached, for the pages ---------------------------------------------------------------------
# Keyed by store path and a clock tick, so sessions share a result for CACHE_TTL_S seconds.


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False, max_entries=64)
def _cached(loader: str, path: str, argument: Hashable, at_tick: int) -> object:
    del path, at_tick  # cache keys
    with guarded_store().use() as store:
        return LOADERS[loader](store, argument, time.time_ns())  # type: ignore[operator]


def load_nodes(store: Store, window_s: float, now_ns: int) -> list[str]:
    """The services and topics of the window, for the focus control."""
    return list(store.topology_nodes(now_ns - int(window_s * 1e9)))


def _focused(load: Callable[..., object]) -> Callable[..., object]:
    """A loader of (window, focus) from one of a window with a focus keyword."""
    return lambda store, argument, now_ns: load(store, argument[0], now_ns, focus=argument[1])


# Each loader takes (store, its argument: a window in seconds, a search, or a window with a
# focus or with edges; now in ns).
LOADERS = {"nodes": load_nodes, "flow_map": _focused(load_flow_map), "lag": load_lag,
           "flow": load_flow, "retries": _focused(load_retries),
           "latency": _focused(load_latency), "propagation": load_propagation,
           "recent_flows": load_recent_flows, "edge_series": load_edge_series}


def _load(loader: str, argument: Hashable) -> object:
    return _cached(loader, str(settings().collect.store), argument, tick())


def nodes(window_s: float) -> list[str]:
    """The services and topics of the window."""
    return _load("nodes", window_s)  # type: ignore[return-value]


def flow_map(window_s: float, focus: str | None = None) -> FlowMap:
    """The flow map page's data."""
    return _load("flow_map", (window_s, focus))  # type: ignore[return-value]


def lag(window_s: float) -> Lag:
    """The lag page's data."""
    return _load("lag", window_s)  # type: ignore[return-value]


def retries(window_s: float, focus: str | None = None) -> Retries:
    """The retries page's data."""
    return _load("retries", (window_s, focus))  # type: ignore[return-value]


def latency(window_s: float, focus: str | None = None) -> Latency:
    """The latency page's data."""
    return _load("latency", (window_s, focus))  # type: ignore[return-value]


def propagation(window_s: float) -> pd.DataFrame:
    """The propagation page's data."""
    return _load("propagation", window_s)  # type: ignore[return-value]


def recent_flows(window_s: float) -> list[FlowRow]:
    """The newest flows of the window."""
    return _load("recent_flows", window_s)  # type: ignore[return-value]


def flow(text: str) -> FoundFlow:
    """The flows a search names, and the first with its hops and dead letters."""
    return _load("flow", text)  # type: ignore[return-value]


def edge_series(window_s: float, edges: Iterable[tuple[str, str]]) -> pd.DataFrame:
    """Messages and retries per second of these (source, target) edges over the window."""
    return _load("edge_series", (window_s, tuple(edges)))  # type: ignore[return-value]
