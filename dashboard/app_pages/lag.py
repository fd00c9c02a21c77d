"""Lag: per consumer group (topic and partition), per queue (RabbitMQ, Artemis) and per
JetStream consumer; the trend, and when each catches up."""

import streamlit as st

from dashboard import charts, controls, queries, transforms

st.title("Consumer lag")
TRENDS = 8


def render() -> None:
    """Groups with their status and catch-up estimate, the trend, then every partition."""
    data = controls.load(queries.lag)
    if data is None:
        return
    if not data.groups:
        controls.empty("No consumer-group, queue or JetStream consumer lag has been polled yet.")
        return
    focus = controls.focus()
    partitions = transforms.lag_table(data.rows, focus)
    ranked = transforms.shown_groups(data.groups, partitions)
    st.subheader("Consumer groups, queues and JetStream consumers, furthest behind first")
    st.dataframe(transforms.cut_columns(transforms.group_table(ranked)), hide_index=True,
                 width="stretch", column_config={
        "lag": st.column_config.NumberColumn("lag (messages)"),
        "lag_seconds": st.column_config.NumberColumn("lag (s)", format="%.1f"),
        "consume_rate": st.column_config.NumberColumn("consuming (msg/s)", format="%.1f"),
        "lag_rate": st.column_config.NumberColumn("lag change (msg/s)", format="%+.1f"),
        "outlook": st.column_config.TextColumn("catch-up", width="large")})
    charted = ranked[:TRENDS]
    trend = transforms.trend_of(data.trend, charted)
    if trend.empty:
        st.info("No lag history in this window yet.")
    else:
        st.subheader(f"Trend of the {len(charted)} furthest behind")
        left, right = st.columns(2)
        left.plotly_chart(charts.lines(trend, "time", "lag", "group", x_title="time (UTC)",
                                       y_title="lag (messages)"), width="stretch")
        right.plotly_chart(charts.lines(trend, "time", "lag_seconds", "group",
                                        x_title="time (UTC)", y_title="lag (s)"),
                           width="stretch")
    st.subheader("Partitions, queues and JetStream consumers")
    st.dataframe(transforms.cut_columns(transforms.partitions_by_lag(partitions)),
                 hide_index=True, width="stretch", column_config={
        "lag": st.column_config.NumberColumn("lag (messages)"),
        "lag_seconds": st.column_config.NumberColumn("lag (s)", format="%.1f")})


controls.live(render)
