"""Latency: end-to-end percentiles over time per flow type, and where the time goes."""

import streamlit as st

from dashboard import charts, controls, queries, transforms

st.title("Latency")
BREAKDOWN_HOPS = 30  # bars of the chart; the table lists every hop


def render() -> None:
    """Percentiles of completed flows over time, and queue against processing per hop."""
    focus = controls.focus()
    data = controls.load(lambda window: queries.latency(window, focus))
    if data is None:
        return
    if data.series.empty and data.hops.empty:
        controls.empty("No completed flows in this window yet.")
        return
    st.subheader("End-to-end latency of completed flows")
    if data.series.empty:
        st.info("No flow reached a completion topic in this window.")
    else:
        st.plotly_chart(charts.latency(data.series), width="stretch")
        st.caption("Flow type: the completion topic a flow reached. Dotted p50, solid p95, "
                   "dashed p99.")
    st.subheader("Where the time goes, per hop")
    hops = transforms.focus_rows(data.hops, focus, ("topic", "service"))
    if data.edges_total > queries.MAP_EDGES:
        first = ", the focused node's first" if focus else ""
        st.caption(f"Hops of the {queries.MAP_EDGES:,} busiest edges{first}; "
                   f"{data.edges_total - queries.MAP_EDGES:,} edges left out.")
    if not hops.empty:
        charted = transforms.busiest(hops, BREAKDOWN_HOPS, "count")
        st.plotly_chart(charts.breakdown(charted), width="stretch")
        if len(hops) > len(charted):
            st.caption(f"The chart shows the {len(charted)} busiest hops; the table all "
                       f"{len(hops):,}.")
        st.dataframe(transforms.cut_columns(transforms.hop_timing_table(hops)),
                     hide_index=True, width="stretch", column_config={
            c: st.column_config.NumberColumn(c.replace("_ms", " (ms)"), format="%.1f")
            for c in ("queue_p50_ms", "queue_p95_ms", "processing_p50_ms",
                      "processing_p95_ms")})


controls.live(render)
