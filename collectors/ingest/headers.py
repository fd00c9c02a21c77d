"""Message headers from other people's systems: decoded safely, bounded, never trusted.

A value that is not UTF-8 is kept as hex and marked; a value or a header set that is too long
is cut and marked as truncated. Nothing here raises on any input.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

MAX_VALUE = 512
MAX_HEADERS = 32
TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def header_text(value: bytes | None, limit: int = MAX_VALUE) -> tuple[str | None, bool]:
    """(text, truncated): UTF-8 text, else 'hex:...' of the bytes; cut at limit characters."""
    if value is None:
        return None, False
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = "hex:" + value.hex()
    if len(text) > limit:
        return text[:limit], True
    return text, False


def first_header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> bytes | None:
    """The value of the first header called name (case-insensitive)."""
    for key, value in headers or ():
        if isinstance(key, str) and key.lower() == name:
            return value
    return None


def trace_id_of(traceparent: bytes | None) -> str | None:
    """The trace ID of a valid W3C traceparent, else None (missing, garbage, all zeros)."""
    if not traceparent or len(traceparent) > 128:
        return None
    try:
        match = TRACEPARENT.match(traceparent.decode("ascii").strip())
    except UnicodeDecodeError:
        return None
    if not match or match[1] == "ff" or set(match[2]) == {"0"} or set(match[3]) == {"0"}:
        return None
    return match[2]


def bounded_headers(headers: Sequence[tuple[str, bytes]] | None
                    ) -> tuple[list[tuple[str, str | None]], bool]:
    """All headers as (name, text) pairs, bounded in count and length; and whether anything
    was cut."""
    shown: list[tuple[str, str | None]] = []
    truncated = False
    for index, (key, value) in enumerate(headers or ()):
        if index >= MAX_HEADERS:
            return shown, True
        name, cut_name = header_text(key.encode("utf-8", "replace") if isinstance(key, str)
                                     else bytes(key), 128)
        text, cut_value = header_text(value)
        truncated = truncated or cut_name or cut_value
        shown.append((name or "", text))
    return shown, truncated
