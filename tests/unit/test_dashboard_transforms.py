"""The dashboard's pure transforms: layout, statuses, overview, waterfall, latency, series."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest

from dashboard import charts, layout, transforms, waterfall
from store.contract import (
    DeadLetter,
    EdgeBucket,
    EdgeRow,
    FailedStep,
    FlowCounts,
    FlowRow,
    LatencyBucket,
    Topology,
)
from store.histogram import Histogram
from store.records import GroupLag, Hop, LagRow
from store.vocabulary import FlowStatus

MS = 1_000_000


def _topology() -> Topology:
    nodes = {"api": "service", "jobs": "topic", "worker": "service", "jobs.retry": "topic",
             "done": "topic"}
    edges = [EdgeRow("api", "jobs", 100, 0, 0, 1.0, 2.0),
             EdgeRow("jobs", "worker", 100, 10, 0, 5.0, 40.0, 1.0, 3.0),
             EdgeRow("worker", "jobs.retry", 10, 0, 10, 1.0, 2.0),
             EdgeRow("jobs.retry", "worker", 10, 0, 10, 900.0, 1000.0, 1.0, 2.0),
             EdgeRow("worker", "done", 90, 0, 0, 1.0, 2.0)]
    return Topology(nodes, edges)


def test_edges_get_rates_and_shares_per_window() -> None:
    edges = transforms.build_edges(_topology(), 50)
    consume = edges[(edges["source"] == "jobs")].iloc[0]
    assert consume["kind"] == "consume"
    assert consume["rate"] == 2.0
    assert consume["error_rate"] == pytest.approx(0.1)
    assert edges[edges["source"] == "jobs.retry"].iloc[0]["retry_rate"] == 1.0


def test_rates_are_over_the_part_of_the_window_that_has_data() -> None:
    now_s = 10_000.0
    topology = _topology()
    # data since a minute ago in a 15-minute window: 100 messages are 100/60 a second
    recent = Topology(topology.nodes, topology.edges, first_bucket_s=int(now_s - 60))
    edges = transforms.build_edges(recent, transforms.observed_seconds(
        900, recent.first_bucket_s, now_s))
    assert edges[edges["source"] == "jobs"].iloc[0]["rate"] == pytest.approx(100 / 60)
    # data as old as the window: the whole window
    full = Topology(topology.nodes, topology.edges, first_bucket_s=int(now_s - 905))
    edges = transforms.build_edges(full, transforms.observed_seconds(
        900, full.first_bucket_s, now_s))
    assert edges[edges["source"] == "jobs"].iloc[0]["rate"] == pytest.approx(100 / 900)


@pytest.mark.parametrize(("first_s", "observed"), [
    (None, 900.0), (9_940.0, 60.0), (9_000.0, 900.0), (9_999.0, 10.0), (10_005.0, 10.0)])
def test_observed_seconds_is_the_window_since_the_first_data(first_s: float | None,
                                                              observed: float) -> None:
    assert transforms.observed_seconds(900, first_s, 10_000.0) == observed


def test_layout_puts_each_node_right_of_its_producers_despite_a_retry_loop() -> None:
    topology = _topology()
    nodes = layout.layout_nodes(topology.nodes, transforms.build_edges(topology, 60))
    layer = dict(zip(nodes["node"], nodes["layer"], strict=True))
    assert layer["api"] < layer["jobs"] < layer["worker"] < layer["done"]
    assert layer["jobs.retry"] == layer["worker"] + 1
    assert set(nodes["node"]) == set(topology.nodes)


def test_node_status_follows_the_worst_group_of_the_topic_and_its_service() -> None:
    topology = _topology()
    edges = transforms.build_edges(topology, 60)
    rows = [LagRow("worker-group", "jobs", 0, 1, 9, 8, 2.0, "WARN", 0.0)]
    groups = [GroupLag("worker-group", "ERR", "jobs/0", 8, 2.0, 1.0, 0.5, None, 0.0)]
    statuses = transforms.node_statuses(topology.nodes, edges, rows, groups)
    assert statuses["jobs"] == "ERR"
    assert statuses["worker"] == "ERR"  # the only consumer of jobs
    assert statuses["api"] == "none"


def test_overview_compares_outcomes_with_the_window_before_and_gauges_have_no_change(
) -> None:
    counts = FlowCounts(now=Counter(completed=30), before=Counter(completed=10),
                        started_now=60, started_before=30, in_flight=4, stuck=1)
    shown = {label: (value, delta) for label, value, delta in
             transforms.overview_metrics(counts, window_s=60)}
    assert shown["Flows/s"] == ("1.00", "+0.50")
    assert shown["Completed"] == ("30", "+20")
    assert shown["Failed"] == ("0", "+0")
    assert shown["Stuck"] == ("1", None)
    assert shown["In flight"] == ("4", None)
    # a store that has only seen the last 20 s of the window: 60 flows are 3 a second
    recent = {label: value for label, value, _ in
              transforms.overview_metrics(counts, window_s=60, observed_s=20)}
    assert recent["Flows/s"] == "3.00"


@pytest.mark.parametrize(("group", "words"), [
    (GroupLag("g", "OK", None, 0, 0.0, 5.0, 0.0, None, 0.0), "caught up"),
    (GroupLag("g", "WARN", None, 600, 30.0, 20.0, -10.0, 60.0, 0.0), "caught up in about 60 s"),
    (GroupLag("g", "WARN", None, 600, 30.0, 5.0, 3.0, None, 0.0), "will not catch up"),
    (GroupLag("g", "ERR", None, 600, 30.0, None, None, None, 0.0), "not draining"),
    # one message behind a group that consumes 20 a second is in flight, not falling behind
    (GroupLag("g", "OK", None, 1, 0.3, 20.0, 0.1, None, 0.0), "under a second of work"),
    (GroupLag("g", "OK", None, 30, 1.5, 20.0, 0.1, None, 0.0), "will not catch up"),
    (GroupLag("g", "OK", None, 30, 1.5, 20.0, 0.0, None, 0.0), "the lag holds"),
])
def test_catch_up_text_says_what_will_happen(group: GroupLag, words: str) -> None:
    assert words in transforms.catch_up_text(group)


def _hop(topic: str, start_ms: float, wait_ms: float, work_ms: float = 10.0) -> Hop:
    start = int(start_ms * MS)
    produced = start + 2 * MS
    consumed = produced + int(wait_ms * MS)
    return Hop(topic, 0, 0, "a", "b", "g", start, produced, consumed,
                  consumed + int(work_ms * MS), None, False, "t" * 32)


def test_waterfall_collapses_a_ten_minute_wait_and_keeps_its_true_length() -> None:
    hops = [_hop("jobs", 0, 5), _hop("jobs.retry", 20, 600_000)]
    segments, breaks = waterfall.build_waterfall(hops, collapse_after_ms=2000, collapsed_ms=300)
    wait = segments[(segments["kind"] == "wait") & (segments["hop"].str.contains("retry"))]
    assert wait.iloc[0]["true_ms"] == pytest.approx(600_000)
    assert wait.iloc[0]["width_ms"] == pytest.approx(300, abs=1)
    assert len(breaks) == 1
    assert breaks[0][1] == pytest.approx(600_000, rel=0.001)
    total = (segments["start_ms"] + segments["width_ms"]).max()
    assert total < 400  # readable: the whole flow fits in well under a second of axis


def test_waterfall_draws_short_flows_to_scale() -> None:
    segments, breaks = waterfall.build_waterfall([_hop("jobs", 0, 40)])
    assert not breaks
    assert list(segments["kind"]) == ["produce", "wait", "process"]
    assert list(segments["width_ms"].round(3)) == [2.0, 40.0, 10.0]


def test_latency_series_merges_buckets_into_percentiles_per_flow_type() -> None:
    done = Histogram()
    for value in range(1000, 1100):
        done.add(float(value))
    quick = Histogram()
    quick.add(5.0)
    buckets = [LatencyBucket(0, "done", 60, Histogram(dict(list(done.counts.items())[:3]))),
               LatencyBucket(10, "done", 100, done), LatencyBucket(10, "orders.completed", 1,
                                                                  quick)]
    series = transforms.latency_series(buckets, since_s=0.0, window_s=60.0, points=2)
    first = series[series["flow_type"] == "done"].iloc[0]
    assert first["flows"] == 160  # both buckets fall in the first half of the window
    assert 1000 <= first["p50_ms"] <= 1100 * 1.19
    assert set(series["flow_type"]) == {"done", "orders.completed"}
    assert buckets[1].latency.total == 100  # the store's histograms are not modified


def test_edge_series_fills_quiet_buckets_with_zeros() -> None:
    buckets = [EdgeBucket(100, "a", "t", 20, 0, 2), EdgeBucket(130, "a", "t", 10, 0, 0)]
    series = transforms.edge_series(buckets, 10, since_s=100, now_s=135)
    assert list(series["bucket_start"]) == [100, 110, 120, 130]
    assert list(series["rate"]) == [2.0, 0.0, 0.0, 1.0]
    assert list(series["retry_rate"]) == [0.2, 0.0, 0.0, 0.0]


def test_charts_show_hostile_names_as_text() -> None:
    hostile = "<img src=x onerror=alert(1)>"
    topology = Topology({hostile: "service", "jobs": "topic"},
                        [EdgeRow(hostile, "jobs", 1, 0, 0, 1.0, 1.0)])
    edges = transforms.build_edges(topology, 60)
    figure = charts.flow_map(layout.layout_nodes(topology.nodes, edges), edges,
                             {hostile: "none", "jobs": "none"}, None)
    rendered = [str(value) for trace in figure.data for attribute in ("text", "hovertext")
                for value in (getattr(trace, attribute) or ())]
    assert rendered
    assert not any("<img" in value for value in rendered)
    assert any("&lt;img src=x onerror=alert(1)&gt;" in value for value in rendered)
    assert pd.notna(edges["rate"]).all()


def test_attempts_keep_only_topics_that_saw_a_retry() -> None:
    table = transforms.attempts_table([("jobs", 1, 90), ("jobs.retry", 2, 9), ("jobs.retry", 3, 1),
                                       ("done", 1, 80)])
    assert set(table["topic"]) == {"jobs.retry"}
    assert list(table["messages"]) == [9, 1]


def test_focus_on_a_service_keeps_its_groups_and_on_a_topic_its_partitions() -> None:
    rows = [LagRow(g, t, 0, 1, 2, 1, 0.1, "OK", 0.0) for g, t in (
        ("processor", "jobs"), ("processor-retry", "jobs.retry"), ("env.processor", "x"),
        ("processors", "y"), ("notifier", "jobs"))]
    by_service = transforms.lag_table(rows, "processor")
    assert list(by_service["group"]) == ["processor", "processor-retry", "env.processor"]
    by_topic = transforms.lag_table(rows, "jobs")
    assert list(by_topic["group"]) == ["processor", "notifier"]


def test_dense_lines_drop_their_markers_and_sparse_ones_keep_them() -> None:
    frame = pd.DataFrame({"t": list(range(900)) + list(range(30)),
                          "lag": [1] * 930, "group": ["dense"] * 900 + ["sparse"] * 30})
    figure = charts.lines(frame, "t", "lag", "group", x_title="time", y_title="lag")
    assert {trace.name: trace.mode for trace in figure.data} == {
        "dense": "lines", "sparse": "lines+markers"}


def _link(flow: str) -> str:
    return f"/flows?flow={flow}"


def test_focus_keeps_the_rows_naming_the_node_in_any_given_column() -> None:
    frame = pd.DataFrame({"topic": ["jobs", "done", "jobs"], "service": ["worker", "jobs", "x"]})
    assert transforms.focus_rows(frame, None, ("topic", "service")) is frame
    assert list(transforms.focus_rows(frame, "jobs", ("topic", "service")).index) == [0, 1, 2]
    assert list(transforms.focus_rows(frame, "jobs", ("topic",)).index) == [0, 2]
    assert transforms.focus_rows(frame, "nobody", ("topic", "service")).empty
    edges = transforms.build_edges(_topology(), 60)
    assert set(transforms.focus_edges(edges, "done")["source"]) == {"worker"}


def test_busiest_keeps_the_most_only_past_the_limit() -> None:
    frame = pd.DataFrame({"hop": ["a", "b", "c"], "count": [1, 3, 2]})
    assert transforms.busiest(frame, 3, "count") is frame  # in its own order
    assert list(transforms.busiest(frame, 2, "count")["hop"]) == ["b", "c"]


def test_edge_pairs_are_the_first_edges_or_the_busiest() -> None:
    edges = transforms.build_edges(_topology(), 60)
    assert transforms.edge_pairs(edges, 2) == [("api", "jobs"), ("jobs", "worker")]
    assert transforms.edge_pairs(edges, 2, by="retries") == [("worker", "jobs.retry"),
                                                            ("jobs.retry", "worker")]
    assert transforms.edge_pairs(edges.iloc[0:0], 8) == []


def test_edge_table_has_the_columns_the_map_lists() -> None:
    table = transforms.edge_table(transforms.build_edges(_topology(), 60))
    assert list(table.columns) == ["source", "target", "rate", "count", "p50_ms", "p95_ms",
                                   "processing_p95_ms", "error_rate", "retry_rate"]
    assert len(table) == 5


def _lag_rows() -> list[LagRow]:
    return [LagRow(g, t, p, 1, 1 + lag, lag, 0.1, "OK", 0.0) for g, t, p, lag in (
        ("notifier", "done", 0, 2), ("worker", "jobs", 1, 9), ("worker", "jobs", 0, 9),
        ("api", "x", 0, 1))]


def _groups() -> list[GroupLag]:
    return [GroupLag("notifier", "OK", None, 2, 0.1, 5.0, 0.0, None, 0.0),
            GroupLag("worker", "WARN", None, 18, 3.0, 5.0, 1.0, None, 0.0),
            GroupLag("api", "OK", None, 1, 0.0, 5.0, 0.0, None, 0.0)]


def test_partitions_furthest_behind_come_first() -> None:
    table = transforms.partitions_by_lag(transforms.lag_table(_lag_rows()))
    assert list(zip(table["group"], table["partition"], strict=True)) == [
        ("worker", 0), ("worker", 1), ("notifier", 0), ("api", 0)]


def test_shown_groups_are_those_with_a_partition_shown_furthest_behind_first() -> None:
    partitions = transforms.lag_table(_lag_rows(), "jobs")
    assert [g.group for g in transforms.shown_groups(_groups(), partitions)] == ["worker"]
    every = transforms.shown_groups(_groups(), transforms.lag_table(_lag_rows()))
    assert [g.group for g in every] == ["worker", "notifier", "api"]


def test_group_table_says_how_each_group_is_doing() -> None:
    table = transforms.group_table(transforms.rank_groups(_groups()))
    assert list(table["group"]) == ["worker", "notifier", "api"]
    assert "will not catch up" in table.iloc[0]["outlook"]
    assert list(transforms.group_table([]).columns) == [
        "system", "group", "status", "lag", "lag_seconds", "consume_rate", "lag_rate", "outlook"]


def test_trend_of_keeps_the_given_groups_only() -> None:
    trend = transforms.lag_trend([("worker", 10.0, 5, 1.0), ("api", 10.0, 1, 0.1),
                                  ("worker", 20.0, 7, 1.5)])
    kept = transforms.trend_of(trend, _groups()[1:2])
    assert list(kept["lag"]) == [5, 7]
    assert transforms.trend_of(trend, []).empty


def _letters() -> pd.DataFrame:
    return transforms.dead_letter_table([
        DeadLetter("jobs.dlq", 0, 7, 1_000, "k1", "c1", "flow-1", (("dlq-reason", "boom"),),
                   False),
        DeadLetter("jobs.dlq", 0, 8, 2_000, None, None, None, (), False)])


def test_dead_letters_link_to_their_flow_where_known() -> None:
    letters = transforms.with_flow_links(_letters(), _link)
    assert letters["open"].iloc[0] == "/flows?flow=flow-1"
    assert pd.isna(letters["open"].iloc[1])  # no link: an empty cell
    assert "open" not in _letters().columns  # the letters themselves are left as they were


def test_dead_letter_details_are_those_of_the_chosen_message() -> None:
    assert transforms.dead_letter_details(_letters(), "jobs.dlq.0.7") == {
        "reason": "boom", "correlation_id": "c1", "key": "k1", "headers": "dlq-reason=boom"}


def test_match_table_links_every_match() -> None:
    table = transforms.match_table(["a", "b"], _link)
    assert table.to_dict("records") == [{"flow": "a", "open": "/flows?flow=a"},
                                        {"flow": "b", "open": "/flows?flow=b"}]
    assert list(transforms.match_table([], _link).columns) == ["flow", "open"]


def test_failed_steps_name_where_and_what_failed() -> None:
    table = transforms.failed_step_table([
        FailedStep(2 * 10**9, "worker", "process jobs", "consumer", None, "t" * 32)])
    row = table.iloc[0]
    assert (row["service"], row["step"], row["error"]) == ("worker", "process jobs",
                                                           "(no type given)")
    assert row["at"] == pd.Timestamp(2, unit="s", tz="UTC")
    assert transforms.failed_step_table([]).empty


def test_flow_hop_table_has_each_hop_with_its_times_in_ms() -> None:
    table = transforms.flow_hop_table([_hop("jobs", 0, 40), _hop("jobs.retry", 100, 5)])
    assert list(table["topic"]) == ["jobs", "jobs.retry"]
    assert list(table["queue_ms"]) == [pytest.approx(40.0), pytest.approx(5.0)]
    assert list(table["processing_ms"]) == [pytest.approx(10.0), pytest.approx(10.0)]
    assert list(table["consumer"]) == ["b", "b"]


def test_recent_flow_table_links_each_flow_with_its_duration() -> None:
    flow = FlowRow("order-1", FlowStatus.COMPLETED, 10**9, 10**9 + 25 * MS, 3, 1, 0)
    row = transforms.recent_flow_table([flow], _link).iloc[0]
    assert (row["open"], row["flow"], row["status"]) == ("/flows?flow=order-1", "order-1",
                                                         "completed")
    assert row["duration_ms"] == pytest.approx(25.0)
    assert row["started"] == pd.Timestamp(1, unit="s", tz="UTC")


def test_hop_timing_table_drops_what_the_hop_names_already() -> None:
    hops = transforms.hop_breakdown(transforms.build_edges(_topology(), 60))
    table = transforms.hop_timing_table(hops)
    assert list(table.columns) == ["hop", "count", "queue_p50_ms", "queue_p95_ms",
                                   "processing_p50_ms", "processing_p95_ms"]
    assert set(table["hop"]) == {"jobs → worker", "jobs.retry → worker"}


# -- RabbitMQ next to Kafka ---------------------------------------------------------------------

EXCHANGE, QUEUE = "rabbitmq:exchange:thumbnails", "rabbitmq:queue:thumbnails.jobs"


def _mixed_topology() -> Topology:
    nodes = {"processor": "service", "thumbnailer": "service", "files": "topic",
             EXCHANGE: "exchange", QUEUE: "queue"}
    edges = [EdgeRow("files", "processor", 50, 0, 0, 3.0, 6.0),
             EdgeRow("processor", EXCHANGE, 50, 0, 0, 1.0, 2.0),
             EdgeRow(EXCHANGE, QUEUE, 50, 0, 5, None, None),
             EdgeRow(QUEUE, "thumbnailer", 50, 0, 5, 4.0, 9.0, 2.0, 5.0)]
    return Topology(nodes, edges)


def test_an_exchange_routing_into_a_queue_is_a_route_not_a_consume() -> None:
    edges = transforms.build_edges(_mixed_topology(), 10)
    kinds = dict(zip(zip(edges["source"], edges["target"], strict=True), edges["kind"],
                     strict=True))
    assert kinds == {("files", "processor"): "consume", ("processor", EXCHANGE): "produce",
                     (EXCHANGE, QUEUE): "route", (QUEUE, "thumbnailer"): "consume"}
    assert set(transforms.hop_breakdown(edges)["topic"]) == {"files", QUEUE}


def test_a_queue_s_lag_colours_the_queue_and_its_consumer_not_a_kafka_topic() -> None:
    edges = transforms.build_edges(_mixed_topology(), 10)
    rows = [LagRow("thumbnails.jobs", "thumbnails", None, None, None, 40, 12.0, "STOP", 1.0,
                   "rabbitmq"),
            LagRow("thumbnails.jobs", "files", 0, 5, 5, 0, 0.0, "OK", 1.0)]
    groups = [GroupLag("thumbnails.jobs", "ERR", "STOP", 40, 12.0, None, None, None, 1.0,
                       "rabbitmq"),
              GroupLag("thumbnails.jobs", "OK", None, 0, 0.0, None, None, 0.0, 1.0)]
    statuses = transforms.node_statuses(_mixed_topology().nodes, edges, rows, groups)
    assert statuses[QUEUE] == "ERR"
    assert statuses["thumbnailer"] == "ERR"
    assert statuses["files"] == "OK"  # the Kafka group of the same name is fine
    assert statuses[EXCHANGE] == "none"
    table = transforms.lag_table(rows, QUEUE)
    assert list(table["system"]) == ["rabbitmq"]
    assert [(g.system, g.group) for g in transforms.shown_groups(groups, table)] == \
        [("rabbitmq", "thumbnails.jobs")]


def test_the_flow_map_draws_each_system_s_nodes_in_their_own_shape_with_a_legend() -> None:
    topology = _mixed_topology()
    edges = transforms.build_edges(topology, 10)
    nodes = layout.layout_nodes(topology.nodes, edges)
    figure = charts.flow_map(nodes, edges, {}, None)
    legend = {t.name: (t.marker.symbol, list(t.text)) for t in figure.data if t.showlegend}
    assert legend == {"services": ("circle", ["processor", "thumbnailer"]),
                      "Kafka topics": ("square", ["files"]),
                      "RabbitMQ exchanges": ("diamond", ["thumbnails"]),
                      "RabbitMQ queues": ("hexagon", ["thumbnails.jobs"])}


def test_a_flow_s_hops_say_their_system_exchange_routing_key_and_queue() -> None:
    kafka = _hop("files", 0, 40)
    rabbit = Hop("thumbnails", None, None, "processor", "thumbnailer", None, 10**9, 10**9,
                 10**9 + 5 * MS, 10**9 + 9 * MS, None, False, "t" * 32, system="rabbitmq",
                 queue="thumbnails.jobs", routing_key="render")
    table = transforms.flow_hop_table([kafka, rabbit])
    assert list(table["system"]) == ["kafka", "rabbitmq"]
    assert table.iloc[1][["topic", "routing_key", "queue"]].tolist() == \
        ["thumbnails", "render", "thumbnails.jobs"]
    assert table.iloc[0][["routing_key", "queue"]].isna().all()
    assert table.iloc[1]["queue_ms"] == pytest.approx(5.0)


def test_queues_no_span_names_are_drawn_where_the_broker_binds_them() -> None:
    topology = _mixed_topology()
    dead = LagRow("thumbnails.dlq", "thumbnails", None, None, None, 3, 40.0, "STOP", 1.0,
                  "rabbitmq", 3, 0, 0)
    known = LagRow("thumbnails.jobs", "thumbnails", None, None, None, 0, 0.0, "OK", 1.0,
                   "rabbitmq", 0, 0, 2)
    elsewhere = LagRow("orphan", "unseen-exchange", None, None, None, 0, 0.0, "OK", 1.0,
                       "rabbitmq", 0, 0, 0)
    kafka = LagRow("g", "files", 0, 1, 1, 0, 0.0, "OK", 1.0)
    drawn = transforms.with_bound_queues(topology, [dead, known, elsewhere, kafka])
    assert drawn.nodes["rabbitmq:queue:thumbnails.dlq"] == "queue"
    assert "rabbitmq:queue:orphan" not in drawn.nodes  # its exchange is not on the map
    added = [e for e in drawn.edges if e not in topology.edges]
    assert [(e.source, e.target, e.count) for e in added] == [
        (EXCHANGE, "rabbitmq:queue:thumbnails.dlq", 0)]
    edges = transforms.build_edges(drawn, 10)
    assert edges.loc[edges["target"] == "rabbitmq:queue:thumbnails.dlq", "kind"].tolist() == \
        ["route"]
    assert transforms.with_bound_queues(topology, [known, kafka]) is topology


# -- NATS next to Kafka and RabbitMQ ---------------------------------------------------------

STREAM, CONSUMER = "nats:topic:SHIPMENTS", "nats:consumer:SHIPMENTS/tracking"
STATUS_SUBJECT = "nats:topic:tracking.status.*"


def _nats_topology() -> Topology:
    topology = _mixed_topology()
    nodes = {**topology.nodes, "shipping": "service", "tracking": "service", "portal": "service",
             STREAM: "topic", CONSUMER: "consumer", STATUS_SUBJECT: "topic"}
    edges = [*topology.edges,
             EdgeRow("shipping", STREAM, 30, 0, 0, 1.0, 2.0),
             EdgeRow(STREAM, CONSUMER, 30, 0, 3, None, None),
             EdgeRow(CONSUMER, "tracking", 30, 1, 3, 5.0, 20.0, 2.0, 4.0),
             EdgeRow("tracking", STATUS_SUBJECT, 29, 0, 0, 0.5, 1.0),
             EdgeRow(STATUS_SUBJECT, "portal", 29, 0, 0, 0.4, 0.9, 0.1, 0.2)]
    return Topology(nodes, edges)


def test_a_jetstream_consumer_s_lag_colours_the_consumer_and_its_service() -> None:
    topology = _nats_topology()
    edges = transforms.build_edges(topology, 10)
    kinds = dict(zip(zip(edges["source"], edges["target"], strict=True), edges["kind"],
                     strict=True))
    assert kinds[(STREAM, CONSUMER)] == "route"
    assert kinds[(CONSUMER, "tracking")] == kinds[(STATUS_SUBJECT, "portal")] == "consume"
    rows = [LagRow("tracking", "SHIPMENTS", None, 90, 130, 40, 12.0, "STALL", 1.0, "nats",
                   38, 2, None)]
    groups = [GroupLag("tracking", "ERR", "STALL", 40, 12.0, 0.0, 3.0, None, 1.0, "nats")]
    assert transforms.lag_node(rows[0]) == CONSUMER
    statuses = transforms.node_statuses(topology.nodes, edges, rows, groups)
    assert (statuses[CONSUMER], statuses["tracking"], statuses[STREAM]) == ("ERR", "ERR", "none")
    table = transforms.lag_table(rows, CONSUMER)
    assert table[["system", "group", "topic", "committed", "end"]].values.tolist() == \
        [["nats", "tracking", "SHIPMENTS", 90, 130]]
    legend = {t.name: t.marker.symbol for t in charts.flow_map(
        layout.layout_nodes(topology.nodes, edges), edges, statuses, None).data
        if t.showlegend}
    assert (legend["NATS subjects and streams"], legend["JetStream consumers"]) == \
        ("pentagon", "octagon")


def test_jetstream_consumers_no_span_names_are_drawn_from_their_stream() -> None:
    topology = _nats_topology()
    audit = LagRow("audit", "SHIPMENTS", None, 0, 130, 130, 60.0, "STOP", 1.0, "nats",
                   130, 0, None)
    drawn = transforms.with_bound_queues(topology, [audit])
    assert drawn.nodes["nats:consumer:SHIPMENTS/audit"] == "consumer"
    assert [(e.source, e.target, e.count) for e in drawn.edges if e not in topology.edges] == \
        [(STREAM, "nats:consumer:SHIPMENTS/audit", 0)]
