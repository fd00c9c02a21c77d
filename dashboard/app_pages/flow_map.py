"""Flow map: the overview, then producer -> topic (or exchange -> queue) -> consumer as a
graph, and its edges."""

from functools import partial

import streamlit as st

from dashboard import charts, controls, queries, transforms

st.title("Flow map")


def render() -> None:
    """The overview metrics, the graph and the edge table, narrowed to the focus."""
    controls.apply_focus_request()
    focus = controls.focus()
    data = controls.load(lambda window: queries.flow_map(window, focus))
    if data is None:
        return
    columns = st.columns(len(data.metrics) + 1)
    inverse = {"Failed", "Dead-lettered", "Stuck"}
    for column, (label, value, delta) in zip(columns, data.metrics, strict=False):
        column.metric(label, value, None if delta in ("+0", "+0.00") else delta,
                      delta_color="inverse" if label in inverse else "normal")
    worst = data.worst
    columns[-1].metric("Worst lag", "-" if worst is None else
                       transforms.duration_text(worst.lag_seconds)
                       if worst.lag_seconds is not None else f"{worst.lag:,} msgs")
    if worst is not None:
        columns[-1].text(f"{worst.group} ({worst.status}, {worst.lag:,} msgs)")
    if data.edges.empty:
        controls.empty("No flows in this window yet.")
        return
    # A new key for each focus: a click is read once, then forgotten. The click is read in a
    # callback: the live map changes at every refresh, and a changed figure is a new chart to
    # Streamlit, whose own selection would be lost on the rerun the click starts.
    key = f"flow_map:{focus}"
    st.plotly_chart(charts.flow_map(data.nodes, data.edges, data.statuses, focus), key=key,
                    on_select=partial(_clicked, key, frozenset(data.statuses)),
                    selection_mode="points", width="stretch")
    st.caption("Shapes: services, Kafka topics, RabbitMQ exchanges and queues, NATS subjects "
               "and JetStream consumers, Artemis addresses and queues (legend above); "
               "colour: worst lag status of the consumer groups or queues (green OK, "
               "amber WARN, red ERR, grey none). Edge labels: messages/s, p95 time in queue, "
               "error and retry shares. Click a node, or an edge's label for its topic or "
               "queue, to focus every page on it.")
    if data.edges_total > len(data.edges):
        which = "the focused node's first, then the busiest" if focus else "the busiest"
        st.caption(f"{len(data.edges):,} edges of {data.edges_total:,} shown ({which}); "
                   f"{data.edges_total - len(data.edges):,} left out.")
    edges = transforms.focus_edges(data.edges, focus)
    st.subheader("Edges" + (" (focused)" if focus else ""))
    st.dataframe(transforms.cut_columns(transforms.edge_table(edges)), hide_index=True,
                 width="stretch", column_config={
                     "rate": st.column_config.NumberColumn("msg/s", format="%.2f"),
                     "count": st.column_config.NumberColumn("messages"),
                     "p50_ms": st.column_config.NumberColumn("p50 queue/send (ms)",
                                                             format="%.1f"),
                     "p95_ms": st.column_config.NumberColumn("p95 queue/send (ms)",
                                                             format="%.1f"),
                     "processing_p95_ms": st.column_config.NumberColumn(
                         "p95 processing (ms)", format="%.1f"),
                     "error_rate": st.column_config.NumberColumn("errors", format="percent"),
                     "retry_rate": st.column_config.NumberColumn("retries",
                                                                 format="percent")})
    pairs = transforms.edge_pairs(edges, queries.SERIES_EDGES, by="count")
    series = controls.load(lambda window: queries.edge_series(window, pairs))
    if series is not None and not series.empty:
        st.subheader("Throughput")
        st.plotly_chart(charts.lines(series, "time", "rate", "edge", x_title="time (UTC)",
                                     y_title="messages/s"), width="stretch")


def _clicked(key: str, nodes: frozenset[str]) -> None:
    """on_select of the map: the node a click picked becomes every page's focus."""
    event = st.session_state.get(key) or {}
    points = event.get("selection", {}).get("points", [])
    clicked = [p.get("customdata") for p in points if p.get("customdata") in nodes]
    if clicked:
        controls.request_focus(clicked[0])


controls.live(render)
