"""The proton side of the Artemis link: one proton Container in a thread of its own, holding one
AMQP 1.0 connection that reconnects, a sender per address and the receivers
(artemis_receivers.py).

proton's objects belong to the thread its Container runs in: other threads only hand it work
(`call`, woken through an EventInjector) and hear back through callbacks they gave, which must
be safe to call from another thread (the asyncio side passes loop.call_soon_threadsafe ones).

Sending: a message goes out only while the connection is open, and its callback gets the
broker's outcome (None: accepted; else why not). One still waiting for credit at its deadline,
or in flight when the connection drops, fails: its fate is unknown, the caller sends it again,
and Artemis drops a repeated _AMQ_DUPL_ID. proton attaches every link again when it reconnects
(the same connection object); a connection or link the broker closes on purpose is opened anew
after a backoff. A receiver of a fully qualified queue on a multicast address first makes sure
the address exists (a sender with the `topic` capability): Artemis 2.40 refuses `address::queue`
(amqp:not-found) on an address it has not got, even with the capability on the source.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from proton import Condition, Message, symbol
from proton.handlers import MessagingHandler
from proton.reactor import ApplicationEvent, Backoff, Container, EventInjector, SenderOption

from demo_services import instrumentation as inst
from demo_services.artemis_delivery import (
    Done,
    LinkError,
    NotConnected,
    OnMessage,
    OnState,
    Outcome,
    Received,
    SendExpired,
    SendRefused,
    fully_qualified_address,
)
from demo_services.artemis_receivers import Receivers, ReceiverState, is_active

log = logging.getLogger(__name__)

CALL_EVENT = "flowscope_call"
TICK_S = 0.25  # how often expired sends are failed and links due are attached again
HEARTBEAT_S = 10.0  # a broker that stops answering is noticed within twice this
REOPEN_S = 1.0  # after the broker closed the connection on purpose
TOPIC = symbol("topic")
SenderKey = tuple[str, bool]  # (address, multicast)


@dataclass
class _Pending:
    message: Message
    done: Done
    deadline: float


class _TopicTarget(SenderOption):
    """A sender whose target has the `topic` capability: Artemis makes its address MULTICAST."""

    def apply(self, sender: Any) -> None:
        sender.target.capabilities.put_object(TOPIC)


class _Tick:
    """A Container timer's handler that calls back."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback

    def on_timer_task(self, _: Any) -> None:
        self.callback()


def describe_condition(condition: Condition | None) -> str:
    """An AMQP error condition as one clean line ('' for none)."""
    if condition is None:
        return ""
    return inst.clean_text(f"{condition.name}: {condition.description or ''}".rstrip(": "))


