"""Plotly figures from the frames in transforms.py; no Streamlit here.

Names of services, topics and hops come from other people's systems. Plotly renders a few
HTML tags inside text, so every such string goes through `safe` (HTML-escaped: shown as typed).
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboard.transforms import TEXT_LIMIT, cut_text
from store.vocabulary import node_parts

# One palette for the whole dashboard.
STATUS_COLORS = {"OK": "#2e7d32", "WARN": "#f9a825", "ERR": "#c62828", "STOP": "#c62828",
                 "STALL": "#c62828", "REWIND": "#c62828", "none": "#90a4ae"}
SEGMENT_COLORS = {"produce": "#5c6bc0", "wait": "#cfd8dc", "process": "#26a69a"}
ERROR_COLOR = "#e53935"
PERCENTILE_DASH = {"p50_ms": "dot", "p95_ms": "solid", "p99_ms": "dash"}
HEIGHT = 360
LABEL_LIMIT = 60  # characters of a name drawn on a chart; hovers show up to TEXT_LIMIT
BREAK_LABELS = 12  # collapsed stretches of a waterfall labelled with their length, at most


def safe(text: object, limit: int = TEXT_LIMIT) -> str:
    """Untrusted text as Plotly shows it literally, cut to `limit` characters (before it is
    escaped, so that no entity is cut in half)."""
    return html.escape(cut_text(text, limit), quote=True)


def distinct(labels: list[str]) -> list[str]:
    """Labels made distinct with a counter where cutting made two alike: a bar chart draws
    bars of one label on one row."""
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out


def _layout(fig: go.Figure, x_title: str, y_title: str, height: int = HEIGHT) -> go.Figure:
    fig.update_layout(height=height, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0},
                      template="plotly_white")
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text=y_title)
    return fig


# How the flow map draws each kind of node, by (system, kind): a marker and a legend entry.
NODE_STYLES = {(None, "service"): ("circle", 26, "services"),
               ("kafka", "topic"): ("square", 20, "Kafka topics"),
               ("rabbitmq", "exchange"): ("diamond", 22, "RabbitMQ exchanges"),
               ("rabbitmq", "queue"): ("hexagon", 22, "RabbitMQ queues"),
               ("nats", "topic"): ("pentagon", 22, "NATS subjects and streams"),
               ("nats", "consumer"): ("octagon", 22, "JetStream consumers"),
               ("activemq", "address"): ("diamond-wide", 22, "Artemis addresses"),
               ("activemq", "queue"): ("hexagon2", 22, "Artemis queues")}
OTHER_STYLE = ("triangle-up", 20, "{system} {kind}s")


def node_style(system: str | None, kind: str) -> tuple[str, int, str]:
    """(marker symbol, size, legend name) of a node of this system and kind."""
    symbol, size, name = NODE_STYLES.get((system, kind), OTHER_STYLE)
    return symbol, size, name.format(system=system, kind=kind)


def flow_map(nodes: pd.DataFrame, edges: pd.DataFrame, statuses: dict[str, str],
             focus: str | None) -> go.Figure:
    """Services and where messages go (Kafka topics, RabbitMQ exchanges and queues, NATS
    subjects, streams and JetStream consumers, Artemis addresses and queues, each its own
    shape, with a legend) left to right, coloured by the lag status of the consumer group,
    queue or JetStream consumer; each edge labelled with messages/s, p95 wait, error and
    retry shares."""
    position = {n: (x, y) for n, x, y in zip(nodes["node"], nodes["x"], nodes["y"], strict=True)}
    parts = {n: node_parts(n, k) for n, k in zip(nodes["node"], nodes["kind"], strict=True)}
    prefix = common_prefix([parts[n][1] for n, k in zip(nodes["node"], nodes["kind"],
                                                        strict=True) if k != "service"])
    fig = go.Figure()
    # One layout update for every arrow: each add_annotation copies all the annotations
    # before it, so adding them one by one takes time quadratic in the edges.
    arrows = [_arrow(position[e.source], position[e.target], e.error_rate, e.rate,
                     bool(focus) and focus not in (e.source, e.target))
              for e in edges.itertuples()]
    # Labels sit 40% of the way along: an edge and its reverse (a retry loop) stay apart.
    labels = edges.assign(
        mx=[0.6 * position[s][0] + 0.4 * position[t][0]
            for s, t in zip(edges["source"], edges["target"], strict=True)],
        my=[0.6 * position[s][1] + 0.4 * position[t][1] + 0.08
            for s, t in zip(edges["source"], edges["target"], strict=True)])
    fig.add_trace(go.Scatter(
        x=labels["mx"], y=labels["my"], mode="text", name="edges", showlegend=False,
        text=[_edge_label(e) for e in labels.itertuples()], textfont={"size": 10},
        hovertext=[_edge_hover(e) for e in labels.itertuples()], hoverinfo="text",
        # Choosing an edge focuses on where its messages wait or go: a send on its topic or
        # exchange, a consume on its topic or queue, a route on its queue.
        customdata=[s if k == "consume" else t for s, t, k in zip(
            labels["source"], labels["target"], labels["kind"], strict=True)]))
    styles = {(parts[n][0], k) for n, k in zip(nodes["node"], nodes["kind"], strict=True)}
    for system, kind in sorted(styles, key=lambda s: (s[1] != "service", str(s[0]), s[1])):
        symbol, size, legend = node_style(system, kind)
        part = nodes[[k == kind and parts[n][0] == system
                      for n, k in zip(nodes["node"], nodes["kind"], strict=True)]]
        fig.add_trace(go.Scatter(
            x=part["x"], y=part["y"], mode="markers+text", name=safe(legend, LABEL_LIMIT),
            showlegend=True,
            marker={"symbol": symbol, "size": size,
                    "color": [STATUS_COLORS.get(statuses.get(n, "none"), "#90a4ae")
                              for n in part["node"]],
                    "line": {"width": [4 if n == focus else 1 for n in part["node"]],
                             "color": "#263238"}},
            text=[safe(parts[n][1] if kind == "service" else
                       parts[n][1].removeprefix(prefix), LABEL_LIMIT) for n in part["node"]],
            textposition="top center", textfont={"size": 11},
            hovertext=[f"{safe(legend, LABEL_LIMIT)[:-1]} {safe(parts[n][1])}<br>"
                       f"lag status: {safe(statuses.get(n, 'none'))}" for n in part["node"]],
            hoverinfo="text", customdata=list(part["node"])))
    if prefix:
        arrows.append({"x": 0, "y": 1, "xref": "paper", "yref": "paper", "showarrow": False,
                       "xanchor": "left", "text": f"names: {safe(prefix, LABEL_LIMIT)}…",
                       "font": {"size": 11}})
    fig.update_layout(annotations=arrows)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(height=max(HEIGHT, 90 * (int(nodes.groupby("layer").size().max())
                                                 if not nodes.empty else 1)),
                      margin={"l": 10, "r": 10, "t": 30, "b": 10}, template="plotly_white",
                      clickmode="event+select",
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 0.3})
    return fig


def _arrow(start: tuple[float, float], end: tuple[float, float], error_rate: float,
           rate: float, dimmed: bool) -> dict[str, object]:
    """An edge of the flow map as an arrow annotation (no text)."""
    return {"x": end[0], "y": end[1], "ax": start[0], "ay": start[1], "xref": "x", "yref": "y",
            "axref": "x", "ayref": "y", "showarrow": True, "arrowhead": 2, "arrowsize": 1.2,
            "standoff": 14, "startstandoff": 14, "arrowwidth": 1 + min(3.0, rate / 20),
            "arrowcolor": ERROR_COLOR if error_rate > 0.05 else "#78909c",
            "opacity": 0.25 if dimmed else 0.9, "text": ""}


def common_prefix(names: list[str]) -> str:
    """The dotted prefix every name shares (a demo's or an environment's), or ''."""
    if len(names) < 2:
        return ""
    shared = min(names)
    for name in names:
        while not name.startswith(shared):
            shared = shared[:-1]
    return shared[:shared.rfind(".") + 1]


def _edge_label(edge) -> str:  # type: ignore[no-untyped-def]
    parts = [f"{edge.rate:.1f}/s"]
    if edge.kind == "consume" and edge.p95_ms is not None and not pd.isna(edge.p95_ms):
        parts.append(f"p95 {edge.p95_ms:.0f} ms")
    if edge.error_rate:
        parts.append(f"err {edge.error_rate:.0%}")
    if edge.retry_rate:
        parts.append(f"retry {edge.retry_rate:.0%}")
    return " · ".join(parts)


def _edge_hover(edge) -> str:  # type: ignore[no-untyped-def]
    wait = "" if edge.p95_ms is None or pd.isna(edge.p95_ms) else f"{edge.p95_ms:.1f} ms"
    what = "p95 time in queue" if edge.kind == "consume" else "p95 send time"
    return (f"{safe(edge.source)} → {safe(edge.target)}<br>{edge.count:,} messages "
            f"({edge.rate:.2f}/s)<br>{what}: {wait or 'n/a'}<br>errors {edge.errors:,} "
            f"({edge.error_rate:.1%}), retries {edge.retries:,} ({edge.retry_rate:.1%})")


MARKERS_UP_TO = 120  # points per line; past that a marker each is clutter, and one SVG node each


def lines(frame: pd.DataFrame, x: str, y: str, color: str, *, x_title: str, y_title: str
          ) -> go.Figure:
    """One line per value of `color` (a group, an edge, a flow type); sparse lines have a
    marker at each point, dense ones (a 15-minute lag trend polled every second) do not."""
    fig = go.Figure()
    for name, part in frame.groupby(color, sort=True):
        mode = "lines+markers" if len(part) <= MARKERS_UP_TO else "lines"
        fig.add_trace(go.Scatter(x=part[x], y=part[y], mode=mode, name=safe(name, LABEL_LIMIT),
                                 marker={"size": 4}))
    fig.update_yaxes(rangemode="tozero")
    return _layout(fig, x_title, y_title)


def attempts(frame: pd.DataFrame) -> go.Figure:
    """Messages per attempt number, one bar colour per topic."""
    fig = go.Figure()
    for topic, part in frame.groupby("topic", sort=True):
        fig.add_trace(go.Bar(x=part["attempt"], y=part["messages"],
                             name=safe(topic, LABEL_LIMIT)))
    fig.update_layout(barmode="group")
    fig.update_xaxes(dtick=1)
    return _layout(fig, "attempt (1 = first try)", "messages")


def waterfall(segments: pd.DataFrame, breaks: list[tuple[float, float]]) -> go.Figure:
    """A flow's hops in time order: producing, waiting in the topic (hatched) and processing;
    long idle stretches collapsed and marked with their true length."""
    fig = go.Figure()
    names = {"produce": "producing", "wait": "waiting in topic", "process": "processing"}
    # One colour per trace, failed steps a trace of their own: Plotly checks a list of
    # colours one by one, seconds for a long flow.
    for kind, failed in (("produce", False), ("wait", False), ("process", False),
                         ("process", True)):
        part = segments[(segments["kind"] == kind) & (segments["error"] == failed)]
        if failed and part.empty:
            continue
        fig.add_trace(go.Bar(
            y=[safe(h, LABEL_LIMIT) for h in part["hop"]], x=part["width_ms"],
            base=part["start_ms"], orientation="h",
            name="failed" if failed else names[kind],
            marker={"color": ERROR_COLOR if failed else SEGMENT_COLORS[kind],
                    "pattern": {"shape": "/" if kind == "wait" else ""}},
            customdata=part["true_ms"].to_numpy(dtype=float),
            hovertemplate=f"{kind}: %{{customdata:,.1f}} ms<extra></extra>"))
    # Every collapsed stretch is a dotted line, all of them one trace on an axis of their own
    # (0 to 1, top to bottom): Plotly takes a thousand shapes or add_vline calls in seconds.
    if breaks:  # x, x, NaN per line: a NaN ends a line (arrays: Plotly checks lists slowly)
        lines_x = np.repeat(np.array([x for x, _ in breaks], dtype=float), 3)
        lines_x[2::3] = np.nan
        fig.add_trace(go.Scatter(
            x=lines_x, y=np.tile([0.0, 1.0, np.nan], len(breaks)), yaxis="y2", mode="lines",
            line={"dash": "dot", "color": "#455a64", "width": 1}, hoverinfo="skip",
            showlegend=False))
    span = float((segments["start_ms"] + segments["width_ms"]).max()) if breaks else 0.0
    fig.update_layout(
        yaxis={"autorange": "reversed"},
        yaxis2={"overlaying": "y", "range": [0, 1], "visible": False, "fixedrange": True},
        annotations=[{"x": x, "y": 1.0, "yref": "paper", "yanchor": "bottom",
                      "showarrow": False, "text": f"⋯ {_ms_text(true_ms)} collapsed",
                      "font": {"size": 10}} for x, true_ms in labelled_breaks(breaks, span)])
    fig.update_layout(barmode="overlay", legend={"y": 1.12})
    rows = segments["row"].nunique() if not segments.empty else 1
    return _layout(fig, "time since the flow started (ms; long idle stretches collapsed)", "hop",
                   height=max(220, 60 + 38 * rows))


def labelled_breaks(breaks: list[tuple[float, float]], span: float
                    ) -> list[tuple[float, float]]:
    """The collapsed stretches a waterfall labels: the longest first, each at least a
    BREAK_LABELS-th of the axis (`span`) from the others, so that no two labels overlap."""
    chosen: list[tuple[float, float]] = []
    for position, true_ms in sorted(breaks, key=lambda b: b[1], reverse=True):
        if all(abs(position - other) >= span / BREAK_LABELS for other, _ in chosen):
            chosen.append((position, true_ms))
            if len(chosen) == BREAK_LABELS:
                break
    return chosen


def _ms_text(ms: float) -> str:
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    return f"{ms / 60_000:.1f} min"


def latency(series: pd.DataFrame) -> go.Figure:
    """End-to-end latency percentiles over time, one colour per flow type."""
    fig = go.Figure()
    for flow_type, part in series.groupby("flow_type", sort=True):
        for column, dash in PERCENTILE_DASH.items():
            fig.add_trace(go.Scatter(
                x=part["time"], y=part[column], mode="lines", line={"dash": dash},
                legendgroup=safe(flow_type),
                name=f"{safe(flow_type, LABEL_LIMIT)} {column.removesuffix('_ms')}"))
    return _layout(fig, "time (UTC)", "end-to-end latency (ms)")


def breakdown(hops: pd.DataFrame) -> go.Figure:
    """Where the time goes per hop: p95 waiting in the topic against p95 processing."""
    fig = go.Figure()
    labels = distinct([safe(h, LABEL_LIMIT) for h in hops["hop"]])
    fig.add_trace(go.Bar(y=labels, x=hops["queue_p95_ms"], orientation="h",
                         name="waiting in topic (p95)",
                         marker={"color": SEGMENT_COLORS["wait"], "pattern": {"shape": "/"}}))
    fig.add_trace(go.Bar(y=labels, x=hops["processing_p95_ms"], orientation="h",
                         name="processing (p95)", marker={"color": SEGMENT_COLORS["process"]}))
    fig.update_layout(barmode="stack")
    return _layout(fig, "time (ms)", "hop (topic → service)",
                   height=max(HEIGHT, 40 + 30 * len(hops)))


def propagation(frame: pd.DataFrame) -> go.Figure:
    """Share of messages with a valid trace context per topic and producer."""
    labels = distinct([f"{safe(t, LABEL_LIMIT)} ← {safe(p, LABEL_LIMIT)}"
                       for t, p in zip(frame["topic"], frame["producer"], strict=True)])
    colors = [STATUS_COLORS["OK"] if s >= 0.99 else STATUS_COLORS["WARN"] if s >= 0.5
              else STATUS_COLORS["ERR"] for s in frame["share"]]
    fig = go.Figure(go.Bar(y=labels, x=frame["share"] * 100, orientation="h",
                           marker={"color": colors}))
    fig.update_xaxes(range=[0, 100])
    return _layout(fig, "messages with a valid traceparent (%)", "topic ← producer",
                   height=max(HEIGHT, 40 + 28 * len(frame)))
