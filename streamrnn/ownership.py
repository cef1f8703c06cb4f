"""Which shard owns which partition, and the messages that move a partition between the NATS
connection's thread and the engine's.

Every shard computes the same owners from the same set of live members by rendezvous hashing:
each partition goes to the member whose hash with it is highest. A member that joins takes about
1/N of the partitions, one that leaves hands back only its own, and nobody has to agree on
anything but the member set (kept in a JetStream KV bucket, each member's key renewed while it
lives). A claim on a partition is a KV key made only if absent, so two shards whose views of the
members differ for a moment never both hold one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


def owner(partition: int, members: list[str] | set[str]) -> str | None:
    """The member that owns ``partition`` (None without members)."""
    return max(members, key=lambda m: (_weight(m, partition), m), default=None)


def owned(me: str, partitions: int, members: list[str] | set[str]) -> set[int]:
    """The partitions ``me`` owns among ``members``."""
    return {p for p in range(partitions) if owner(p, members) == me}


def _weight(member: str, partition: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{member}\0{partition}".encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True, slots=True)
class Claimed:
    """The shard holds ``partition`` now: go on from ``state`` (a checkpoint's, None for a
    partition never checkpointed) after message ``seq`` of the sensor stream, ``waiting`` of its
    messages already there to replay."""

    partition: int
    state: dict | None
    seq: int
    waiting: int = 0


@dataclass(frozen=True, slots=True)
class Release:
    """Hand ``partition`` on: checkpoint it as it is after the messages before this one, then drop it."""

    partition: int


@dataclass(frozen=True, slots=True)
class Lost:
    """The claim on ``partition`` lapsed and another shard may hold it: drop it, checkpoint nothing."""

    partition: int


@dataclass(frozen=True, slots=True)
class Crowned:
    """The fleet has a new champion (:mod:`streamrnn.champion`): ``state`` as stored, ``version``."""

    version: int
    state: dict
