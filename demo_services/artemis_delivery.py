"""What passes between the Artemis link's proton thread and its asyncio side: how a delivery is
settled, a received message copied out of proton, the link's errors and callbacks, and the pure
readers of what proton hands over."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from proton import Delivery

from demo_services import instrumentation as inst


class Outcome(StrEnum):
    """How a delivery is settled, and what the broker then does with it."""

    ACCEPT = "accept"  # handled: the broker forgets it
    RETRY = "retry"  # failed: counted, delivered again after the redelivery delay, moved to
    # the dead-letter address at max-delivery-attempts (MODIFIED with delivery-failed)
    REJECT = "reject"  # poison: moved to the dead-letter address at once
    RELEASE = "release"  # not handled (an output failed): back to the queue, not counted


class LinkError(Exception):
    """The broker refused, or the connection lost, a message or a link."""


class NotConnected(LinkError):
    """No connection to the broker right now."""


class SendRefused(LinkError):
    """The broker answered a message with an outcome other than accepted."""


class SendExpired(LinkError):
    """A message waited for credit until its deadline."""


@dataclass(frozen=True)
class Received:
    """One message a receiver got, copied out of proton: its body (None when it is neither
    text nor binary), application properties and AMQP fields; token settles it."""

    body: bytes | None
    properties: dict[str, Any]
    message_id: str | None
    correlation_id: str | None
    delivery_count: int  # the broker's count of failed deliveries before this one
    receiver: int
    token: tuple[int, Delivery] = field(repr=False)  # (connection epoch, proton's delivery)


Done = Callable[[BaseException | None], None]  # a send's outcome: None when accepted
OnMessage = Callable[[Received], None]
OnState = Callable[[bool], None]  # True: connected


def body_bytes(body: object) -> bytes | None:
    """A message body as bytes: text as UTF-8, binary as it is; None for anything else."""
    if isinstance(body, str):
        return body.encode("utf-8", "surrogatepass")
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    return None


def field_text(value: object) -> str | None:
    """An AMQP message-id or correlation-id (string, UUID, ulong or binary) as clean text."""
    if isinstance(value, bytes | bytearray | memoryview):
        value = bytes(value).decode("utf-8", "replace")
    return None if value is None else inst.clean_text(value) or None


def fully_qualified_address(source: str) -> str:
    """The address part of `address::queue` (the source itself when it is not one)."""
    return source.split("::", 1)[0]
