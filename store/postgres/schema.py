"""The PostgreSQL schema of the store, versioned, and its time partitions.

The tables hold what the SQLite store's hold, with the same columns. The raw tables (spans,
hops, tapped messages, lag history) are partitioned by time, so that retention drops whole
partitions; rows outside the partitions' window (a clock far off, a hostile timestamp) go to
each table's default partition. Every text column compares byte by byte (COLLATE "C"): the
store's key ranges and sorted lists mean code point order, whatever the database's locale.
"""

from __future__ import annotations

from dataclasses import dataclass

from store.vocabulary import CONSUMES, SENDS, sql_list

# 1: the first PostgreSQL schema (that of the SQLite store's version 5). Every whole number a
# span or message brings is BIGINT: SQLite holds any int64, and one hostile value must not
# make a batch fail here that SQLite takes.
SCHEMA_VERSION = 1
# SQL for each version after the first, applied in order by the first collector that opens a
# store of an older version: (version it brings the store to, its statements).
MIGRATIONS: tuple[tuple[int, str], ...] = ()

TEXT = 'TEXT COLLATE "C"'


@dataclass(frozen=True)
class Partitioned:
    """A raw table partitioned by ranges of one time column (units: of that column per
    second)."""

    table: str
    column: str
    units: int


PARTITIONED = (Partitioned("spans", "end_ns", 10**9),
               Partitioned("hops", "consume_end_ns", 10**9),
               Partitioned("messages", "timestamp_ms", 1000),
               Partitioned("lag_samples", "at_s", 1))

# The histogram text of store.histogram ({"bucket": count}) merged by adding counts, so that
# collectors writing one edge bucket at once add up in the database.
HISTOGRAM_MERGE = """
CREATE OR REPLACE FUNCTION flowscope_histogram_merge(a text, b text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT COALESCE((SELECT jsonb_object_agg(k, n)::text FROM (
    SELECT k, SUM(v::bigint) AS n FROM (
      SELECT * FROM jsonb_each_text(COALESCE(NULLIF(a, ''), '{}')::jsonb)
      UNION ALL SELECT * FROM jsonb_each_text(COALESCE(NULLIF(b, ''), '{}')::jsonb)) e(k, v)
    GROUP BY k) s), '{}')
$$;
-- Two sorted JSON lists of names as one, sorted by code point, at most `keep` long.
CREATE OR REPLACE FUNCTION flowscope_names_merge(a text, b text, keep integer) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT COALESCE((SELECT jsonb_agg(x ORDER BY x COLLATE "C")::text FROM (
    SELECT x FROM (
      SELECT jsonb_array_elements_text(a::jsonb) UNION ALL
      SELECT jsonb_array_elements_text(b::jsonb)) u(x)
    GROUP BY x ORDER BY x COLLATE "C" LIMIT keep) s), '[]')
$$;
"""

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key {TEXT} PRIMARY KEY, value {TEXT} NOT NULL);

CREATE TABLE IF NOT EXISTS spans (
    trace_id {TEXT} NOT NULL, span_id {TEXT} NOT NULL, parent_span_id {TEXT},
    links {TEXT},
    service {TEXT} NOT NULL, name {TEXT} NOT NULL, kind {TEXT} NOT NULL,
    start_ns BIGINT NOT NULL, end_ns BIGINT NOT NULL, error SMALLINT NOT NULL,
    error_type {TEXT}, operation {TEXT}, system {TEXT}, topic {TEXT}, partition BIGINT,
    "offset" BIGINT, message_id {TEXT}, consumer_group {TEXT}, correlation_id {TEXT},
    message_key {TEXT}, retry_attempt BIGINT, batch_count BIGINT, flow_id {TEXT} NOT NULL,
    queue {TEXT}, routing_key {TEXT}, PRIMARY KEY (trace_id, span_id, end_ns)
) PARTITION BY RANGE (end_ns);
CREATE INDEX IF NOT EXISTS sends_by_flow ON spans (flow_id) WHERE operation IN {sql_list(SENDS)};
CREATE INDEX IF NOT EXISTS failures_by_flow ON spans (flow_id, start_ns) WHERE error = 1;
CREATE INDEX IF NOT EXISTS sends_by_message ON spans (message_id)
    WHERE message_id IS NOT NULL AND operation IN {sql_list(SENDS)};
