"""The embedded backend: one SQLite file in WAL mode, one writer, many readers."""
