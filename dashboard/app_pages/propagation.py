"""Propagation health: per topic and producer, the share of messages with trace context."""

import streamlit as st

from dashboard import charts, controls, queries, transforms

st.title("Trace-context propagation")
CHARTED = 60  # bars of the chart; the table lists every topic and producer


def render() -> None:
    """The share of tapped messages that carry a valid W3C traceparent."""
    loaded = controls.load(queries.propagation)
    if loaded is None:
        return
    data = transforms.focus_rows(loaded, controls.focus(), ("topic", "producer"))
    if data.empty:
        controls.empty("No tapped messages in this window (the collector's tap reads them).")
        return
    charted = transforms.busiest(data, CHARTED, "messages")
    st.plotly_chart(charts.propagation(charted), width="stretch")
    if len(data) > len(charted):
        st.caption(f"The chart shows the {CHARTED} topics and producers with the most "
                   f"messages; the table all {len(data):,}.")
    st.caption("Green: every message carries trace context; amber: some; red: under half. "
               "Producer 'unknown': no send span names the message (an uninstrumented "
               f"producer). Computed on the newest {queries.PROPAGATION_SAMPLE:,} tapped "
               "messages of the window.")
    st.dataframe(transforms.cut_columns(data), hide_index=True, width="stretch", column_config={
        "messages": st.column_config.NumberColumn("messages"),
        "with_context": st.column_config.NumberColumn("with trace context"),
        # green like the chart: a full bar is the healthy state
        "share": st.column_config.ProgressColumn("share with trace context", format="percent",
                                                 min_value=0.0, max_value=1.0, color="green")})


controls.live(render)