CREATE INDEX IF NOT EXISTS sends_by_key ON spans (message_key)
    WHERE message_key IS NOT NULL AND operation IN {sql_list(SENDS)};
CREATE INDEX IF NOT EXISTS consumes_by_parent ON spans (trace_id, parent_span_id)
    WHERE parent_span_id IS NOT NULL AND operation IN {sql_list(CONSUMES)};

CREATE TABLE IF NOT EXISTS span_links (
    linked_trace_id {TEXT} NOT NULL, linked_span_id {TEXT} NOT NULL,
    trace_id {TEXT} NOT NULL, span_id {TEXT} NOT NULL,
    PRIMARY KEY (linked_trace_id, linked_span_id, trace_id, span_id)
);

CREATE TABLE IF NOT EXISTS hops (
    hop_key {TEXT} NOT NULL,
    producer_trace_id {TEXT}, producer_span_id {TEXT},
    consumer_trace_id {TEXT} NOT NULL, consumer_span_id {TEXT} NOT NULL,
    consumer_is_batch SMALLINT,
    flow_id {TEXT} NOT NULL, topic {TEXT} NOT NULL, partition BIGINT, "offset" BIGINT,
    message_id {TEXT}, producer_service {TEXT}, consumer_service {TEXT} NOT NULL,
    consumer_group {TEXT}, produce_start_ns BIGINT, produce_end_ns BIGINT,
    consume_start_ns BIGINT NOT NULL, consume_end_ns BIGINT NOT NULL,
    retry_attempt BIGINT, error SMALLINT NOT NULL, system {TEXT}, queue {TEXT},
    routing_key {TEXT}, PRIMARY KEY (hop_key, consume_end_ns)
) PARTITION BY RANGE (consume_end_ns);
CREATE INDEX IF NOT EXISTS hops_by_flow ON hops (flow_id);
CREATE INDEX IF NOT EXISTS hops_waiting ON hops (message_id) WHERE producer_span_id IS NULL;
CREATE INDEX IF NOT EXISTS hops_from_batches ON hops (hop_key) WHERE consumer_is_batch = 1;

CREATE TABLE IF NOT EXISTS edge_buckets (
    bucket_start BIGINT NOT NULL, source {TEXT} NOT NULL, source_kind {TEXT} NOT NULL,
    target {TEXT} NOT NULL, target_kind {TEXT} NOT NULL,
    count BIGINT NOT NULL, errors BIGINT NOT NULL, retries BIGINT NOT NULL,
    latency {TEXT}, processing {TEXT},
    PRIMARY KEY (bucket_start, source, target)
);
CREATE TABLE IF NOT EXISTS edge_rollups (
    bucket_start BIGINT NOT NULL, source {TEXT} NOT NULL, source_kind {TEXT} NOT NULL,
    target {TEXT} NOT NULL, target_kind {TEXT} NOT NULL,
    count BIGINT NOT NULL, errors BIGINT NOT NULL, retries BIGINT NOT NULL,
    latency {TEXT}, processing {TEXT}, first_bucket BIGINT NOT NULL,
    PRIMARY KEY (bucket_start, source, target)
);

CREATE TABLE IF NOT EXISTS flows (
    flow_id {TEXT} PRIMARY KEY, started_ns BIGINT NOT NULL, last_ns BIGINT NOT NULL,
    hops BIGINT NOT NULL, retries BIGINT NOT NULL, errors BIGINT NOT NULL,
    flags INTEGER NOT NULL, services {TEXT} NOT NULL, topics {TEXT} NOT NULL,
    trace_ids {TEXT} NOT NULL
);
CREATE INDEX IF NOT EXISTS flows_by_last_status ON flows (last_ns, flags, errors, started_ns);

CREATE TABLE IF NOT EXISTS flow_latency_buckets (
    bucket_start BIGINT NOT NULL, flow_type {TEXT} NOT NULL, count BIGINT NOT NULL,
    latency {TEXT} NOT NULL, PRIMARY KEY (bucket_start, flow_type)
);

