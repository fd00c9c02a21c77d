"""Flow explorer: find one flow by correlation ID, trace ID, message key or message id, and
see its hops as a waterfall, with a link to its trace in Jaeger."""

import json
import re

import streamlit as st

from dashboard import charts, controls, queries, transforms, waterfall
from store.contract import FlowRow

st.title("Flow explorer")
st.text_input("Search", key="flow", bind="query-params",
              placeholder="correlation ID, trace ID, message key or topic.partition.offset")
TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
TEXT_LINE = 1000  # characters of a flow's services or topics, listed on one line


def render() -> None:
    """One flow when the search names one, else the newest flows."""
    text = (st.session_state.get("flow") or "").strip()
    if text:
        found = controls.load(lambda _window: queries.flow(text))
        if found is not None:
            show_search(found)
    else:
        flows = controls.load(queries.recent_flows)
        if flows is not None:
            show_recent(flows)


def show_search(found: queries.FoundFlow) -> None:
    """The flow a search names (and the others it also matched)."""
    matches, flow, hops = found.matches, found.flow, found.hops
    if flow is None:
        st.warning("No flow matches this search in the store.")
        return
    if len(matches) > 1:
        st.caption(f"{len(matches)} flows match; showing the first. The others:")
        st.dataframe(transforms.cut_columns(
            transforms.match_table(matches[1:], controls.flow_link), keep=["open"]),
                     hide_index=True, column_config={"open": st.column_config.LinkColumn(
                         "", display_text="open")})
    started = transforms.utc_time(flow.started_ns)
    columns = st.columns(5)
    columns[0].metric("Status", flow.status)
    columns[1].metric("Hops", flow.hops)
    columns[2].metric("Retries", flow.retries)
    columns[3].metric("Errors", flow.errors)
    columns[4].metric("Duration", transforms.duration_text((flow.ended_ns - flow.started_ns)
                                                           / 1e9))
    st.text(f"Flow {transforms.cut_text(flow.id)}\n"
            f"started {started:%Y-%m-%d %H:%M:%S.%f} UTC\n"
            f"services: {transforms.cut_text(', '.join(flow.services), TEXT_LINE)}\n"
            f"topics: {transforms.cut_text(', '.join(flow.topics), TEXT_LINE)}")
    settings = queries.settings()
    jaeger = settings.dashboard.jaeger_ui_url
    traces = [t for t in flow.trace_ids if TRACE_ID.match(t)]
    if jaeger and traces:
        for column, trace_id in zip(st.columns(min(len(traces), 4)), traces[:4], strict=False):
            column.link_button(f"Trace {trace_id[:8]}… in Jaeger", f"{jaeger}/trace/{trace_id}")
            # Jaeger built from source serves no web UI; its query API always answers.
            column.link_button("as JSON", f"{settings.jaeger.query_url}/api/traces/{trace_id}",
                               type="tertiary")
    if found.failed_steps:
        st.subheader("Failed steps")
        # error types are the instrumented code's text: a table shows them as text only
        st.dataframe(transforms.cut_columns(transforms.failed_step_table(found.failed_steps)),
            hide_index=True, width="stretch", column_config={
                "at": st.column_config.DatetimeColumn("at (UTC)", format="HH:mm:ss.SSS")})
    for letter in found.dead_letters.itertuples():
        st.subheader("Dead-lettered")
        # Header values come from other systems: a code block shows them as text only.
        st.code(json.dumps({"message": letter.message, "reason": letter.reason,
                            "key": letter.key, "headers": letter.headers}, indent=2,
                           ensure_ascii=False), language="json")
    if found.hops_left_out:
        st.caption(f"The first {len(hops):,} of this flow's {len(hops) + found.hops_left_out:,} "
                   f"hops are shown, in time order; {found.hops_left_out:,} left out.")
    segments, breaks = waterfall.build_waterfall(hops)
    if segments.empty:
        st.info("This flow has no timed hops yet (its spans may still be on their way).")
        return
    st.plotly_chart(charts.waterfall(segments, breaks), width="stretch", key="waterfall")
    if len(breaks) > charts.BREAK_LABELS:
        st.caption(f"{len(breaks):,} idle stretches collapsed (dotted lines); the longest "
                   "are labelled with their length, as many as fit.")
    st.dataframe(transforms.cut_columns(transforms.flow_hop_table(hops)), hide_index=True,
                 width="stretch", column_config={
        "queue_ms": st.column_config.NumberColumn("queue (ms)", format="%.1f"),
        "processing_ms": st.column_config.NumberColumn("processing (ms)", format="%.1f")})


def show_recent(flows: list[FlowRow]) -> None:
    """The newest flows of the window, each a link to itself."""
    if not flows:
        controls.empty("No flows in this window yet.")
        return
    st.subheader("Newest flows")
    st.dataframe(transforms.cut_columns(transforms.recent_flow_table(flows, controls.flow_link),
                                        keep=["open"]),
        hide_index=True, width="stretch", column_config={
            "open": st.column_config.LinkColumn("", display_text="open"),
            "started": st.column_config.DatetimeColumn("started (UTC)", format="HH:mm:ss"),
            "duration_ms": st.column_config.NumberColumn("duration (ms)", format="%.1f")})


controls.live(render)
