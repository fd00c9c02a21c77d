"""Demo services: instrumented event-driven services (OpenTelemetry and aiokafka only)."""