CREATE TABLE IF NOT EXISTS lag_current (
    "group" {TEXT} NOT NULL, topic {TEXT} NOT NULL, partition BIGINT NOT NULL,
    committed BIGINT, "end" BIGINT, lag BIGINT, lag_seconds DOUBLE PRECISION,
    status {TEXT} NOT NULL, at_s DOUBLE PRECISION NOT NULL, system {TEXT} NOT NULL,
    ready BIGINT, unacknowledged BIGINT, consumers BIGINT,
    PRIMARY KEY (system, "group", topic, partition)
);
CREATE TABLE IF NOT EXISTS lag_samples (
    "group" {TEXT} NOT NULL, topic {TEXT} NOT NULL, partition BIGINT NOT NULL,
    committed BIGINT, "end" BIGINT, lag BIGINT, lag_seconds DOUBLE PRECISION,
    status {TEXT} NOT NULL, at_s DOUBLE PRECISION NOT NULL, system {TEXT} NOT NULL,
    ready BIGINT, unacknowledged BIGINT, consumers BIGINT,
    PRIMARY KEY (system, "group", at_s, topic, partition)
) PARTITION BY RANGE (at_s);
CREATE INDEX IF NOT EXISTS lag_samples_by_time ON lag_samples (at_s);
CREATE TABLE IF NOT EXISTS lag_groups (
    "group" {TEXT} NOT NULL, status {TEXT} NOT NULL, worst_partition {TEXT}, lag BIGINT NOT NULL,
    lag_seconds DOUBLE PRECISION, consume_rate DOUBLE PRECISION, lag_rate DOUBLE PRECISION,
    catch_up_s DOUBLE PRECISION, at_s DOUBLE PRECISION NOT NULL, system {TEXT} NOT NULL,
    PRIMARY KEY (system, "group")
);

CREATE TABLE IF NOT EXISTS messages (
    topic {TEXT} NOT NULL, partition BIGINT NOT NULL, "offset" BIGINT NOT NULL,
    timestamp_ms BIGINT NOT NULL, "key" {TEXT}, size BIGINT NOT NULL, correlation_id {TEXT},
    trace_id {TEXT}, retry_attempt BIGINT, headers {TEXT}, truncated SMALLINT NOT NULL,
    flow_id {TEXT}, message_id {TEXT} NOT NULL,
    PRIMARY KEY (topic, partition, "offset", timestamp_ms)
) PARTITION BY RANGE (timestamp_ms);
CREATE INDEX IF NOT EXISTS messages_by_time ON messages (timestamp_ms);
CREATE INDEX IF NOT EXISTS messages_by_key ON messages ("key") WHERE "key" IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_by_flow ON messages (flow_id) WHERE flow_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS counters (name {TEXT} PRIMARY KEY, value BIGINT NOT NULL);

-- Every collector's components as its last report saw them (collector: host:pid).
CREATE TABLE IF NOT EXISTS collector_health (
    collector {TEXT} NOT NULL, component {TEXT} NOT NULL, state {TEXT} NOT NULL,
    reason {TEXT}, since_s DOUBLE PRECISION NOT NULL, restarts INTEGER NOT NULL,
    at_s DOUBLE PRECISION NOT NULL, PRIMARY KEY (collector, component)
);
""" + "".join(f"CREATE TABLE IF NOT EXISTS {p.table}_default PARTITION OF {p.table} DEFAULT;\n"
              for p in PARTITIONED) + HISTOGRAM_MERGE

TABLES = ("meta", "spans", "span_links", "hops", "edge_buckets", "edge_rollups", "flows",
          "flow_latency_buckets", "lag_current", "lag_samples", "lag_groups", "messages",
          "counters", "collector_health")


def partition_width(raw_retention_s: float) -> int:
    """The width of a raw table's partition, in seconds: a quarter of the raw retention, in
    whole hours from one hour to one day, so that retention drops about one partition in
    four and a lookup by key probes a handful."""
    return int(min(max(raw_retention_s / 4 // 3600, 1), 24)) * 3600
