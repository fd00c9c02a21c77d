"""The store's vocabularies, defined once: operations and span kinds of the records, flow and
lag statuses, component states, the terminal flags of a flow and the rules that set them.

StrEnum members are their text (FlowStatus.STUCK == "stuck"), so the text is what the store
keeps, what `inspect --json` prints and what the dashboard shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntFlag, StrEnum
from fnmatch import fnmatchcase

NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000
FLAG_CACHE = 10_000  # topics whose terminal flag is remembered


class Operation(StrEnum):
    """What a messaging span did with its message (OpenTelemetry's messaging.operation.type)."""

    SEND = "send"
    CREATE = "create"
    RECEIVE = "receive"
    PROCESS = "process"
    SETTLE = "settle"


# In this order: SQLite uses a partial index only for a query whose IN list is the index's own.
SENDS = (Operation.SEND, Operation.CREATE)  # a message put on a destination
CONSUMES = (Operation.PROCESS, Operation.RECEIVE)  # a message (or a batch) taken off one


def sql_list(operations: tuple[Operation, ...]) -> str:
    """Operations as an SQL list, for queries and partial indexes: ('send', 'create')."""
    return "(" + ", ".join(f"'{o.value}'" for o in operations) + ")"


class SpanKind(StrEnum):
    """OpenTelemetry's span kinds."""

    PRODUCER = "producer"
    CONSUMER = "consumer"
    CLIENT = "client"
    SERVER = "server"
    INTERNAL = "internal"


class FlowStatus(StrEnum):
    """Where a flow is: still moving, or how it ended."""

    IN_FLIGHT = "in flight"
    COMPLETED = "completed"
    FAILED = "failed"
    DEAD_LETTERED = "dead-lettered"
    COMPENSATED = "compensated"
    STUCK = "stuck"


class PartitionStatus(StrEnum):
    """A consumer group's partition, by Burrow's rules (collectors/lag/status.py)."""

    OK = "OK"
    WARN = "WARN"
    STOP = "STOP"
    STALL = "STALL"
    REWIND = "REWIND"


class GroupStatus(StrEnum):
    """A consumer group: its worst partition's status; STOP, STALL and REWIND make it ERR."""

    OK = "OK"
    WARN = "WARN"
    ERR = "ERR"


class ComponentState(StrEnum):
    """A collector component's state, best first."""

    OK = "ok"
    STARTING = "starting"
    DEGRADED = "degraded"  # running, but not doing all of its work (broker away, store full)
    DOWN = "down"  # not running: it failed and waits to be started again
    STANDBY = "standby"  # work done once per cluster, which another collector does now


class NodeKind(StrEnum):
    """What a node of the flow map is: a service, or where a messaging system keeps messages
    (a Kafka topic; a RabbitMQ exchange, which routes, and queue, where messages wait; a NATS
    subject, or the JetStream stream that captures it, and a JetStream consumer, where
    messages wait for their subscriber; an ActiveMQ Artemis address, which routes, and queue,
    where messages wait)."""

    SERVICE = "service"
    TOPIC = "topic"
    EXCHANGE = "exchange"
    QUEUE = "queue"
    CONSUMER = "consumer"
    ADDRESS = "address"


KAFKA = "kafka"
RABBITMQ = "rabbitmq"
NATS = "nats"
ACTIVEMQ = "activemq"
# RabbitMQ's default exchange has the empty name; it answers to this one too.
DEFAULT_EXCHANGE = "amq.default"


def node_id(kind: str, name: str, system: str | None) -> str:
    """A node's id, unique across messaging systems: a service's name; a Kafka topic's name
    (what stores before systems hold, and Kafka topic names cannot hold ':'; a destination
    whose span names no system is read as Kafka's); else 'system:kind:name'."""
    if kind == NodeKind.SERVICE or (kind == NodeKind.TOPIC and system in (None, KAFKA)):
        return name
    return f"{system}:{kind}:{name}"


def destination_node(system: str | None, destination: str) -> tuple[str, str]:
    """(id, kind) of the node a message is sent to: a RabbitMQ exchange, an Artemis address,
    else a topic."""
    kind = NodeKind.EXCHANGE if system == RABBITMQ else \
        NodeKind.ADDRESS if system == ACTIVEMQ else NodeKind.TOPIC
    return node_id(kind, destination, system), kind


def waiting_node(system: str | None, destination: str | None, waiting: str) -> tuple[str, str]:
    """(id, kind) of where a message waited for its consumer: a RabbitMQ queue; a JetStream
    consumer, named 'stream/consumer' (consumer names are unique within their stream only)."""
    if system == NATS:
        return node_id(NodeKind.CONSUMER, f"{destination}/{waiting}" if destination
                       else waiting, system), NodeKind.CONSUMER
    return node_id(NodeKind.QUEUE, waiting, system), NodeKind.QUEUE


def node_parts(node: str, kind: str) -> tuple[str | None, str]:
    """(system, name) of a node id made by node_id (system None for a service)."""
    if kind == NodeKind.SERVICE:
        return None, node
    system, sep, rest = node.partition(":")
    if not sep:
        return KAFKA, node
    return system, rest.partition(":")[2]


class FlowFlag(IntFlag):
    """What a flow's messages reached: a completion, compensation or dead-letter topic."""

    NONE = 0
    COMPLETED = 1
    COMPENSATED = 2
    DEAD_LETTERED = 4


@dataclass(frozen=True)
class FlowRules:
    """Topic patterns that end a flow, and how long without progress counts as stuck."""

    completed: tuple[str, ...]
    dead_letter: tuple[str, ...]
    compensated: tuple[str, ...]
    stuck_after_s: float
    # Topics already judged, and their flags as plain ints (ingest asks for every message,
    # and IntFlag arithmetic costs a Python call per operation); bounded, see flag_of.
    _flags: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def flag_of(self, topic: str | None) -> int:
        """The terminal flag (a FlowFlag value) a message on this topic sets; 0: none."""
        if not topic:
            return 0
        flag = self._flags.get(topic)
        if flag is None:
            flag = 0
            for patterns, terminal in ((self.dead_letter, FlowFlag.DEAD_LETTERED),
                                       (self.compensated, FlowFlag.COMPENSATED),
                                       (self.completed, FlowFlag.COMPLETED)):
                if any(fnmatchcase(topic, p) for p in patterns):
                    flag = int(terminal)
                    break
            if len(self._flags) >= FLAG_CACHE:  # senders name topics at will
                self._flags.clear()
            self._flags[topic] = flag
        return flag

    def status(self, flags: int, errors: int, last_ns: int, now_ns: int) -> FlowStatus:
        """The status of a flow from its terminal flags, error count and last activity."""
        if flags & FlowFlag.DEAD_LETTERED:
            return FlowStatus.DEAD_LETTERED
        if flags & FlowFlag.COMPENSATED:
            return FlowStatus.COMPENSATED
        if flags & FlowFlag.COMPLETED:
            return FlowStatus.COMPLETED
        if errors:
            return FlowStatus.FAILED
        if now_ns - last_ns > self.stuck_after_s * NS_PER_S:
            return FlowStatus.STUCK
        return FlowStatus.IN_FLIGHT


def bucket_start(ns: int, bucket_s: int) -> int:
    """The start (unix seconds) of the time bucket holding ns: how aggregates are keyed."""
    return int(ns // NS_PER_S) // bucket_s * bucket_s
