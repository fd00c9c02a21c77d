"""The OTLP receiver's Kafka mode (FLOWSCOPE_OTLP_TO_KAFKA=on): what a receiver takes is
published to the spans topic instead of stored, so that every collector of the consumer group
shares the work whichever receiver a service sends to.

A request is split by trace: the spans of one trace go to the partition Kafka's default
partitioner gives their trace ID (as the OpenTelemetry Collector's Kafka exporter does with
`partition_traces_by_id`), so one trace's spans meet one collector. The sender gets its answer
once Kafka has every part (acks=all, idempotent producer): a request is never acknowledged and
then lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

MAX_PART_BYTES = 900_000  # under a broker's default message.max.bytes (1 MiB)
PARTITIONER = DefaultPartitioner()


def split_by_partition(export: ExportTraceServiceRequest, partitions: Sequence[int],
                       max_bytes: int = MAX_PART_BYTES
                       ) -> list[tuple[int, ExportTraceServiceRequest]]:
    """The request as parts, each for the partition of its traces and at most about
    max_bytes long (a single span larger than that is a part of its own); resources and
    scopes are kept with their spans."""
    parts: list[tuple[int, ExportTraceServiceRequest]] = []
    current: dict[int, tuple[ExportTraceServiceRequest, int]] = {}
    for resource_spans in export.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            by_partition: dict[int, list] = {}  # type: ignore[type-arg]
            for span in scope_spans.spans:
                key = span.trace_id.hex().encode() if span.trace_id else None
                partition = PARTITIONER(key, list(partitions), list(partitions))
                by_partition.setdefault(partition, []).append(span)
            for partition, spans in by_partition.items():
                request, size = current.get(partition) or (ExportTraceServiceRequest(), 0)
                target = None
                for span in spans:
                    span_size = span.ByteSize()
                    if size and size + span_size > max_bytes:  # full: a new part
                        parts.append((partition, request))
                        request, size, target = ExportTraceServiceRequest(), 0, None
                    if target is None:
                        holder = request.resource_spans.add()
                        holder.resource.CopyFrom(resource_spans.resource)
                        holder.schema_url = resource_spans.schema_url
                        target = holder.scope_spans.add()
                        target.scope.CopyFrom(scope_spans.scope)
                        target.schema_url = scope_spans.schema_url
                        size += holder.ByteSize()
                    target.spans.append(span)
                    size += span_size
                current[partition] = (request, size)
    parts += [(partition, request) for partition, (request, _) in current.items()]
    return parts


class SpanPublisher:
    """Publishes export requests to the spans topic; started on first use, so a broker that
    is away when the collector starts only delays the first answer."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()

    async def publish(self, export: ExportTraceServiceRequest) -> int:
        """Publish one request, split by trace; how many parts Kafka took. KafkaError or
        TimeoutError when Kafka did not take every part (the sender should retry)."""
        producer = await self._producer()
        partitions = sorted(await producer.partitions_for(self.topic))
        parts = await asyncio.to_thread(split_by_partition, export, partitions)
        sent = [await producer.send(self.topic, request.SerializeToString(),
                                    partition=partition) for partition, request in parts]
        await asyncio.gather(*sent)
        return len(parts)

    async def _producer(self) -> AIOKafkaProducer:
        async with self._starting:
            if self.producer is None:
                producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all",
                                            enable_idempotence=True,
                                            max_request_size=2 * MAX_PART_BYTES,
                                            request_timeout_ms=15_000)
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self.producer = producer
            return self.producer

    async def stop(self) -> None:
        """Flush and close the producer."""
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None
