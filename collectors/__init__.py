"""Collectors: turn spans, message headers and offsets into hops, flows and lag in the store."""
