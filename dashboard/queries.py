"""Data for the pages: the only module with st.cache_*. It opens the store read-only and never
talks to Kafka. Each `load_*` function is plain (benchmarked in bench/dashboard_queries.py);
the cached wrappers below them are what pages call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pandas as pd
import streamlit as st

from collectors.record import GroupLag, LagRow
from collectors.store.factory import open_store
from collectors.store.interface import FailedStep, FlowRow, HopRow, StoreError
from collectors.store.sqlite import SqliteStore
from dashboard import layout, transforms
from flowscope.errors import FlowscopeError
from flowscope.settings import Settings

CACHE_TTL_S = 2
RECENT_FLOWS = 200
PROPAGATION_SAMPLE = 10_000  # the newest messages of the window the share is computed on
ATTEMPTS_SAMPLE = 10_000  # and those the attempt distribution is drawn from


class StoreUnavailable(Exception):
    """The store cannot be read; the message says why and what to do."""


@dataclass(frozen=True)
class FlowMap:
    """The flow map page: the graph, its edges, node statuses and the overview."""

    nodes: pd.DataFrame
    edges: pd.DataFrame
    statuses: dict[str, str]
    metrics: list[tuple[str, str, str | None]]
    worst: GroupLag | None
    series: pd.DataFrame


@dataclass(frozen=True)
class Lag:
    """The lag page: latest partitions and groups, and the trend over the window."""

    rows: list[LagRow]
    groups: list[GroupLag]
    trend: pd.DataFrame


@dataclass(frozen=True)
class Retries:
    """The retries page: retry shares per hop, attempts, retries over time, dead letters."""

    rates: pd.DataFrame
    attempts: pd.DataFrame
    series: pd.DataFrame
    dead_letters: pd.DataFrame


@dataclass(frozen=True)
class Latency:
    """The latency page: end-to-end percentiles over time and the per-hop breakdown."""

    series: pd.DataFrame
    hops: pd.DataFrame


# -- opening the store -----------------------------------------------------------------------


def settings() -> Settings:
    """The settings, from the environment (cheap; not cached, so tests can change it)."""
    return Settings.from_env()


class GuardedStore:
    """The read-only store and a lock: Streamlit serves sessions from several threads."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.lock = threading.Lock()

    @contextmanager
    def use(self) -> Iterator[SqliteStore]:
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


def load_flow_map(store: SqliteStore, window_s: float, now_ns: int) -> FlowMap:
    """Topology, lag statuses and the overview with deltas against the window before."""
    since = now_ns - int(window_s * 1e9)
    topology = store.topology(since)
    observed = transforms.observed_seconds(window_s, topology.first_bucket_s, now_ns / 1e9,
                                           store.bucket_s)
    edges = transforms.build_edges(topology, observed)
    rows, groups = store.lag()
    counts = store.flow_counts(int(window_s * 1e9), now_ns)
    series = transforms.edge_series(store.edge_buckets(since), store.bucket_s, since / 1e9,
                                    now_ns / 1e9)
    return FlowMap(layout.layout_nodes(topology.nodes, edges), edges,
                   transforms.node_statuses(topology.nodes, edges, rows, groups),
                   transforms.overview_metrics(counts, window_s, observed),
                   transforms.worst_group(groups), series)


def load_lag(store: SqliteStore, window_s: float, now_ns: int) -> Lag:
    """The latest lag and its history over the window."""
    rows, groups = store.lag()
    return Lag(rows, groups, transforms.lag_trend(store.lag_trend(now_ns / 1e9 - window_s)))


