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
from typing import TypeVar

import pandas as pd
import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

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


# -- the settings and the store -------------------------------------------------------------
# Read once per run of the app: app.py calls read_settings() first thing in every full run,
# and it keeps them in the session's state. Not a module global: Streamlit serves every
# session from this one module, and a test (or an operator) that changes the environment
# expects the next run to follow. Not a per-thread value either: a page's live body is a
# fragment that reruns on its own (controls.live), without app.py, and must find the settings
# of the run that drew it.
SETTINGS_KEY = "_flowscope_settings"


def read_settings() -> Settings:
    """The settings, read from the environment, kept for this run of the app and the fragment
    reruns that follow it."""
    current = Settings.from_env()
    st.session_state[SETTINGS_KEY] = current
    return current


def settings() -> Settings:
    """This run's settings (see read_settings). Outside a script run (a test or a script
    calling the queries) there is no run to keep them for, and Streamlit's stand-in session
    state there is one for the whole process: read from the environment."""
    if get_script_run_ctx(suppress_warning=True) is None:
        return Settings.from_env()
    current = st.session_state.get(SETTINGS_KEY)
    return current if isinstance(current, Settings) else read_settings()


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
def _open(path: str, _settings: Settings) -> GuardedStore:
    del path  # the cache key: one store per path (a leading _ keeps _settings out of it)
    return GuardedStore(open_store(_settings, readonly=True))


def guarded_store(current: Settings | None = None) -> GuardedStore:
    """The store of these settings (this run's by default), or StoreUnavailable saying why it
    cannot be read (not cached, so a store created after the dashboard started is found on
    the next refresh)."""
    if current is None:
        current = settings()
    try:
        return _open(str(current.collect.store), current)
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
    rows, groups = store.lag()
    topology = transforms.with_bound_queues(topology, rows)
    observed = transforms.observed_seconds(window_s, topology.first_bucket_s, now_ns / 1e9,
                                           store.bucket_s)
    edges = transforms.build_edges(topology, observed)
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

A = TypeVar("A", bound=Hashable)  # a loader's argument: a window, a search, a window and more
R = TypeVar("R")  # what it returns
# A loader takes the store, its argument and now in ns.
Loader = Callable[[Store, A, int], R]
_CACHED: set[str] = set()  # the loaders cached so far, by name


def cached(loader: Loader[A, R]) -> Callable[[A], R]:
    """The loader as pages call it: of its argument only, its result cached for all sessions,
    keyed by the store's path, the argument and a clock tick (so for CACHE_TTL_S seconds).

    One st.cache_data function per loader. Streamlit keys a cached function's cache by its
    __module__, __qualname__ and source (_make_function_key in streamlit/runtime/caching/
    cache_utils.py), computed once, when st.cache_data wraps it (CachedFunc.__init__); the
    loader, a closure variable, is not in that key. Every `run` below has the same module and
    source, so each is named after its loader before it is wrapped, and a name is cached once
    only: two loaders never share a cache, whatever their arguments."""
    name = f"{loader.__module__}.{loader.__qualname__}"
    if name in _CACHED:
        raise ValueError(f"a loader named {name} is cached already: two would share a cache")
    _CACHED.add(name)

    def run(path: str, argument: A, at_tick: int, _settings: Settings) -> R:
        del path, at_tick  # cache keys; a leading _ keeps the settings out of the key
        with guarded_store(_settings).use() as store:
            return loader(store, argument, time.time_ns())

    run.__qualname__ = f"cached[{name}]"
    cached_run = st.cache_data(ttl=CACHE_TTL_S, show_spinner=False, max_entries=64)(run)

    def load(argument: A) -> R:
        current = settings()
        return cached_run(str(current.collect.store), argument, tick(), current)

    return load


def _focused(load: Callable[[Store, float, int, str | None], R]
             ) -> Loader[tuple[float, str | None], R]:
    """A loader of (window, focus) from one of a window and a focus; named after it, so that
    each gets a cache of its own (see cached)."""

    def focused(store: Store, argument: tuple[float, str | None], now_ns: int) -> R:
        window_s, focus = argument
        return load(store, window_s, now_ns, focus)

    focused.__module__, focused.__qualname__ = load.__module__, f"{load.__qualname__}[focused]"
    return focused


def load_nodes(store: Store, window_s: float, now_ns: int) -> list[str]:
    """The services and topics of the window, for the focus control."""
    return list(store.topology_nodes(now_ns - int(window_s * 1e9)))


# What the pages call, each of its loader's argument.
nodes: Callable[[float], list[str]] = cached(load_nodes)  # the services and topics of a window
lag: Callable[[float], Lag] = cached(load_lag)
propagation: Callable[[float], pd.DataFrame] = cached(load_propagation)
recent_flows: Callable[[float], list[FlowRow]] = cached(load_recent_flows)
flow: Callable[[str], FoundFlow] = cached(load_flow)  # a search's flows, the first in full
_flow_map = cached(_focused(load_flow_map))
_retries = cached(_focused(load_retries))
_latency = cached(_focused(load_latency))
_edge_series = cached(load_edge_series)


def flow_map(window_s: float, focus: str | None = None) -> FlowMap:
    """The flow map page's data."""
    return _flow_map((window_s, focus))


def retries(window_s: float, focus: str | None = None) -> Retries:
    """The retries page's data."""
    return _retries((window_s, focus))


def latency(window_s: float, focus: str | None = None) -> Latency:
    """The latency page's data."""
    return _latency((window_s, focus))


def edge_series(window_s: float, edges: Iterable[tuple[str, str]]) -> pd.DataFrame:
    """Messages and retries per second of these (source, target) edges over the window."""
    return _edge_series((window_s, tuple(edges)))
