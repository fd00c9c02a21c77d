"""Latency: end-to-end percentiles over time per flow type, and where the time goes."""

import streamlit as st

from dashboard import charts, controls, queries

st.title("Latency")


def render() -> None:
    """Percentiles of completed flows over time, and queue against processing per hop."""
    data = controls.load(queries.latency)
    if data is None:
        return
    assert isinstance(data, queries.Latency)
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
    hops = data.hops
    focus = controls.focus()
    if focus:
        hops = hops[(hops["topic"] == focus) | (hops["service"] == focus)]
    if not hops.empty:
        st.plotly_chart(charts.breakdown(hops), width="stretch")
        st.dataframe(hops.drop(columns=["topic", "service"]), hide_index=True, width="stretch",
                     column_config={
            c: st.column_config.NumberColumn(c.replace("_ms", " (ms)"), format="%.1f")
            for c in ("queue_p50_ms", "queue_p95_ms", "processing_p50_ms",
                      "processing_p95_ms")})


controls.live(render)
