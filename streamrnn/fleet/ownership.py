"""Which shard owns which partition, and the messages that move a partition between the NATS
connection's thread and the engine's.

Every shard computes the same owners from the same set of live members: rendezvous hashing with
bounded loads. Each partition ranks the members by a hash of (member, partition) and, partitions
taken in order, goes to the first member in its ranking that still has room: every member holds
``partitions // members`` of them or one more (plain rendezvous hashing left 3 shards holding 11,
4 and 1 of 16). A member that joins takes about 1/N of the partitions, one that leaves hands back
its own and a few move between the others to stay even; nobody has to agree on anything but the
member set (kept in a JetStream KV bucket, each member's key renewed while it lives), and a
changed member set is the only thing that moves a partition, so nothing flaps. A claim on a
partition is a KV key made only if absent, so two shards whose views of the members differ for a
moment never both hold one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


def owners(partitions: int, members: list[str] | set[str]) -> dict[int, str]:
    """Each partition's owner among ``members`` (empty without members): the first member in the
    partition's ranking with room, every member holding ``partitions // len(members)`` or one more."""
    members = sorted(set(members))
    if not members:
        return {}
    base, extra = divmod(partitions, len(members))
    load = dict.fromkeys(members, 0)
    out: dict[int, str] = {}
    for p in range(partitions):
        for m in sorted(members, key=lambda m: (_weight(m, p), m), reverse=True):
            if load[m] < base or (load[m] == base and extra > 0):
                extra -= load[m] == base
                load[m] += 1
                out[p] = m
                break
    return out


def owned(me: str, partitions: int, members: list[str] | set[str]) -> set[int]:
    """The partitions ``me`` owns among ``members``."""
    return {p for p, m in owners(partitions, members).items() if m == me}


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
    """The fleet has a new champion (:mod:`streamrnn.fleet.champion`): ``state`` as stored, ``version``."""

    version: int
    state: dict
