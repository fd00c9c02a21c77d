"""Decode OTLP export requests from the wire: protobuf or JSON, plain or gzip."""

from __future__ import annotations

import base64
import gzip
import json
import zlib
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

ID_FIELDS = ("traceId", "spanId", "parentSpanId")


class BadPayload(ValueError):
    """A body that is not an OTLP export request; the message says why."""


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """The body without its Content-Encoding; BadPayload past limit bytes or when corrupt."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding != "gzip":
        raise BadPayload(f"unsupported Content-Encoding {encoding!r} (use gzip or none)")
    try:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        data = inflater.decompress(body, limit + 1)
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise BadPayload(f"corrupt gzip body: {exc}") from None
    if len(data) > limit:
        raise OverflowError(f"decompressed body exceeds {limit} bytes")
    if not inflater.eof:  # a cut-off stream inflates without error, minus its tail
        raise BadPayload("truncated gzip body (the stream ends before its trailer)")
    return data


def _hex_ids_to_base64(document: Any) -> Any:
    """OTLP/JSON writes ids as hex; protobuf's JSON mapping wants base64. Walked with a stack
    of its own, so that no nesting depth can exhaust Python's."""
    stack = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ID_FIELDS and isinstance(value, str) and value:
                    try:
                        node[key] = base64.b64encode(bytes.fromhex(value)).decode()
                    except ValueError:
                        raise BadPayload(f"{key} {value[:40]!r} is not hex") from None
                elif isinstance(value, dict | list):
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(item for item in node if isinstance(item, dict | list))
    return document


def is_json(content_type: str) -> bool:
    """True for application/json, in any letter case and with any parameters."""
    return media_type(content_type) == "application/json"


def media_type(content_type: str) -> str:
    """The media type of a Content-Type header, lower case, without parameters."""
    return content_type.split(";", maxsplit=1)[0].strip().lower()


def decode_request(body: bytes, content_type: str) -> ExportTraceServiceRequest:
    """An ExportTraceServiceRequest from a protobuf or OTLP/JSON body."""
    kind = media_type(content_type)
    request = ExportTraceServiceRequest()
    if kind in ("application/x-protobuf", "application/protobuf", ""):
        try:
            request.ParseFromString(body)
        except DecodeError as exc:
            raise BadPayload(f"body is not an OTLP protobuf ExportTraceServiceRequest: {exc}") \
                from None
        return request
    if kind == "application/json":
        try:
            document = _hex_ids_to_base64(json.loads(body))
            if not isinstance(document, dict):
                raise BadPayload(f"body is JSON {type(document).__name__}, not an object")
            json_format.ParseDict(document, request, ignore_unknown_fields=True)
        except BadPayload:
            raise
        # ParseDict raises TypeError/AttributeError on values of the wrong shape, json and
        # ParseDict RecursionError on deep nesting: all of them are a malformed body.
        except (ValueError, TypeError, AttributeError, RecursionError,
                json_format.ParseError) as exc:
            raise BadPayload(f"body is not OTLP/JSON: {type(exc).__name__}: "
                             f"{str(exc)[:300]}") from None
        return request
    raise BadPayload(f"unsupported Content-Type {kind!r} "
                     "(use application/x-protobuf or application/json)")
