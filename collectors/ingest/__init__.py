"""Span ingest: OTLP/HTTP, and the OTLP spans topic in Kafka; both feed one pipeline."""
