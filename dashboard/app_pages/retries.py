"""Retries and dead letters: retry shares per topic and service, attempts, dead letters."""

import json

import streamlit as st

from dashboard import charts, controls, queries, transforms

st.title("Retries & dead letters")


def render() -> None:
    """Retry shares, the attempt distribution, retries over time and the dead letters."""
    focus = controls.focus()
    data = controls.load(lambda window: queries.retries(window, focus))
    if data is None:
        return
    rates = transforms.focus_rows(data.rates, focus, ("topic", "service"))
    if rates.empty:
        controls.empty("Nothing was consumed in this window yet.")
        return
    left, right = st.columns(2)
    left.subheader("Retry rate per topic and service")
    if data.edges_total > queries.MAP_EDGES:
        first = ", the focused node's first" if focus else ""
        left.caption(f"Of the {queries.MAP_EDGES:,} edges with the most retries{first}; "
                     f"{data.edges_total - queries.MAP_EDGES:,} edges left out.")
    left.dataframe(transforms.cut_columns(rates), hide_index=True, width="stretch", column_config={
        "count": st.column_config.NumberColumn("messages"),
        "retry_rate": st.column_config.ProgressColumn("retried", format="percent",
                                                      min_value=0.0, max_value=1.0,
                                                      color="red"),
        "error_rate": st.column_config.NumberColumn("failed", format="percent")})
    right.subheader("Attempts")
    attempts = transforms.focus_rows(data.attempts, focus, ("topic",))
    if attempts.empty:
        right.info("No tapped message of this window was a retry (or the collector's tap "
                   "is off).")
    else:
        right.plotly_chart(charts.attempts(attempts), width="stretch")
        right.caption(f"The newest {queries.ATTEMPTS_SAMPLE:,} tapped messages of the window.")
    retried = transforms.focus_edges(data.retried, focus)
    pairs = transforms.edge_pairs(retried, queries.SERIES_EDGES)
    series = controls.load(lambda window: queries.edge_series(window, pairs)) if pairs else None
    if series is not None and not series.empty:
        st.subheader("Retries over time")
        if len(retried) > len(pairs):
            st.caption(f"The {len(pairs)} edges with the most retries; "
                       f"{len(retried) - len(pairs):,} more left out.")
        st.plotly_chart(charts.lines(series, "time", "retry_rate", "edge", x_title="time (UTC)",
                                     y_title="retries/s"), width="stretch")
    st.subheader("Dead letters")
    letters = transforms.focus_rows(data.dead_letters, focus, ("topic",))
    if letters.empty:
        st.success("No message was dead-lettered in this window.")
        return
    letters = transforms.with_flow_links(letters, controls.flow_link)
    st.dataframe(transforms.cut_columns(letters, keep=["open"]), hide_index=True,
                 width="stretch", column_config={
                     "time": st.column_config.DatetimeColumn("time (UTC)", format="HH:mm:ss"),
                     "open": st.column_config.LinkColumn("flow", display_text="open flow"),
                     "flow": None})
    chosen = st.selectbox("Dead letter", list(letters["message"]), key="dead_letter",
                          format_func=transforms.cut_text,
                          help="topic.partition.offset of the message whose details to show")
    # Header values come from other systems: shown in a code block, as text, never markup.
    st.code(json.dumps(transforms.dead_letter_details(letters, chosen), indent=2,
                       ensure_ascii=False), language="json")


controls.live(render)
