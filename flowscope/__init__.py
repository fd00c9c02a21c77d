"""Flowscope: command line, settings and the native infrastructure (Kafka, Jaeger)."""

__version__ = "0.1.0"
