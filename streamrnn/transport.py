"""The daemon's transport: what it asks of whatever carries sensor messages in and forecasts out.

The engine, the frames, the forecasts and the metrics know nothing of the broker: the daemon holds
one :class:`Transport`, which it chooses by the broker URL's scheme (``mqtt://``, ``mqtts://``: the MQTT link,
the simple single-box path; ``nats://``: a shard's link to its fleet on NATS JetStream,
:mod:`streamrnn.fleet`). A transport takes messages into the daemon's bounded inbox as
:class:`Delivery` values, with topics in the MQTT form the parser reads
(``plant/{stream}/sensors/{feature}``), and acknowledges each one only when the daemon says so.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True)
class Delivery:
    """A message the transport delivered: what it said, when it came, and what acknowledging it
    takes (the broker's message id and quality of service, and the session it came on: an
    acknowledgement is only valid on that one)."""

    topic: str
    payload: bytes
    arrival: float  # wall clock, unix seconds
    mid: int
    qos: int
    session: int
    retain: bool = False  # the broker's retained last value, replayed at subscribe: not a fresh reading
    partition: int = -1  # JetStream: the partition it belongs to, and its sequence number in the stream
    seq: int = 0
    behind: bool = False  # ... and whether more of its partition already wait: a replay, not yet live


class Transport(Protocol):
    """One connection of the daemon's: intake into the inbox, forecasts and status out. The engine
    thread calls ``ack``, ``publish_many`` and reads the state; the transport's own threads fill the
    inbox."""

    counts: Counter[str]  # what happened that the metrics count: queue_full, reconnects, status_reasserted, ...
    connected: bool
    subscribed: bool

    @property
    def ready(self) -> bool: ...

    @property
    def pending(self) -> int: ...

    def start(self) -> None: ...

    def close_intake(self) -> None: ...

    def stop(self, timeout: float) -> bool: ...

    def ack(self, msg: Delivery) -> None: ...

    def publish_many(self, messages: Iterable[tuple[str, bytes]], retain: bool = False) -> list[str | None]: ...
