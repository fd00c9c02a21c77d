"""The controls every page shares: time window and focus (kept in the URL, so a view can be
shared as a link), refresh interval and pause; and the helpers pages use to stay live."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import quote, urlsplit

import streamlit as st

from base.settings import store_label
from dashboard import queries, transforms
from dashboard.collector_health import collector_notes

log = logging.getLogger(__name__)
ALL = "(everything)"
REFRESH_CHOICES = (2, 5, 10, 30, 60)
FOCUS_LABEL = 80  # characters of a service or topic name the focus control shows
T = TypeVar("T")


def render_sidebar() -> None:
    """The shared controls, in the sidebar of every page."""
    if "focus_request" in st.session_state:
        st.session_state["focus"] = st.session_state.pop("focus_request")
    with st.sidebar:
        st.selectbox("Time window", list(transforms.WINDOWS),
                     index=list(transforms.WINDOWS).index(transforms.DEFAULT_WINDOW),
                     key="window", bind="query-params")
        st.selectbox("Focus on", [ALL, *_nodes()], key="focus", bind="query-params",
                     format_func=lambda node: transforms.cut_text(node, FOCUS_LABEL),
                     help="Narrow every page to one service, topic, exchange or queue; or click "
                     "a node of the flow map.")
        settings = queries.settings()
        default = settings.dashboard.refresh_s
        choices = sorted({*REFRESH_CHOICES, int(default)})
        st.selectbox("Refresh every (s)", choices, index=choices.index(int(default)),
                     key="refresh_s")
        st.toggle("Pause live refresh", key="paused")
        st.caption(f"Store: {store_label(settings.collect.store)}")


def _nodes() -> list[str]:
    try:
        return queries.nodes(window_seconds())
    except Exception:  # the page says why; the sidebar offers no nodes meanwhile
        return []


def window_seconds() -> int:
    """The selected window in seconds."""
    return transforms.window_seconds(st.session_state.get("window"))


def focus() -> str | None:
    """The focused node, or None."""
    value = st.session_state.get("focus")
    return None if value in (None, ALL) else str(value)


def request_focus(node: str | None) -> None:
    """Ask, from a widget's callback (a click on the flow map), to focus on a node; the next
    run of the whole app applies it to every control and the URL (see apply_focus_request)."""
    if node != focus():
        st.session_state["focus_request"] = node or ALL


def apply_focus_request() -> None:
    """A focus asked for by a callback during a page's own rerun: rerun the whole app, so
    that the sidebar and the URL follow (a full run takes the request in render_sidebar)."""
    if "focus_request" in st.session_state:
        st.rerun()


def live(body: Callable[[], None]) -> None:
    """Run a page's body as a fragment that reruns itself every refresh interval, under what
    the collector says of itself."""
    interval = None if st.session_state.get("paused") else \
        float(st.session_state.get("refresh_s") or queries.settings().dashboard.refresh_s)

    def page() -> None:
        show_collector_health()
        body()

    st.fragment(run_every=interval)(page)()


def show_collector_health() -> None:
    """A box for each collector component that is down or degraded, or for a collector that
    stopped reporting; nothing when all is well (or the store cannot be read: the page says)."""
    try:
        with queries.guarded_store().use() as store:
            rows = store.collector_health()
    except Exception:  # the page's own query reports an unreadable store
        log.debug("collector health not read", exc_info=True)
        return
    for note in collector_notes(rows, time.time()):
        (st.error if note.level == "error" else st.warning)(note.headline)
        if note.reason:
            st.code(note.reason, language=None)


def load(loader: Callable[[float], T]) -> T | None:
    """A page's data for the selected window; None (with the reason shown) when the store
    cannot be read."""
    try:
        return loader(window_seconds())
    except queries.StoreUnavailable as exc:
        st.error("The store cannot be read.")
        st.code(str(exc), language=None)
    except Exception as exc:  # the page's boundary: say what failed, keep the app running
        show_failure(exc)
    return None


def show_failure(exc: Exception) -> None:
    """A query that failed, as an error box (logged with its traceback), not a stack trace."""
    log.exception("dashboard query failed")
    st.error("Reading the store failed; the page retries on its next refresh.")
    where = store_label(queries.settings().collect.store)
    st.code(f"{type(exc).__name__}: {exc}\nstore: {where}", language=None)


def flow_link(flow_id: str) -> str:
    """A link to a flow in the flow explorer (the id URL-encoded, so it stays inert)."""
    url = urlsplit(st.context.url or "http://127.0.0.1/")
    window = quote(str(st.session_state.get("window") or transforms.DEFAULT_WINDOW))
    return f"{url.scheme}://{url.netloc}/flows?flow={quote(flow_id, safe='')}&window={window}"


def empty(what: str) -> None:
    """An empty state that says what is missing and how to get data."""
    st.info(f"{what} Start the demo with `make demo` (or `flowscope demo`), or point "
            "`flowscope collect` at your own services, and this fills in within seconds.")