class ArtemisReactor(MessagingHandler):  # type: ignore[misc]
    """One proton Container running in its own thread, for one ArtemisLink."""

    def __init__(self, url: str, name: str, on_state: OnState) -> None:
        super().__init__(prefetch=0, auto_accept=False, auto_settle=True)
        self.url, self.name, self.on_state = url, name, on_state
        self.where = f"{urlsplit(url).hostname}:{urlsplit(url).port or 5672}"
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._injector = EventInjector()
        self._container = Container(self)
        self._container.container_id = f"{name}-{uuid.uuid4().hex[:8]}"
        self._thread = threading.Thread(target=self._run, name=f"artemis-{name}", daemon=True)
        self._idents = itertools.count(1)
        self._connection: Any = None
        self._up = False
        self._epoch = 0  # one more at every loss of the connection
        self._closing = False
        self._reopen_at: float | None = None
        self._last_error: str | None = None
        self._senders: dict[SenderKey, Any] = {}
        self._waiting: dict[SenderKey, deque[_Pending]] = {}
        self._unconfirmed: dict[tuple[str, bytes], Done] = {}
        self._receivers = Receivers(name, self._attach_receiver)

    # --- any thread --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the Container's thread; it connects, and reconnects until stop()."""
        self._thread.start()

    def call(self, work: Callable[[], None]) -> None:
        """Run work in the Container's thread, soon."""
        if not self._closing:
            self._calls.put(work)
            with contextlib.suppress(OSError):  # the thread ended: nobody will run it
                self._injector.trigger(ApplicationEvent(CALL_EVENT))

    def send(self, address: str, message: Message, *, multicast: bool, deadline: float,
             done: Done) -> None:
        """Send message to address; done gets None once the broker accepted it, else why
        not (a multicast address is made MULTICAST when new)."""
        self.call(lambda: self._send((address, multicast), _Pending(message, done, deadline)))

    def open_receiver(self, source: str, prefetch: int, on_message: OnMessage, *,
                      multicast: bool, on_attached: Callable[[], None] | None = None) -> int:
        """Start receiving from source (a queue, or `address::queue` on a multicast address)
        with prefetch credits; its ident."""
        state = ReceiverState(next(self._idents), source, prefetch, multicast, on_message,
                              on_attached=on_attached)
        self.call(lambda: self._receivers.add(state))
        return state.ident

    def hold_receiver(self, ident: int) -> None:
        """Take no more deliveries on that receiver: no credit given back, arrivals released."""
        self.call(lambda: self._receivers.hold(ident))

    def close_receiver(self, ident: int) -> None:
        """Detach that receiver (what it holds unsettled goes back to its queue)."""
        self.call(lambda: self._receivers.close(ident))

    def settle(self, received: Received, outcome: Outcome, reason: str = "") -> None:
        """Settle a delivery (left alone when it is from before a reconnection)."""
        self.call(lambda: self._receivers.settle(received, outcome, reason, self._epoch))

    def stop(self, timeout_s: float) -> None:
        """Close the connection and end the thread (bounded)."""
        if self._thread.is_alive():
            self.call(self._shutdown)
            self._closing = True
            self._thread.join(timeout_s)

    # --- the Container's thread: the connection ----------------------------------------------

    def _run(self) -> None:
        try:
            self._container.run()
        except Exception:  # a boundary: the thread's end is said, the service sees it down
            log.exception("%s: the AMQP thread for Artemis at %s failed", self.name, self.where)
        finally:
            self._up, self._closing = False, True
            for end in self._injector.pipe:  # proton never closes its wake-up pipe
                with contextlib.suppress(OSError):
                    os.close(end)
            self.on_state(False)

    def on_start(self, _: Any) -> None:
        self._container.selectable(self._injector)
        self._connect()
        self._container.schedule(TICK_S, _Tick(self._tick))

    def on_flowscope_call(self, _: Any) -> None:
        while not self._calls.empty():
            work = self._calls.get_nowait()
            try:
                work()
            except Exception:  # a boundary: one request never ends the thread
                log.exception("%s: an AMQP request failed", self.name)

    def _connect(self) -> None:
        mechanisms = {"allowed_mechs": "PLAIN"} if urlsplit(self.url).username else {}
        self._connection = self._container.connect(
            self.url, reconnect=Backoff(initial=0.5, max_delay=5.0), heartbeat=HEARTBEAT_S,
            **mechanisms)
        self._senders.clear()
        self._receivers.attach_all()

    def _tick(self) -> None:
        now = self._container.now
        for pending in self._waiting.values():
            while pending and pending[0].deadline <= now:
                pending.popleft().done(SendExpired("no credit from the broker in time"))
        if self._reopen_at is not None and now >= self._reopen_at and not self._closing:
            self._reopen_at = None
            self._connect()
        self._receivers.attach_due(now)
        if not self._closing:
            self._container.schedule(TICK_S, _Tick(self._tick))

    def on_connection_opened(self, _: Any) -> None:
        self._up, self._last_error = True, None
        if self._epoch:
            log.warning("%s: reconnected to Artemis at %s; links attached again", self.name,
                        self.where)
        else:
            log.info("%s: connected to Artemis at %s (AMQP 1.0)", self.name, self.where)
        self._receivers.credit_again()
        self.on_state(True)

    def on_disconnected(self, event: Any) -> None:
        self._lost(describe_condition(event.transport.condition) or "the connection dropped")

    def on_transport_error(self, event: Any) -> None:
        text = describe_condition(event.transport.condition) or "transport error"
        if text != self._last_error:  # once per outage, not once per attempt
            self._last_error = text
            log.warning("%s: Artemis at %s: %s; trying again", self.name, self.where, text)

    def on_connection_error(self, event: Any) -> None:
        self._closed_by_broker(describe_condition(event.connection.remote_condition))

    def on_connection_closing(self, _: Any) -> None:
        self._closed_by_broker("closed without an error")

    def _closed_by_broker(self, why: str) -> None:
        """proton closes the connection after this, for good: open a new one soon."""
        if not self._closing:
            self._lost(f"the broker closed the connection ({why})")
            self._reopen_at = self._container.now + REOPEN_S

    def _lost(self, why: str) -> None:
        if not self._up:  # a reconnection attempt that failed: said by on_transport_error
            return
        log.warning("%s: lost the connection to Artemis at %s (%s); reconnecting", self.name,
                    self.where, why)
        self._up = False
        self._epoch += 1
        self._fail_all(NotConnected(f"the connection to Artemis at {self.where} was lost "
                                    f"({why})"))
        self.on_state(False)

    def _fail_all(self, failure: LinkError) -> None:
        for done in self._unconfirmed.values():
            done(failure)
        self._unconfirmed.clear()
        for pending in self._waiting.values():
            while pending:
                pending.popleft().done(failure)

    def _shutdown(self) -> None:
        self._closing = True
        self._fail_all(NotConnected("the link is closing"))
        if self._connection is not None:
            self._connection.close()
        self._injector.close()  # with the connection closed and no timer left, run() ends

    # --- sending -----------------------------------------------------------------------------

    def _sender(self, key: SenderKey) -> Any:
        sender = self._senders.get(key)
        if sender is None:
            address, multicast = key
            sender = self._container.create_sender(
                self._connection, address, name=f"send:{address}{':topic' if multicast else ''}",
                options=_TopicTarget() if multicast else None)
            self._senders[key] = sender
        return sender

    def _send(self, key: SenderKey, pending: _Pending) -> None:
        if not self._up:
            pending.done(NotConnected(f"not connected to Artemis at {self.where}"))
            return
        self._waiting.setdefault(key, deque()).append(pending)
        self._flush(key)

    def _flush(self, key: SenderKey) -> None:
        waiting = self._waiting.get(key)
        if not waiting or not self._up:
            return
        sender = self._sender(key)
        while waiting and sender.credit > 0 and is_active(sender):
            pending = waiting.popleft()
            delivery = sender.send(pending.message)
            self._unconfirmed[(sender.name, delivery.tag)] = pending.done

    def on_sendable(self, event: Any) -> None:
        for key, sender in list(self._senders.items()):
            if sender.name == event.link.name:
                self._flush(key)

    def _confirmed(self, event: Any, failure: LinkError | None) -> None:
        done = self._unconfirmed.pop((event.link.name, event.delivery.tag), None)
        if done is not None:
            done(failure)

    def on_accepted(self, event: Any) -> None:
        self._confirmed(event, None)

    def on_rejected(self, event: Any) -> None:
        why = describe_condition(event.delivery.remote.condition) or "no reason given"
        self._confirmed(event, SendRefused(f"Artemis rejected the message ({why})"))

    def on_released(self, event: Any) -> None:
        self._confirmed(event, SendRefused("Artemis released the message (not stored)"))

    # --- receiving, and links the broker closes ----------------------------------------------

    def _attach_receiver(self, state: ReceiverState) -> Any:
        if self._connection is None or self._closing:
            return None
        if state.multicast:  # the address must exist before `address::queue` is attached
            self._sender((fully_qualified_address(state.source), True))
        return self._container.create_receiver(self._connection, state.source,
                                               name=f"receive:{state.source}:{state.ident}")

    def on_message(self, event: Any) -> None:
        self._receivers.deliver(event, self._epoch)

    def on_link_opened(self, event: Any) -> None:
        self._receivers.opened(event.link)

    def on_link_error(self, event: Any) -> None:
        self._link_closed(event.link, describe_condition(event.link.remote_condition))

    def on_link_closing(self, event: Any) -> None:
        self._link_closed(event.link, "closed by the broker")

    def _link_closed(self, link: Any, why: str) -> None:
        """The broker closed a link (proton closes it locally after this; unlike
        MessagingHandler's default, the connection stays): forget a sender, failing what
        waits on it; attach a receiver again after its backoff."""
        for key, sender in list(self._senders.items()):
            if sender.name == link.name:
                del self._senders[key]
                failure = SendRefused(f"Artemis closed the link to {key[0]} ({why})")
                for pending in self._waiting.pop(key, deque()):
                    pending.done(failure)
                for tag in [t for t in self._unconfirmed if t[0] == link.name]:
                    self._unconfirmed.pop(tag)(failure)
        self._receivers.closed_by_broker(link, why, self._container.now)
