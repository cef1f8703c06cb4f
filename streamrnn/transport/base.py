"""The daemon's transport: what it asks of whatever carries sensor messages in and forecasts out.

The engine, the frames, the forecasts and the metrics know nothing of the broker: the daemon holds
one :class:`Transport`, which it chooses by the broker URL's scheme (``mqtt://``, ``mqtts://``: the MQTT link,
the simple single-box path; ``nats://``: a shard's link to its fleet on NATS JetStream,
:mod:`streamrnn.fleet.fleet`). A transport takes messages into the daemon's bounded inbox as
:class:`~streamrnn.delivery.Delivery` values, with topics in the MQTT form the parser reads
(``plant/{stream}/sensors/{feature}``), and acknowledges each one only when the daemon says so.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Protocol

from streamrnn.delivery import Delivery


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

    def ack_many(self, msgs: Iterable[Delivery]) -> None: ...

    def publish_many(self, messages: Iterable[tuple[str, bytes]], retain: bool = False) -> list[str | None]: ...
