"""Lag: per consumer group, topic and partition; the trend, and when a group catches up."""

import pandas as pd
import streamlit as st

from dashboard import charts, controls, queries, transforms

st.title("Consumer lag")
TRENDS = 8


def render() -> None:
    """Groups with their status and catch-up estimate, the trend, then every partition."""
    data = controls.load(queries.lag)
    if data is None:
        return
    assert isinstance(data, queries.Lag)
    if not data.groups:
        controls.empty("No consumer-group lag has been polled yet.")
        return
    focus = controls.focus()
    partitions = transforms.lag_table(data.rows, focus)
    shown = set(partitions["group"])
    ranked = transforms.rank_groups([g for g in data.groups if g.group in shown])
    groups = pd.DataFrame([{
        "group": g.group, "status": g.status, "lag": g.lag, "lag_seconds": g.lag_seconds,
        "consume_rate": g.consume_rate, "lag_rate": g.lag_rate,
        "outlook": transforms.catch_up_text(g)} for g in ranked],
        columns=["group", "status", "lag", "lag_seconds", "consume_rate", "lag_rate",
                 "outlook"])
    st.subheader("Consumer groups, furthest behind first")
    st.dataframe(transforms.cut_columns(groups), hide_index=True, width="stretch", column_config={
        "lag": st.column_config.NumberColumn("lag (messages)"),
        "lag_seconds": st.column_config.NumberColumn("lag (s)", format="%.1f"),
        "consume_rate": st.column_config.NumberColumn("consuming (msg/s)", format="%.1f"),
        "lag_rate": st.column_config.NumberColumn("lag change (msg/s)", format="%+.1f"),
        "outlook": st.column_config.TextColumn("catch-up", width="large")})
    charted = [g.group for g in ranked[:TRENDS]]
    trend = data.trend[data.trend["group"].isin(charted)]
    if trend.empty:
        st.info("No lag history in this window yet.")
    else:
        st.subheader(f"Trend of the {len(charted)} groups furthest behind")
        left, right = st.columns(2)
        left.plotly_chart(charts.lines(trend, "time", "lag", "group", x_title="time (UTC)",
                                       y_title="offset lag (messages)"), width="stretch")
        right.plotly_chart(charts.lines(trend, "time", "lag_seconds", "group",
                                        x_title="time (UTC)", y_title="lag (s)"),
                           width="stretch")
    st.subheader("Partitions")
    partitions = transforms.cut_columns(partitions.sort_values(
        ["lag", "group", "topic", "partition"], ascending=[False, True, True, True]))
    st.dataframe(partitions, hide_index=True, width="stretch", column_config={
        "lag": st.column_config.NumberColumn("lag (messages)"),
        "lag_seconds": st.column_config.NumberColumn("lag (s)", format="%.1f")})


controls.live(render)
