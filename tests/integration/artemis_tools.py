"""Read what the real Artemis holds: a queue's counts from Jolokia, and a queue's messages
browsed (copied, left in place) over AMQP 1.0."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from proton.reactor import Copy
from proton.utils import BlockingConnection

from flowscope.infra.jolokia import jolokia_request

COUNTS = ("MessageCount", "DeliveringCount", "MessagesAdded", "MessagesAcknowledged",
          "ConsumerCount")


def queue_counts(management_url: str, queue: str) -> dict[str, int] | None:
    """A queue's counts from Jolokia (whatever its address and routing type); None while it
    does not exist."""
    mbean = ("org.apache.activemq.artemis:broker=*,component=addresses,address=*,"
             f'subcomponent=queues,routing-type=*,queue="{queue}"')
    code, answer = jolokia_request(management_url, {"type": "read", "mbean": mbean,
                                                    "attribute": list(COUNTS)}, timeout_s=5)
    if code != 200 or not isinstance(answer, dict) or answer.get("status") != 200:
        return None
    found = list(answer["value"].values())
    return {name: int(found[0][name]) for name in COUNTS} if found else None


@dataclass(frozen=True)
class Browsed:
    """A message read without taking it: its body, application properties and AMQP fields."""

    body: Any
    properties: dict[str, Any]
    message_id: Any
    correlation_id: Any


def browse(amqp_url: str, source: str, timeout_s: float = 2.0) -> list[Browsed]:
    """Every message source (a queue, or `address::queue`) holds now, left where it is; the
    read ends after timeout_s without one more."""
    connection = BlockingConnection(amqp_url, timeout=10, allowed_mechs="PLAIN")
    found = []
    try:
        receiver = connection.create_receiver(source, credit=100, options=Copy())
        while True:
            try:
                message = receiver.receive(timeout=timeout_s)
            except Exception:  # proton's Timeout: nothing more
                break
            receiver.accept()
            found.append(Browsed(message.body, dict(message.properties or {}), message.id,
                                 message.correlation_id))
    finally:
        with contextlib.suppress(Exception):
            connection.close()
    return found
