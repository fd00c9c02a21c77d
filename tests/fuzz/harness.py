"""A seeded fuzz harness for everything that takes input from outside: the OTLP/HTTP receiver
(in process, over loopback), the spans-topic handler and the message tap; then every reader
and `inspect` command over the store they filled.

An input "escapes" when an exception gets past the code that handles one input: a 500 from
the receiver (or an error it logs), an exception out of the spans-topic handler or the tap.
Those are what the consumers' isolation would have to catch; the count must be 0.

    python -m tests.fuzz.harness --inputs 100000 --seed 1 [--seconds 1200]

prints inputs tried per target, escapes (with the first example of each kind), the slowest
input and its time, and the peak memory of the process.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import json
import logging
import random
import resource
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web
from aiokafka import ConsumerRecord
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from base.settings import IngestLimits
from collectors.ingest import kafka_spans
from collectors.ingest.otlp_http import build_app
from collectors.ingest.pipeline import Pipeline
from collectors.ingest.tap import tap_record
from collectors.supervise import Health
from flowscope import inspect
from store.vocabulary import FlowRules
from tests.store_writer import WritableStore, open_writable

RULES = FlowRules(("*done",), ("*.dlq",), ("*cancelled",), 60)
MAX_BODY = 1 << 20
SLOW_S = 1.0  # an input that takes longer is listed
TOPICS = ["orders", "files.dlq", "done", "t", "", "x" * 600, "a.b.c", "<script>", "²", "\0"]
WORDS = ["send", "process", "receive", "publish", "settle", "create", "deliver", "poll", "ack"]
ROLE_KEYS = [
    "messaging.system", "messaging.destination.name", "messaging.destination",
    "messaging.destination.partition.id", "messaging.kafka.partition", "messaging.kafka.offset",
    "messaging.kafka.message.offset", "messaging.message.id", "messaging.consumer.group.name",
    "messaging.message.conversation_id", "messaging.kafka.message.key",
    "messaging.operation.type", "messaging.operation", "messaging.message.retry_attempt",
    "messaging.batch.message_count", "error.type", "service.name"]


def hostile_text(rng: random.Random) -> str:
    """A string from a family of trouble: digits int() refuses, huge numbers, HTML, control
    characters, very long, empty."""
    return rng.choice([
        "", "²", "٣", "9" * rng.choice((19, 20, 5000)), "-" + "9" * 19, str(2**63),
        "<script>alert(1)</script>", "**bold** [x](javascript:1)", "\0\x1b[31m", "\ufffe\U0010ffff",
        "x" * rng.choice((1, 600, 600, 600, 20_000)), rng.choice(TOPICS),
        f"t.{rng.randint(0, 9)}.²",
        f"orders.{rng.randint(-5, 5)}.{rng.getrandbits(70)}", " 12 ", "1e9", "nan", "inf",
        "".join(_character(rng) for _ in range(rng.randint(1, 40)))])


def _character(rng: random.Random) -> str:
    """Any character UTF-8 can carry (protobuf strings refuse lone surrogates)."""
    code = rng.randint(0, 0x2FFFF)
    return chr(code) if not 0xD800 <= code <= 0xDFFF else "\ufffd"


def hostile_number(rng: random.Random) -> int:
    """An int64 from its ends, its middle or just past where the store's integers end."""
    return rng.choice([0, -1, 1, 2**63 - 1, -(2**63), rng.getrandbits(63),
                       -rng.getrandbits(63), rng.randint(0, 100)])


def fill_value(value: AnyValue, rng: random.Random, depth: int = 0) -> None:
    """A random AnyValue: every kind, nested arrays and maps, huge and odd values."""
    kind = rng.choice(["s", "s", "i", "d", "b", "y", "a", "k", "none"])
    if kind == "s":
        value.string_value = hostile_text(rng)
    elif kind == "i":
        value.int_value = hostile_number(rng)
    elif kind == "d":
        value.double_value = rng.choice([float("nan"), float("inf"), -0.0, 1e308, 3.0, 2.5])
    elif kind == "b":
        value.bool_value = rng.random() < 0.5
    elif kind == "y":
        value.bytes_value = rng.randbytes(rng.choice((0, 8, 4000)))
    elif kind == "a" and depth < 12:
        # wide at the top, narrow below: 700 items nested 12 deep would never end
        width = _rarely_many(rng, (0, 1, 3), 700) if depth == 0 else rng.choice((0, 1, 2))
        for _ in range(width):
            fill_value(value.array_value.values.add(), rng, depth + 1)
    elif kind == "k" and depth < 12:
        for _ in range(rng.choice((0, 1, 3))):
            kv = value.kvlist_value.values.add()
            kv.key = hostile_text(rng)[:50]
            fill_value(kv.value, rng, depth + 1)


