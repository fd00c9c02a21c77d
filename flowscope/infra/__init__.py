"""Native infrastructure: a single-node Kafka broker and Jaeger v2, started without Docker."""
