"""A message as a transport delivered it: the value every part between the broker and the frames
passes on (the MQTT link, the JetStream consumer, the inbox, the intake, the journal). It lives
upstream of all of them, so none needs another to name it."""

from __future__ import annotations

from dataclasses import dataclass


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