def _rarely_many(rng: random.Random, usual: tuple[int, ...], many: int) -> int:
    """One of the usual counts, and once in fifty inputs a large one."""
    return many if rng.random() < 0.02 else rng.choice(usual)


def random_id(rng: random.Random, size: int) -> bytes:
    """A span or trace id, valid most of the time."""
    return rng.choice([rng.randbytes(size), rng.randbytes(size), b"", rng.randbytes(size + 1),
                       b"\0" * size])


def generate_request(rng: random.Random, ids: list[tuple[bytes, bytes]]
                     ) -> ExportTraceServiceRequest:
    """An export request of a few resources and spans, with hostile values anywhere."""
    request = ExportTraceServiceRequest()
    for _ in range(rng.choice((0, 1, 1, 2, 3))):
        resource = request.resource_spans.add()
        for _ in range(rng.choice((0, 1, 2))):
            kv = resource.resource.attributes.add()
            kv.key = rng.choice(["service.name", "host.name", hostile_text(rng)[:40]])
            fill_value(kv.value, rng)
        for _ in range(rng.choice((1, 1, 2))):
            scope = resource.scope_spans.add()
            for _ in range(rng.choice((1, 2, 5, 20))):
                add_span(scope.spans.add(), rng, ids)
    return request


def add_span(span: Any, rng: random.Random, ids: list[tuple[bytes, bytes]]) -> None:
    """One span: ids (sometimes reused, so that hops match), times, links, attributes."""
    span.trace_id = rng.choice(ids)[0] if ids and rng.random() < 0.5 else random_id(rng, 16)
    span.span_id = random_id(rng, 8)
    if ids and rng.random() < 0.5:
        span.parent_span_id = rng.choice(ids)[1]
    if len(span.trace_id) == 16 and len(span.span_id) == 8:
        ids.append((bytes(span.trace_id), bytes(span.span_id)))
        del ids[:-200]
    topic = rng.choice(TOPICS)
    span.name = rng.choice([f"{rng.choice(WORDS)} {topic}", f"{topic} {rng.choice(WORDS)}",
                            hostile_text(rng), "send " + "y" * _rarely_many(rng, (10,), 100_000)])
    span.kind = rng.randint(0, 7)
    span.start_time_unix_nano = rng.choice([0, 2**64 - 1, 2**63, time.time_ns(),
                                            rng.getrandbits(64)])
    span.end_time_unix_nano = rng.choice([0, 2**64 - 1, rng.getrandbits(64),
                                          min(span.start_time_unix_nano + 1000, 2**64 - 1)])
    span.status.code = rng.randint(0, 2)
    for _ in range(_rarely_many(rng, (0, 0, 1, 3), 300)):
        link = span.links.add()
        if ids and rng.random() < 0.7:
            link.trace_id, link.span_id = rng.choice(ids)
        else:
            link.trace_id, link.span_id = random_id(rng, 16), random_id(rng, 8)
    for _ in range(_rarely_many(rng, (0, 2, 6, 12), 200)):
        kv = span.attributes.add()
        kv.key = rng.choice(ROLE_KEYS) if rng.random() < 0.8 else hostile_text(rng)[:60]
        fill_value(kv.value, rng)
    for _ in range(rng.choice((0, 0, 2))):
        event = span.events.add()
        event.name = hostile_text(rng)[:100]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """Bytes changed a few times: flipped, cut, repeated, spliced with garbage."""
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not buffer:
            buffer.extend(rng.randbytes(rng.randint(1, 64)))
            continue
        position = rng.randrange(len(buffer))
        choice = rng.randrange(5)
        if choice == 0:
            buffer[position] ^= 1 << rng.randrange(8)
        elif choice == 1:
            del buffer[position:position + rng.randint(1, 16)]
        elif choice == 2:
            buffer[position:position] = rng.randbytes(rng.randint(1, 16))
        elif choice == 3:
            buffer[position] = rng.choice((0, 0xFF, 0x7F, 0x80))
        else:
            buffer = buffer[:position]
    return bytes(buffer)