def load_retries(store: SqliteStore, window_s: float, now_ns: int) -> Retries:
    """Retry shares from the edge aggregates, attempts and dead letters from the tap."""
    since = now_ns - int(window_s * 1e9)
    edges = transforms.build_edges(store.topology(since), window_s)
    series = transforms.edge_series(store.edge_buckets(since), store.bucket_s, since / 1e9,
                                    now_ns / 1e9)
    retried = set(series.loc[series["retries"] > 0, "edge"])
    return Retries(transforms.retry_rates(edges),
                   transforms.attempts_table(store.retry_attempts(since // 1_000_000,
                                                                  ATTEMPTS_SAMPLE)),
                   series[series["edge"].isin(retried)],
                   transforms.dead_letter_table(store.dead_letters(since // 1_000_000)))


def load_latency(store: SqliteStore, window_s: float, now_ns: int) -> Latency:
    """Completed flows' end-to-end latency over time, and the per-hop breakdown."""
    since = now_ns - int(window_s * 1e9)
    edges = transforms.build_edges(store.topology(since), window_s)
    return Latency(transforms.latency_series(store.flow_latency(since), since / 1e9, window_s),
                   transforms.hop_breakdown(edges))


def load_propagation(store: SqliteStore, window_s: float, now_ns: int) -> pd.DataFrame:
    """Trace-context share per topic and producer over the window."""
    now_ms = now_ns // 1_000_000
    return transforms.propagation_table(store.propagation(
        now_ms - int(window_s * 1000), PROPAGATION_SAMPLE, now_ms))


def load_recent_flows(store: SqliteStore, window_s: float, now_ns: int) -> list[FlowRow]:
    """The newest flows of the window."""
    return store.flows(now_ns - int(window_s * 1e9), now_ns, RECENT_FLOWS)


@dataclass(frozen=True)
class FoundFlow:
    """A search's result: every flow it matched, and the first with its hops and dead
    letters."""

    matches: list[str]
    flow: FlowRow | None
    hops: list[HopRow]
    dead_letters: pd.DataFrame
    failed_steps: list[FailedStep]


def load_flow(store: SqliteStore, text: str, now_ns: int) -> FoundFlow:
    """The flows a search names, and the first of them with its hops and dead letters."""
    matches = store.find_flows(text)
    found = store.flow(matches[0], now_ns) if matches else None
    if found is None:
        return FoundFlow(matches, None, [], transforms.dead_letter_table([]), [])
    flow, hops = found
    return FoundFlow(matches, flow, hops, transforms.dead_letter_table(
        store.dead_letters(0, 20, flow_id=flow.id) if flow.status == "dead-lettered" else []),
        store.failed_steps(flow.id) if flow.errors else [])


# -- cached, for the pages ---------------------------------------------------------------------
# Keyed by store path and a clock tick, so sessions share a result for CACHE_TTL_S seconds.


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False, max_entries=64)
def _cached(loader: str, path: str, argument: float | str, at_tick: int) -> object:
    del path, at_tick  # cache keys
    with guarded_store().use() as store:
        return LOADERS[loader](store, argument, time.time_ns())  # type: ignore[operator]


def load_nodes(store: SqliteStore, window_s: float, now_ns: int) -> list[str]:
    """The services and topics of the window, for the focus control."""
    return list(store.topology_nodes(now_ns - int(window_s * 1e9)))


# Each loader takes (store, its argument: a window in seconds or a search, now in ns).
LOADERS = {"nodes": load_nodes, "flow_map": load_flow_map, "lag": load_lag, "flow": load_flow,
           "retries": load_retries, "latency": load_latency, "propagation": load_propagation,
           "recent_flows": load_recent_flows}


def _load(loader: str, argument: float | str) -> object:
    return _cached(loader, str(settings().collect.store), argument, tick())


def nodes(window_s: float) -> list[str]:
    """The services and topics of the window."""
    return _load("nodes", window_s)  # type: ignore[return-value]


def flow_map(window_s: float) -> FlowMap:
    """The flow map page's data."""
    return _load("flow_map", window_s)  # type: ignore[return-value]


def lag(window_s: float) -> Lag:
    """The lag page's data."""
    return _load("lag", window_s)  # type: ignore[return-value]


def retries(window_s: float) -> Retries:
    """The retries page's data."""
    return _load("retries", window_s)  # type: ignore[return-value]


def latency(window_s: float) -> Latency:
    """The latency page's data."""
    return _load("latency", window_s)  # type: ignore[return-value]


def propagation(window_s: float) -> pd.DataFrame:
    """The propagation page's data."""
    return _load("propagation", window_s)  # type: ignore[return-value]


def recent_flows(window_s: float) -> list[FlowRow]:
    """The newest flows of the window."""
    return _load("recent_flows", window_s)  # type: ignore[return-value]


def flow(text: str) -> FoundFlow:
    """The flows a search names, and the first with its hops and dead letters."""
    return _load("flow", text)  # type: ignore[return-value]
