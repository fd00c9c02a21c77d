"""The receivers of the Artemis link's connection, kept in proton's thread: their credit, the
deliveries they hand over and the settling of those.

A receiver holds `prefetch` credits and gets one back per delivery settled, so that no more than
prefetch deliveries are ever unsettled. Settling applies an Outcome; RETRY sets delivery-failed
on the MODIFIED outcome, without which Artemis counts no failed delivery (and so never applies
its redelivery delay, max-delivery-attempts or dead-letter address). A delivery from before the
connection was lost, or from a link closed since, is never settled: the broker has put it back
already. When the connection is back, what was in flight is credited again; a receiver the
broker closed is attached again after a backoff. A held receiver gives no credit back and
releases what still arrives, so that it can be detached once its deliveries are settled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proton import Condition, Delivery, Endpoint

from demo_services import instrumentation as inst
from demo_services.artemis_delivery import OnMessage, Outcome, Received, body_bytes, field_text
from demo_services.retry import Backoff

log = logging.getLogger(__name__)

ACTIVE = Endpoint.LOCAL_ACTIVE | Endpoint.REMOTE_ACTIVE
STATES = {Outcome.ACCEPT: Delivery.ACCEPTED, Outcome.RETRY: Delivery.MODIFIED,
          Outcome.REJECT: Delivery.REJECTED, Outcome.RELEASE: Delivery.RELEASED}


def is_active(link: Any) -> bool:
    """True when a link is open at both ends."""
    return bool((link.state & ACTIVE) == ACTIVE)


@dataclass
class ReceiverState:
    """One receiver: what it reads and how, and its link while it is attached."""

    ident: int
    source: str  # a queue, or `address::queue`
    prefetch: int
    multicast: bool
    on_message: OnMessage
    on_attached: Callable[[], None] | None = None  # each time the broker attached it
    link: Any = None
    active: bool = True  # False: held
    due: float | None = None  # when to attach again after the broker closed it
    wait: Backoff = field(default_factory=lambda: Backoff(1.0, 10.0))


class Receivers:
    """Every receiver of one link; attach opens a receiver's proton link (None: no
    connection)."""

    def __init__(self, name: str, attach: Callable[[ReceiverState], Any]) -> None:
        self.name = name
        self._attach = attach
        self._states: dict[int, ReceiverState] = {}

    def add(self, state: ReceiverState) -> None:
        """Start a new receiver."""
        self._states[state.ident] = state
        self.attach(state)

    def attach(self, state: ReceiverState) -> None:
        """Open the receiver's link and give it its credit."""
        state.link, state.due = self._attach(state), None
        if state.link is not None:
            state.link.flow(state.prefetch)

    def attach_all(self) -> None:
        """Attach every receiver anew (on a new connection)."""
        for state in self._states.values():
            self.attach(state)

    def attach_due(self, now: float) -> None:
        """Attach the receivers whose backoff after a close by the broker has passed."""
        for state in self._states.values():
            if state.due is not None and now >= state.due:
                self.attach(state)

    def hold(self, ident: int) -> None:
        """Give that receiver no more credit; release what still arrives."""
        if ident in self._states:
            self._states[ident].active = False

    def close(self, ident: int) -> None:
        """Detach that receiver and forget it."""
        state = self._states.pop(ident, None)
        if state is not None and state.link is not None:
            state.link.close()

    def credit_again(self) -> None:
        """After a reconnection: what was in flight is the broker's again, so credit it."""
        for state in self._states.values():
            link = state.link
            if state.active and link is not None and link.credit < state.prefetch:
                link.flow(state.prefetch - link.credit)

    def _owner(self, link: Any) -> ReceiverState | None:
        return next((s for s in self._states.values()
                     if s.link is not None and s.link.name == link.name), None)

    def deliver(self, event: Any, epoch: int) -> None:
        """Hand a message over to its receiver's callback (release it when held)."""
        delivery, message = event.delivery, event.message
        state = self._owner(event.link)
        if state is None or not state.active:
            delivery.update(Delivery.RELEASED)
            delivery.settle()
            return
        properties = message.properties if isinstance(message.properties, dict) else {}
        state.on_message(Received(
            body_bytes(message.body), {str(k): v for k, v in properties.items()},
            field_text(message.id), field_text(message.correlation_id),
            int(message.delivery_count or 0), state.ident, (epoch, delivery)))

    def settle(self, received: Received, outcome: Outcome, reason: str, epoch: int) -> None:
        """Settle a delivery with outcome and credit its receiver again (a delivery of an
        earlier connection or a closed link is left alone)."""
        delivered_in, delivery = received.token
        if delivered_in != epoch or not is_active(delivery.link):
            return
        if outcome is Outcome.RETRY:
            delivery.local.failed = True
        elif outcome is Outcome.REJECT:
            delivery.local.condition = Condition("amqp:internal-error",
                                                 inst.clean_text(reason, 1000) or None)
        delivery.update(STATES[outcome])
        delivery.settle()
        state = self._states.get(received.receiver)
        if state is not None and state.active and state.link is not None \
                and state.link.name == delivery.link.name:
            state.link.flow(1)

    def opened(self, link: Any) -> None:
        """A receiver's link is attached: its backoff starts over."""
        state = self._owner(link)
        if state is not None:
            state.wait.reset()
            if state.on_attached is not None:
                try:
                    state.on_attached()
                except Exception:  # a boundary: the AMQP thread must go on
                    log.exception("%s: the attach callback of %s failed", self.name,
                                  state.source)

    def closed_by_broker(self, link: Any, why: str, now: float) -> None:
        """The broker closed a receiver's link: attach it again after its backoff."""
        state = self._owner(link)
        if state is not None:
            state.link = None
            delay = state.wait.next_s()
            state.due = now + delay
            log.warning("%s: Artemis closed the receiver of %s (%s); attaching again in %.1fs",
                        self.name, state.source, why, delay)