def to_json(request: ExportTraceServiceRequest) -> dict[str, Any]:
    """OTLP/JSON of a request: ids as hex, as the specification writes them."""
    document = json_format.MessageToDict(request)
    for resource_spans in document.get("resourceSpans", []):
        for scope in resource_spans.get("scopeSpans", []):
            for item in scope.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in item:
                        item[key] = base64.b64decode(item[key]).hex()
    return document


def mutate_json(node: Any, rng: random.Random, depth: int = 0) -> Any:
    """A JSON document with values of the wrong type, depth or size here and there."""
    if rng.random() < 0.05:
        return rng.choice([None, 5, -1, "x", [], {}, [[[[[]]]]], 2**70, 1e308, "²", True,
                           "zz" * 16, {"a": [1, {"b": None}]}])
    if isinstance(node, dict):
        return {key: mutate_json(value, rng, depth + 1) for key, value in node.items()}
    if isinstance(node, list):
        return [mutate_json(value, rng, depth + 1) for value in node]
    return node


@dataclass
class Body:
    """One HTTP input."""

    data: bytes
    content_type: str
    encoding: str = ""
    kind: str = ""


def generate_body(rng: random.Random, ids: list[tuple[bytes, bytes]]) -> Body:
    """An OTLP/HTTP body: valid, mutated, JSON, gzip, random bytes; odd headers."""
    request = generate_request(rng, ids)
    kind = rng.choice(["proto", "proto", "proto-mutated", "json", "json-mutated",
                       "json-bytes-mutated", "gzip", "gzip-cut", "random", "deep-json"])
    content_type = "application/x-protobuf"
    if kind == "proto":
        data = request.SerializeToString()
    elif kind == "proto-mutated":
        data = mutate(request.SerializeToString(), rng)
    elif kind in ("json", "json-mutated", "json-bytes-mutated"):
        content_type = rng.choice(["application/json", "Application/JSON; charset=utf-8"])
        document = to_json(request)
        if kind == "json-mutated":
            document = mutate_json(document, rng)
        data = json.dumps(document).encode()
        if kind == "json-bytes-mutated":
            data = mutate(data, rng)
    elif kind == "deep-json":
        content_type = "application/json"
        depth = rng.choice((100, 5000, 100_000))
        data = ('{"resourceSpans": ' + "[" * depth + "]" * depth + "}").encode()
    elif kind in ("gzip", "gzip-cut"):
        data = gzip.compress(request.SerializeToString())
        if kind == "gzip-cut":
            data = data[:rng.randint(0, max(0, len(data) - 1))]
        return Body(data, content_type, rng.choice(["gzip", "GZIP", " gzip "]), kind)
    else:
        data = rng.randbytes(rng.choice((0, 1, 100, 5000)))
        content_type = rng.choice(["application/x-protobuf", "application/json", "text/plain",
                                   "", "APPLICATION/X-PROTOBUF"])
    return Body(data, content_type, rng.choice(["", "", "", "identity", "br"]), kind)


