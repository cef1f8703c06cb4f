"""What a fleet keeps in JetStream's object store, as a shard's NATS connection reads and writes
it: each partition's checkpoint, and the fleet's champion with its version
(:mod:`streamrnn.fleet.champion` says why one shard trains for all). Nothing is written but under a
claim that still stands: a shard that stalled past its lease never overwrites what the shard that
took over wrote.

A shard that trains competes for the KV key ``owner.trainer`` as for a partition: the first to
make it trains, and renews it every round, first and on nothing else read. Then the round looks at
the stored champion (its object's identity and description: no download) and hands one stored
since it last looked to the engine thread, which serves it where it is newer than what it serves
and fits. An object that cannot be read (a description that is no version, bytes that are no
checkpoint) costs one refusal, logged and counted, and is not looked at again; it is not "seen":
versions are fenced by the trainer's lease, which alone stores champions, not by the largest
number ever read, so a good champion stored after a bad one is served.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from collections import Counter, deque

from streamrnn.daemon import checkpoint
from streamrnn.engine.soundness import unsound
from streamrnn.fleet import ownership
from streamrnn.fleet.lease import Leases
from streamrnn.logs import RateLimited
from streamrnn.transport.natsconn import put

log = logging.getLogger(__name__)

NAME = "champion"  # its object in the object store
TRAINER = "trainer"  # its lease: the KV key owner.trainer


async def _load(store, partition: int) -> tuple[dict | None, int]:
    """The partition's checkpoint from the object store and the sequence it holds messages up to;
    (None, 0) if there is none. Raises CorruptCheckpoint (or KeyError, TypeError, ValueError) for one unusable."""
    import nats

    try:
        got = await store.get(f"partition-{partition}")
    except nats.js.errors.ObjectNotFoundError:
        return None, 0
    state = await asyncio.get_running_loop().run_in_executor(None, checkpoint.decode, got.data)
    return state, int(state["seq"])


class PartitionStore:
    """Each partition's last checkpoint, ``partition-<p>``."""

    def __init__(self, store, leases: Leases, counts: Counter[str], complaints: RateLimited, max_abs: float) -> None:
        self.store, self.leases, self.counts, self._complaints, self.max_abs = store, leases, counts, complaints, max_abs
        self.written: deque[tuple[float, int]] = deque(maxlen=1024)  # (seconds, bytes) of each stored, for the metrics

    async def load(self, p: int) -> tuple[dict | None, int]:
        """The partition's checkpoint and the stream sequence it holds messages up to; one
        unusable (unsound: :mod:`streamrnn.engine.soundness`) is said, and everything JetStream kept is replayed."""
        try:
            state, seq = await _load(self.store, p)
            if state is not None and (why := unsound(state["engine"], self.max_abs)) is not None:
                raise ValueError(f"state not sound: {why}")
            return state, seq
        except (checkpoint.CorruptCheckpoint, KeyError, TypeError, ValueError) as e:
            self.counts["checkpoints_unusable"] += 1
            log.error("partition checkpoint unusable: replaying what JetStream kept", extra={"partition": p, "error": str(e)})
            return None, 0

    async def save(self, p: int, state: dict) -> bool:
        """Store the partition's checkpoint if our claim on it stands; False where it was not stored."""
        t0 = time.perf_counter()
        try:
            if not await self.leases.holds(p):
                return False  # lapsed and taken: the new owner's checkpoints count, not ours
            data = await asyncio.get_running_loop().run_in_executor(None, checkpoint.encode, state)
            await self.store.put(f"partition-{p}", data)
        except Exception as e:  # the next one tries again
            self.counts["checkpoints_failed"] += 1
            self._complaints.log(log, logging.ERROR, "checkpoint", "checkpoint failed", partition=p, error=f"{type(e).__name__}: {e}")
            return False
        self.counts["checkpoints"] += 1
        self.written.append((time.perf_counter() - t0, len(data)))
        return True


class ChampionStore:
    """The fleet's champion, ``champion``, its version in the object's description; the trainer's
    lease. Bound to the object store and the leases once the shard has joined."""

    def __init__(self, inbox: queue.Queue, trains: bool, complaints: RateLimited, counts: Counter[str]) -> None:
        self.store, self.leases, self.inbox, self.trains, self._complaints = None, None, inbox, trains, complaints
        self.counts = counts  # champions_refused
        self.training = False  # we hold the trainer's lease
        self.looked: str | None = None  # the stored object last looked at (its nuid), ours included
        self._rev: int | None = None

    def bind(self, store, leases: Leases) -> None:
        self.store, self.leases = store, leases

    async def round(self, intake: bool) -> None:
        """The trainer's lease renewed, or taken if free; then a champion stored since, to the engine thread."""
        if self.trains and intake:
            self._rev = await (self.leases.renew(TRAINER, self._rev) if self._rev else self.leases.claim(TRAINER))
            if (self._rev is not None) != self.training:
                log.info("trainer's lease taken" if self._rev else "trainer's lease lost: another shard trains")
            self.training = self._rev is not None
        await self._look()

    async def _look(self) -> None:
        import nats

        try:
            info = await self.store.get_info(NAME)
        except nats.js.errors.ObjectNotFoundError:
            return
        if info.nuid == self.looked:
            return
        got = await self.store.get(NAME)
        self.looked = info.nuid  # fetched: not again, usable or not
        try:
            version = int(info.description)
            state = await asyncio.get_running_loop().run_in_executor(None, checkpoint.decode, got.data)
        except (TypeError, ValueError) as e:  # CorruptCheckpoint is a ValueError
            self.counts["champions_refused"] += 1
            why = f"{type(e).__name__}: {e}"
            self._complaints.log(log, logging.ERROR, "champion", "stored champion unusable: serving the one before", error=why)
            return
        await put(self.inbox, ownership.Crowned(version, state))

    async def crown(self, state: dict, version: int) -> bool:
        """Store a new champion, if we still hold the trainer's lease."""
        from nats.js.api import ObjectMeta

        try:
            if not await self.leases.holds(TRAINER):
                log.warning("champion not stored: the trainer's lease passed to another shard", extra={"version": version})
                return False
            data = await asyncio.get_running_loop().run_in_executor(None, checkpoint.encode, state)
            info = await self.store.put(NAME, data, meta=ObjectMeta(name=NAME, description=str(version)))
        except Exception as e:  # its next retrain makes another
            self._complaints.log(log, logging.ERROR, "champion", "champion not stored", version=version, error=f"{type(e).__name__}: {e}")
            return False
        self.looked = info.nuid  # ours: not fetched back
        log.info("champion stored", extra={"version": version, "bytes": len(data)})
        return True

    async def leave(self) -> None:
        if self._rev is not None and self.leases is not None:
            self._rev, self.training = None, False
            await self.leases.release(TRAINER)
