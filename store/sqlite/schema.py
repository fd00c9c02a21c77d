"""The SQLite schema of the store, versioned."""

from store.vocabulary import CONSUMES, SENDS, sql_list

# 2: flow_latency_buckets, search and time indexes, the covering status index (a version-1
# store is migrated in place when the collector opens it).
# 3: collector_health (each component's state, for the dashboard).
# 4: hops_from_batches (a partial index, so that asking whether any hop came from a batch
# consume reads nothing when none did); spans_by_flow replaced by sends_by_flow and
# failures_by_flow (partial: a consume span that did not fail is in neither); edge_rollups.
# 5: messaging systems: spans and hops keep their system, queue and routing key; lag rows
# and groups their system (a queue's row has no partition: -1 in the table), a queue's row
# its ready and unacknowledged messages and its consumers.
SCHEMA_VERSION = 5
MIGRATES_FROM = (1, 2, 3, 4)
# Columns added since a table was first made: (table, column, type), added by the migration.
ADDED_COLUMNS = (("spans", "queue", "TEXT"), ("spans", "routing_key", "TEXT"),
                 ("hops", "system", "TEXT"), ("hops", "queue", "TEXT"),
                 ("hops", "routing_key", "TEXT"))
# Tables whose key changed: a migration moves their rows into the new table (every row of
# them was Kafka's).
REKEYED = ("lag_current", "lag_samples", "lag_groups")

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE IF NOT EXISTS spans (
    trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_span_id TEXT,
    links TEXT,  -- 'trace:span' pairs, comma-separated
    service TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL,
    start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL, error INTEGER NOT NULL, error_type TEXT,
    operation TEXT, system TEXT, topic TEXT, partition INTEGER, "offset" INTEGER,
    message_id TEXT, consumer_group TEXT, correlation_id TEXT, message_key TEXT,
    retry_attempt INTEGER, batch_count INTEGER, flow_id TEXT NOT NULL, queue TEXT,
    routing_key TEXT, PRIMARY KEY (trace_id, span_id)
) WITHOUT ROWID;
-- A flow's spans are read for its sends (those no consumer took) and its failures only; a
-- flow keyed by a trace ID holds spans of that trace alone, so moving it to a correlation ID
-- goes by the primary key. Two partial indexes instead of one over every span.
DROP INDEX IF EXISTS spans_by_flow;
CREATE INDEX IF NOT EXISTS sends_by_flow ON spans (flow_id) WHERE operation IN {sql_list(SENDS)};
CREATE INDEX IF NOT EXISTS failures_by_flow ON spans (flow_id, start_ns) WHERE error = 1;
-- Partial indexes: only sends are looked up by message id, only consumes by parent.
CREATE INDEX IF NOT EXISTS sends_by_message ON spans (message_id)
    WHERE message_id IS NOT NULL AND operation IN {sql_list(SENDS)};
CREATE INDEX IF NOT EXISTS sends_by_key ON spans (message_key)
    WHERE message_key IS NOT NULL AND operation IN {sql_list(SENDS)};
CREATE INDEX IF NOT EXISTS consumes_by_parent ON spans (trace_id, parent_span_id)
    WHERE parent_span_id IS NOT NULL AND operation IN {sql_list(CONSUMES)};

-- Links of consume spans, so that a producer span arriving late finds its consumers.
CREATE TABLE IF NOT EXISTS span_links (
    linked_trace_id TEXT NOT NULL, linked_span_id TEXT NOT NULL,
    trace_id TEXT NOT NULL, span_id TEXT NOT NULL,
    PRIMARY KEY (linked_trace_id, linked_span_id, trace_id, span_id)
) WITHOUT ROWID;

-- One row per message per consuming service: a produce matched with its consume, or a
-- consume whose producer is not known (yet): hop_key starts with '?'.
CREATE TABLE IF NOT EXISTS hops (
    hop_key TEXT PRIMARY KEY,
    producer_trace_id TEXT, producer_span_id TEXT,
    consumer_trace_id TEXT NOT NULL, consumer_span_id TEXT NOT NULL, consumer_is_batch INTEGER,
    flow_id TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER, "offset" INTEGER,
    message_id TEXT, producer_service TEXT, consumer_service TEXT NOT NULL,
    consumer_group TEXT, produce_start_ns INTEGER, produce_end_ns INTEGER,
    consume_start_ns INTEGER NOT NULL, consume_end_ns INTEGER NOT NULL,
    retry_attempt INTEGER, error INTEGER NOT NULL, system TEXT, queue TEXT, routing_key TEXT
);
CREATE INDEX IF NOT EXISTS hops_by_flow ON hops (flow_id);
CREATE INDEX IF NOT EXISTS hops_waiting ON hops (message_id) WHERE producer_span_id IS NULL;
CREATE INDEX IF NOT EXISTS hops_from_batches ON hops (hop_key) WHERE consumer_is_batch = 1;