def generate_message(rng: random.Random, offset: int) -> ConsumerRecord[bytes, bytes]:
    """A message as the tap reads it: hostile keys, headers, timestamps."""
    headers = []
    for _ in range(rng.choice((0, 1, 3, 40))):
        name = rng.choice(["correlation-id", "traceparent", "retry-attempt", "dlq-reason",
                           "Correlation-ID", hostile_text(rng)[:100]])
        value = rng.choice([hostile_text(rng).encode("utf-8", "replace"), rng.randbytes(20),
                            b"00-" + rng.randbytes(16).hex().encode() + b"-" +
                            rng.randbytes(8).hex().encode() + b"-01", b"", b"\xff" * 10_000])
        headers.append((name.encode("utf-8", "replace").decode("utf-8"), value))
    key = rng.choice([None, b"", rng.randbytes(30), hostile_text(rng).encode("utf-8", "replace")])
    value = rng.choice([None, b"", rng.randbytes(50)])
    return ConsumerRecord(rng.choice(TOPICS) or "t", rng.randint(0, 3), offset,
                          rng.choice([-1, 0, 2**63 - 1, -(2**63), time.time_ns() // 10**6]),
                          0, key, value, None, len(key or b""), len(value or b""), headers)


@dataclass
class Findings:
    """What a run saw."""

    inputs: Counter[str] = field(default_factory=Counter)
    escaped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    slowest_s: float = 0.0  # wall time
    slowest_cpu_s: float = 0.0
    slowest: str = ""  # the input that took the most CPU time
    statuses: Counter[str] = field(default_factory=Counter)
    slow: list[str] = field(default_factory=list)

    def timed(self, target: str, what: str, started: tuple[float, float]) -> None:
        """Count an input and keep it if it was the slowest so far, by the process's CPU time
        (what it cost, whatever else the machine did meanwhile) and by wall time."""
        self.inputs[target] += 1
        wall, cpu = time.perf_counter() - started[0], time.process_time() - started[1]
        if cpu > SLOW_S:
            self.slow.append(f"{cpu:.2f}s CPU, {wall:.2f}s wall, {target}: {what}")
        if cpu > self.slowest_cpu_s:
            self.slowest_cpu_s, self.slowest = cpu, f"{target}: {what}"
        self.slowest_s = max(self.slowest_s, wall)

    def escape(self, target: str, error: str) -> None:
        """An exception that got out."""
        kind = f"{target}: {error.splitlines()[-1][:200] if error else '?'}"
        self.escaped[kind] += 1
        self.examples.setdefault(kind, error[-3000:])


def _clocks() -> tuple[float, float]:
    """Wall and process CPU time, now."""
    return time.perf_counter(), time.process_time()


class ErrorLog(logging.Handler):
    """Errors the receiver logs (an exception inside a request handler is logged, not
    raised, by aiohttp)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the message and its stack."""
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        self.records.append(text)


async def run(inputs: int, seed: int, seconds: float, store_dir: Path,
              progress: Callable[[str], None] = print) -> Findings:
    """Fuzz every target with `inputs` inputs in all (or until `seconds` pass)."""
    rng = random.Random(seed)
    findings = Findings()
    store = open_writable(store_dir / "fuzz.db", RULES)
    pipeline = Pipeline(store.writer, None, IngestLimits(max_spans_per_request=5000))
    errors = ErrorLog()
    for name in ("aiohttp", "collectors"):
        logging.getLogger(name).addHandler(errors)
    runner = web.AppRunner(build_app(pipeline, Health(), MAX_BODY), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}/v1/traces"
    ids: list[tuple[bytes, bytes]] = []
    deadline = time.monotonic() + seconds
    try:
        async with ClientSession(timeout=ClientTimeout(total=60)) as session:
            for index in range(inputs):
                if time.monotonic() > deadline:
                    progress(f"fuzz: time budget of {seconds:g}s spent after {index} inputs")
                    break
                target = ("otlp_http", "spans_topic", "tap")[index % 3]
                if target == "otlp_http":
                    await _post(session, url, generate_body(rng, ids), findings, errors)
                elif target == "spans_topic":
                    await _spans_topic(pipeline, rng, ids, index, findings)
                else:
                    await _tap(pipeline, rng, index, findings)
                if index and index % 500 == 0:
                    progress(f"fuzz: {index} inputs, {sum(findings.escaped.values())} escaped, "
                             f"slowest {findings.slowest_cpu_s:.3f}s CPU")
        _readers(store, rng, findings)
    finally:
        await runner.cleanup()
        for name in ("aiohttp", "collectors"):
            logging.getLogger(name).removeHandler(errors)
        store.close()
    return findings


async def _post(session: ClientSession, url: str, body: Body, findings: Findings,
                errors: ErrorLog) -> None:
    headers = {"Content-Type": body.content_type}
    if body.encoding:
        headers["Content-Encoding"] = body.encoding
    started = _clocks()
    async with session.post(url, data=body.data, headers=headers) as answer:
        text = await answer.read()
        findings.statuses[f"{answer.status}"] += 1
        if answer.status >= 500:
            findings.escape("otlp_http", f"HTTP {answer.status} for a {body.kind} body: "
                            f"{text[:300]!r}\n" + "\n".join(errors.records[-1:]))
    findings.timed("otlp_http", f"{body.kind} body of {len(body.data)} bytes", started)
    if errors.records:
        for record in errors.records:
            findings.escape("otlp_http (logged)", record)
        errors.records.clear()


async def _spans_topic(pipeline: Pipeline, rng: random.Random, ids: list[tuple[bytes, bytes]],
                       offset: int, findings: Findings) -> None:
    request = generate_request(rng, ids).SerializeToString()
    value = rng.choice([request, request, mutate(request, rng), rng.randbytes(64), None])
    started = _clocks()
    try:
        await kafka_spans._ingest_one(pipeline, value, "otlp_spans", 0, offset)
    except Exception:
        findings.escape("spans_topic", traceback.format_exc())
    findings.timed("spans_topic", f"record of {len(value or b'')} bytes", started)


async def _tap(pipeline: Pipeline, rng: random.Random, offset: int, findings: Findings) -> None:
    messages = [generate_message(rng, offset * 10 + i) for i in range(rng.choice((1, 5, 50)))]
    started = _clocks()
    try:
        await pipeline.write_messages([tap_record(m, keep_headers=rng.random() < 0.5)
                                       for m in messages])
    except Exception:
        findings.escape("tap", traceback.format_exc())
    findings.timed("tap", f"batch of {len(messages)} messages", started)


def _readers(store: WritableStore, rng: random.Random, findings: Findings) -> None:
    """Every reader and inspect command over what the inputs left in the store."""
    now = time.time_ns()
    flows = store.flows(-(2**63), now, limit=200)
    calls: list[tuple[str, Callable[[], object]]] = [
        ("topology", lambda: store.topology(-(2**62))),
        ("flow_counts", lambda: store.flow_counts(2**62, now)),
        ("topology_nodes", lambda: store.topology_nodes(0)),
        ("edge_buckets", lambda: store.edge_buckets(0)),
        ("flow_latency", lambda: store.flow_latency(0)),
        ("retry_attempts", lambda: store.retry_attempts(-(2**62), 1000)),
        ("dead_letters", lambda: store.dead_letters(-(2**62))),
        ("propagation", lambda: store.propagation(-(2**62), 1000, now // 10**6)),
        ("lag", store.lag), ("counters", store.counters),
        ("inspect topology", lambda: inspect.inspect_topology(store, 10**9, True)),
        ("inspect topology text", lambda: inspect.inspect_topology(store, 10**9, False)),
        ("inspect flows", lambda: inspect.inspect_flows(store, 10**9, False, 200)),
        ("inspect flows json", lambda: inspect.inspect_flows(store, 10**9, True, 200)),
        ("inspect counters", lambda: inspect.inspect_counters(store, False)),
        ("inspect lag", lambda: inspect.inspect_lag(store, None, False)),
        ("inspect propagation", lambda: inspect.inspect_propagation(store, 10**9, False)),
    ]
    for flow in flows:
        calls += [(f"flow {flow.id[:40]!r}", lambda f=flow.id: store.flow(f, now)),
                  (f"inspect flow {flow.id[:40]!r}",
                   lambda f=flow.id: inspect.inspect_flow(store, f, rng.random() < 0.5)),
                  ("failed_steps", lambda f=flow.id: store.failed_steps(f))]
    for _ in range(200):
        text = hostile_text(rng)
        calls.append((f"find_flows {text[:40]!r}", lambda t=text: store.find_flows(t)))
    for name, call in calls:
        started = _clocks()
        try:
            call()
        except Exception:
            findings.escape(f"reader {name}", traceback.format_exc())
        findings.timed("readers", name, started)


def main() -> None:
    """The full run, with its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=1800.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="flowscope-fuzz-") as directory:
        findings = asyncio.run(run(args.inputs, args.seed, args.seconds, Path(directory)))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"fuzz: seed {args.seed}, {sum(findings.inputs.values())} inputs in "
          f"{time.monotonic() - started:.0f}s: "
          + ", ".join(f"{k} {v}" for k, v in sorted(findings.inputs.items())))
    print(f"fuzz: HTTP answers: {dict(sorted(findings.statuses.items()))}")
    print(f"fuzz: escaped exceptions: {sum(findings.escaped.values())}")
    for kind, count in findings.escaped.most_common():
        print(f"  {count:6d}  {kind}\n{findings.examples[kind]}")
    print(f"fuzz: inputs over {SLOW_S:g}s of CPU: {len(findings.slow)}")
    for line in findings.slow[:20]:
        print(f"  {line}")
    print(f"fuzz: slowest input {findings.slowest_cpu_s:.3f}s of CPU ({findings.slowest[:200]}); "
          f"longest wall time of an input {findings.slowest_s:.3f}s")
    print(f"fuzz: peak memory (max RSS) {peak_mb:.0f} MB")
    raise SystemExit(1 if findings.escaped else 0)


if __name__ == "__main__":
    main()
