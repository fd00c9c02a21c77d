"""The demo system's ActiveMQ Artemis addresses and queues (AMQP 1.0).

Invoices (anycast: point to point, one consumer gets each message): orders sends an invoice
request for every completed order to the address `invoices`; billing consumes its queue of the
same name. The broker counts each delivery billing settles as failed, delivers it again after
its redelivery delay, and after max-delivery-attempts moves it to its dead-letter address `DLA`,
into the queue `DLQ.invoices` (made on the first one); a delivery billing rejects goes there at
once. Billing events (multicast: publish-subscribe, every subscriber gets each message): billing
publishes `invoice.issued` to `billing.events`, where the ledger and the mailer each have a queue
of their own, read by its fully qualified name `billing.events::billing.events.ledger`.

Every address and queue takes the configuration's topic prefix, as the Kafka topics do (queue
names are broker-wide, so a subscriber's queue holds its address's full name too).
"""

from __future__ import annotations

from demo_services.config import DemoConfig

INVOICES = "invoices"
BILLING_EVENTS = "billing.events"
LEDGER = "ledger"
MAILER = "mailer"
SUBSCRIBERS = (LEDGER, MAILER)
DEAD_LETTER_ADDRESS = "DLA"
DEAD_LETTER_PREFIX = "DLQ."  # the broker's dead-letter-queue-prefix
FQQN_SEPARATOR = "::"


def address(config: DemoConfig, name: str) -> str:
    """The full name of a demo address (an anycast address's queue has the same name)."""
    return config.topic(name)


def subscription_queue(config: DemoConfig, name: str, subscriber: str) -> str:
    """The full name of a subscriber's queue on the multicast address name."""
    return f"{config.topic(name)}.{subscriber}"


def fully_qualified(address_name: str, queue: str) -> str:
    """A queue's fully qualified name `address::queue`: a receiver attached to it reads that
    queue (made when missing, with the address's routing type)."""
    return f"{address_name}{FQQN_SEPARATOR}{queue}"


def dead_letter_queue(config: DemoConfig, name: str) -> str:
    """The queue that keeps the dead letters of the address name (made on the first one)."""
    return f"{DEAD_LETTER_PREFIX}{config.topic(name)}"
