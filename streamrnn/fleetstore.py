"""What a fleet keeps in JetStream's object store, as a shard's NATS connection reads and writes
it: each partition's checkpoint, and the fleet's champion with its version
(:mod:`streamrnn.champion` says why one shard trains for all). Nothing is written but under a
claim that still stands: a shard that stalled past its lease never overwrites what the shard that
took over wrote.

Every lease round looks at the stored champion's version (its object's description: no download)
and hands a newer one to the engine thread. A shard that trains competes for the KV key
``owner.trainer`` as for a partition: the first to make it trains, and renews it every round.
"""

from __future__ import annotations

import asyncio
import logging
import queue
from collections import Counter

from streamrnn import checkpoint, jetstream, ownership
from streamrnn.lease import Leases
from streamrnn.logs import RateLimited
from streamrnn.natsconn import put

log = logging.getLogger(__name__)

NAME = "champion"  # its object in the object store
TRAINER = "trainer"  # its lease: the KV key owner.trainer


class PartitionStore:
    """Each partition's last checkpoint, ``partition-<p>``."""

    def __init__(self, store, leases: Leases, counts: Counter[str], complaints: RateLimited) -> None:
        self.store, self.leases, self.counts, self._complaints = store, leases, counts, complaints

    async def load(self, p: int) -> tuple[dict | None, int]:
        """The partition's checkpoint and the stream sequence it holds messages up to; one
        unusable is said, and everything JetStream kept is replayed."""
        try:
            return await jetstream.load(self.store, p)
        except (checkpoint.CorruptCheckpoint, KeyError, TypeError, ValueError) as e:
            self.counts["checkpoints_unusable"] += 1
            log.error("partition checkpoint unusable: replaying what JetStream kept", extra={"partition": p, "error": str(e)})
            return None, 0

    async def save(self, p: int, state: dict) -> bool:
        """Store the partition's checkpoint if our claim on it stands; False where it was not stored."""
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
        return True


class ChampionStore:
    """The fleet's champion, ``champion``, its version in the object's description; the trainer's
    lease. Bound to the object store and the leases once the shard has joined."""

    def __init__(self, inbox: queue.Queue, trains: bool, complaints: RateLimited) -> None:
        self.store, self.leases, self.inbox, self.trains, self._complaints = None, None, inbox, trains, complaints
        self.training = False  # we hold the trainer's lease
        self.seen = -1  # the newest version handed to the engine thread (or stored by us)
        self._rev: int | None = None

    def bind(self, store, leases: Leases) -> None:
        self.store, self.leases = store, leases

    async def round(self, intake: bool) -> None:
        """A newer champion to the engine thread; the trainer's lease renewed, or taken if free."""
        await self._look()
        if self.trains and intake:
            self._rev = await (self.leases.renew(TRAINER, self._rev) if self._rev else self.leases.claim(TRAINER))
            if (self._rev is not None) != self.training:
                log.info("trainer's lease taken" if self._rev else "trainer's lease lost: another shard trains")
            self.training = self._rev is not None

    async def _look(self) -> None:
        import nats

        try:
            info = await self.store.get_info(NAME)
        except nats.js.errors.ObjectNotFoundError:
            return
        version = int(info.description or -1)
        if version <= self.seen:
            return
        got = await self.store.get(NAME)
        try:
            state = await asyncio.get_running_loop().run_in_executor(None, checkpoint.decode, got.data)
        except checkpoint.CorruptCheckpoint as e:
            self._complaints.log(log, logging.ERROR, "champion", "stored champion unusable: serving the one before", error=str(e))
            return
        finally:
            self.seen = version  # one unusable is not fetched again each round
        await put(self.inbox, ownership.Crowned(version, state))

    async def crown(self, state: dict, version: int) -> bool:
        """Store a new champion, if we still hold the trainer's lease."""
        from nats.js.api import ObjectMeta

        try:
            if not await self.leases.holds(TRAINER):
                log.warning("champion not stored: the trainer's lease passed to another shard", extra={"version": version})
                return False
            data = await asyncio.get_running_loop().run_in_executor(None, checkpoint.encode, state)
            await self.store.put(NAME, data, meta=ObjectMeta(name=NAME, description=str(version)))
        except Exception as e:  # its next retrain makes another
            self._complaints.log(log, logging.ERROR, "champion", "champion not stored", version=version, error=f"{type(e).__name__}: {e}")
            return False
        self.seen = max(self.seen, version)
        log.info("champion stored", extra={"version": version, "bytes": len(data)})
        return True

    async def leave(self) -> None:
        if self._rev is not None and self.leases is not None:
            self._rev, self.training = None, False
            await self.leases.release(TRAINER)
