"""Flow derivation, written once for every backend: hops (a send matched with its consume),
flows by correlation ID, and the edge and latency aggregates. FlowWriter (writer.py) is what
the collector writes through; it asks the store only for the set-based reads and idempotent
writes of store.contract.SpanWrites."""
