"""Propagation health: per topic and producer, the share of messages with trace context."""

import streamlit as st

from dashboard import charts, controls, queries

st.title("Trace-context propagation")


def render() -> None:
    """The share of tapped messages that carry a valid W3C traceparent."""
    data = controls.load(queries.propagation)
    if data is None:
        return
    focus = controls.focus()
    if focus:
        data = data[(data["topic"] == focus) | (data["producer"] == focus)]
    if data.empty:
        controls.empty("No tapped messages in this window (the collector's tap reads them).")
        return
    st.plotly_chart(charts.propagation(data), width="stretch")
    st.caption("Green: every message carries trace context; amber: some; red: under half. "
               "Producer 'unknown': no send span names the message (an uninstrumented "
               f"producer). Computed on the newest {queries.PROPAGATION_SAMPLE:,} tapped "
               "messages of the window.")
    st.dataframe(data, hide_index=True, width="stretch", column_config={
        "messages": st.column_config.NumberColumn("messages"),
        "with_context": st.column_config.NumberColumn("with trace context"),
        # green like the chart: a full bar is the healthy state
        "share": st.column_config.ProgressColumn("share with trace context", format="percent",
                                                 min_value=0.0, max_value=1.0, color="green")})


controls.live(render)