-- Per edge and time bucket: counts and mergeable latency histograms (JSON).
CREATE TABLE IF NOT EXISTS edge_buckets (
    bucket_start INTEGER NOT NULL, source TEXT NOT NULL, source_kind TEXT NOT NULL,
    target TEXT NOT NULL, target_kind TEXT NOT NULL,
    count INTEGER NOT NULL, errors INTEGER NOT NULL, retries INTEGER NOT NULL,
    latency TEXT, processing TEXT,
    PRIMARY KEY (bucket_start, source, target)
) WITHOUT ROWID;

-- The same per edge and 5-minute bucket (first_bucket: the earliest edge bucket merged into
-- it), so that a window of an hour merges a dozen histograms per edge, not 360. Written with
-- edge_buckets from the store's rollups_since on (meta), and read from there on.
CREATE TABLE IF NOT EXISTS edge_rollups (
    bucket_start INTEGER NOT NULL, source TEXT NOT NULL, source_kind TEXT NOT NULL,
    target TEXT NOT NULL, target_kind TEXT NOT NULL,
    count INTEGER NOT NULL, errors INTEGER NOT NULL, retries INTEGER NOT NULL,
    latency TEXT, processing TEXT, first_bucket INTEGER NOT NULL,
    PRIMARY KEY (bucket_start, source, target)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS flows (
    flow_id TEXT PRIMARY KEY, started_ns INTEGER NOT NULL, last_ns INTEGER NOT NULL,
    hops INTEGER NOT NULL, retries INTEGER NOT NULL, errors INTEGER NOT NULL,
    flags INTEGER NOT NULL, services TEXT NOT NULL, topics TEXT NOT NULL, trace_ids TEXT NOT NULL
) WITHOUT ROWID;
-- Covering the status counts of a window (the dashboard's overview) without table lookups.
DROP INDEX IF EXISTS flows_by_last;
CREATE INDEX IF NOT EXISTS flows_by_last_status ON flows (last_ns, flags, errors, started_ns);

-- End-to-end latency of flows as they reach a completion topic, per flow type (that topic)
-- and time bucket of the completion: a mergeable histogram (JSON), as for edges.
CREATE TABLE IF NOT EXISTS flow_latency_buckets (
    bucket_start INTEGER NOT NULL, flow_type TEXT NOT NULL, count INTEGER NOT NULL,
    latency TEXT NOT NULL, PRIMARY KEY (bucket_start, flow_type)
) WITHOUT ROWID;

-- Consumer lag: the latest poll of every partition (or queue: partition -1) and group (or
-- queue), and the history of partitions, per messaging system.
CREATE TABLE IF NOT EXISTS lag_current (
    "group" TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL,
    committed INTEGER, "end" INTEGER, lag INTEGER, lag_seconds REAL, status TEXT NOT NULL,
    at_s REAL NOT NULL, system TEXT NOT NULL, ready INTEGER, unacknowledged INTEGER,
    consumers INTEGER, PRIMARY KEY (system, "group", topic, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lag_samples (
    "group" TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL,
    committed INTEGER, "end" INTEGER, lag INTEGER, lag_seconds REAL, status TEXT NOT NULL,
    at_s REAL NOT NULL, system TEXT NOT NULL, ready INTEGER, unacknowledged INTEGER,
    consumers INTEGER, PRIMARY KEY (system, "group", at_s, topic, partition)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS lag_samples_by_time ON lag_samples (at_s);
CREATE TABLE IF NOT EXISTS lag_groups (
    "group" TEXT NOT NULL, status TEXT NOT NULL, worst_partition TEXT, lag INTEGER NOT NULL,
    lag_seconds REAL, consume_rate REAL, lag_rate REAL, catch_up_s REAL, at_s REAL NOT NULL,
    system TEXT NOT NULL, PRIMARY KEY (system, "group")
) WITHOUT ROWID;

-- Messages seen by the tap, by their coordinates; headers only for dead-letter topics.
CREATE TABLE IF NOT EXISTS messages (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" INTEGER NOT NULL,
    timestamp_ms INTEGER NOT NULL, "key" TEXT, size INTEGER NOT NULL, correlation_id TEXT,
    trace_id TEXT, retry_attempt INTEGER, headers TEXT, truncated INTEGER NOT NULL,
    flow_id TEXT, message_id TEXT NOT NULL,
    PRIMARY KEY (topic, partition, "offset")
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_by_time ON messages (timestamp_ms);
CREATE INDEX IF NOT EXISTS messages_by_key ON messages ("key") WHERE "key" IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_by_flow ON messages (flow_id) WHERE flow_id IS NOT NULL;

-- What could not be placed, and other counters, by name.
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);

-- The collector's components as its last health report saw them (at_s: that report's time,
-- so that a reader can tell a collector that stopped reporting).
CREATE TABLE IF NOT EXISTS collector_health (
    component TEXT PRIMARY KEY, state TEXT NOT NULL, reason TEXT, since_s REAL NOT NULL,
    restarts INTEGER NOT NULL, at_s REAL NOT NULL
) WITHOUT ROWID;
"""
