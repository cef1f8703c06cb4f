"""A shard's NATS connection: membership, partition claims, the partitions' consumers and their
checkpoints, and forecasts out (``nats://`` broker URLs).

Every third of ``shards.lease`` the link renews its member key and its claims, reads the members,
and moves partitions as :mod:`streamrnn.fleet.ownership` says: one it should hold and nobody holds it
claims (a KV create), loads its checkpoint from the object store and consumes from the message
after it; one it should no longer hold it stops fetching and asks the engine thread to hand it
back (checkpoint, then the claim deleted). A shard that dies stops renewing: its keys lapse after
``shards.lease`` seconds and the others take its partitions from their last checkpoints, replaying
what JetStream kept since. Messages are acknowledged once a checkpoint holds them.

nats-py is asyncio: the link runs an event loop on a thread of its own, as paho runs its network
thread; the engine thread hands it work and reads the inbox, where claims and releases come in
order with the messages.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import queue
import socket
import time
from collections.abc import Iterable

from streamrnn.config import ConfigError, Settings
from streamrnn.delivery import Delivery
from streamrnn.fleet import ownership
from streamrnn.fleet.fleetstore import ChampionStore, PartitionStore
from streamrnn.fleet.lease import Leases
from streamrnn.transport import jetstream
from streamrnn.transport.consumer import PartitionFeed
from streamrnn.transport.jetstream import subject
from streamrnn.transport.natsconn import Connection, put, until

log = logging.getLogger(__name__)

Control = ownership.Claimed | ownership.Release | ownership.Lost | ownership.Crowned


def member_name(instance: str) -> str:
    """The fleet member a process is: its instance, if one was given (a restart gets its
    partitions back), else its host and process id."""
    return instance if instance != "default" else f"{socket.gethostname()}-{os.getpid()}".replace(".", "-")


class FleetLink(Connection):
    """One shard's connection to the fleet; a :class:`~streamrnn.transport.base.Transport` whose inbox
    also carries :data:`Control` values."""

    def __init__(self, settings: Settings, templates: list[str], inbox: queue.Queue) -> None:
        self.me = member_name(settings.mqtt.instance)
        super().__init__(settings.mqtt, f"streamrnn-{self.me}")
        self.shards, self.templates, self.inbox = settings.shards, templates, inbox
        self.max_abs = settings.frames.max_abs  # a partition's checkpoint holding more is unsound
        self.ack_wait = max(60.0, 3 * settings.checkpoint.every)  # acknowledged at checkpoints: never delivered again meanwhile
        self.status_subject = subject(self.cfg.status_topic.format(instance=self.cfg.instance))
        self.error: Exception | None = None  # what stopped the link for good (the stream made for other settings)
        self._intake = True
        self._claims: dict[int, int] = {}  # partition -> the revision of our claim
        self._renewed: dict[int, float] = {}  # ... and when the request that last renewed it was sent (monotonic)
        self._fence = min(0.75, 1 - 0.6 / settings.shards.lease) * settings.shards.lease  # see _taking: < a lease less a fetch's 0.5 s
        self._releasing: set[int] = set()
        self.assigned = 0  # partitions the members we saw last assign us
        self._handing = 0  # hand-backs under way
        self._feeds: dict[int, PartitionFeed] = {}
        self._saving: dict[int, asyncio.Lock] = {}
        self._js = self._leases = None  # once joined: JetStream, the leases
        self.checkpoints: PartitionStore | None = None  # once joined
        # the champion, and the trainer's lease where trainer.enabled
        self.champion = ChampionStore(inbox, settings.trainer.enabled, self._complaints, self.counts)

    # -- what the engine thread asks ------------------------------------------------------------
    def close_intake(self) -> None:
        """Fetch no more, claim no more; what was fetched and not taken goes to the partitions' next owners."""
        self._intake = False

    def ack(self, msg: Delivery) -> None:
        """Nothing to do per message, nor for many: a partition's messages are acknowledged by its checkpoints."""

    def ack_many(self, msgs: Iterable[Delivery]) -> None: ...

    def drained(self, partition: int) -> float:
        """When JetStream last said that nothing waits for the partition (0: not yet)."""
        return self._feeds[partition].drained if partition in self._feeds else 0.0

    def save(self, partition: int, state: dict, seq: int) -> None:
        """Store the partition's checkpoint (``state`` after message ``seq``); acknowledge what it holds."""
        self.soon(self._save(partition, state, seq))

    def hand_back(self, partition: int, state: dict | None, seq: int) -> None:
        """The engine thread dropped the partition (``state`` None: nothing new to store): store it, release the claim."""
        with self._lock:
            self._handing += 1  # counted here, before stop() can ask: leave() waits for it
        self.soon(self._hand_back(partition, state, seq))

    # -- the connection's thread ----------------------------------------------------------------
    async def serve(self, nc) -> None:
        """Join, then a lease round every third of a lease."""
        if not await self._join(nc):
            return
        self.subscribed = True
        await nc.publish(self.status_subject, b"online")
        log.info("joined the fleet", extra={"member": self.me, "partitions": self.shards.partitions})
        while not self._stopping.is_set():
            try:
                await self._round()
            except Exception as e:  # the connection lost, a server electing: the next round tries again
                self._complaints.log(log, logging.WARNING, "lease", "lease round failed", error=f"{type(e).__name__}: {e}")
            await until(self._stopping, self.shards.lease / 3)

    async def _join(self, nc) -> bool:
        """The streams, bucket and store made or found; False if stopped first, or for good (``error``)."""
        while not self._stopping.is_set():
            try:
                await jetstream.prepare(nc, self.templates, self.cfg.forecast_topic, self.shards)
                self._js = nc.jetstream()
                quick = nc.jetstream(timeout=min(5.0, self.shards.lease / 3))  # a lease round never outlives a lease
                self._leases = Leases(await quick.key_value(jetstream.BUCKET), self.me)
                store = await self._js.object_store(jetstream.STATE)
                self.checkpoints = PartitionStore(store, self._leases, self.counts, self._complaints, self.max_abs)
                self.champion.bind(store, self._leases)
                return True
            except ConfigError as e:  # for good: the daemon stops, saying why
                self.error = e
                return False
            except Exception as e:  # JetStream not ready yet (a cluster electing its leaders): again shortly
                self._complaints.log(log, logging.WARNING, "prepare", "jetstream not ready", error=f"{type(e).__name__}: {e}")
                await asyncio.sleep(self.cfg.reconnect_min)
        return False

    async def _round(self) -> None:
        """Renew, read the members, release what moved away, claim what came to us; then the champion."""
        leases = self._leases
        members = await leases.members()
        for p, rev in list(self._claims.items()):
            sent = time.monotonic()
            rev = await leases.renew(p, rev)
            if rev is None:
                await self._lose(p)
            elif p in self._claims:  # not handed back meanwhile
                self._claims[p], self._renewed[p] = rev, sent
        if not self._intake:
            return
        mine = ownership.owned(self.me, self.shards.partitions, members)
        self.assigned = len(mine)
        for p in sorted(self._claims.keys() - mine - self._releasing):
            await self._release(p)
        for p in sorted(mine - self._claims.keys()):
            sent = time.monotonic()
            if (rev := await leases.claim(p)) is not None:
                self._renewed[p] = sent
                await self._claim(p, rev)
        await self.champion.round(self._intake)

    async def _claim(self, p: int, rev: int) -> None:
        """Load the partition's checkpoint, consume from the message after it; a claim that fails
        on the way is let go."""
        t0 = time.perf_counter()
        self._claims[p] = rev
        try:
            state, seq = await self.checkpoints.load(p)
            sub, waiting = await jetstream.consume(self._js, p, seq, self.ack_wait)
        except Exception:
            self._claims.pop(p, None)
            await self._leases.release(p)
            raise
        await put(self.inbox, ownership.Claimed(p, state, seq, waiting))
        self._feeds[p] = PartitionFeed(
            self._nc, p, seq, sub, self.ack_wait, self.inbox, lambda: self._taking(p), lambda: self._epoch, self.counts, self._complaints
        )
        self.counts["claimed"] += 1
        log.info("partition claimed", extra={"partition": p, "after": seq, "seconds": round(time.perf_counter() - t0, 3)})

    def _taking(self, p: int) -> bool | None:
        """Fetch (True), stop (False), or wait (None): our claim was not renewed for ``_fence``
        seconds and may lapse before the next renewal; the shard that takes it then must be the
        only one to fetch from its consumer."""
        if not self._intake or p not in self._claims or p in self._releasing:
            return False
        return True if time.monotonic() - self._renewed.get(p, -math.inf) < self._fence else None

    async def _release(self, p: int) -> None:
        """Stop fetching; the engine thread checkpoints the partition after what it has and hands it back."""
        self._releasing.add(p)
        await self._stop_fetching(p)
        await put(self.inbox, ownership.Release(p))
        log.info("partition moving", extra={"partition": p})

    async def _lose(self, p: int) -> None:
        self._claims.pop(p, None)
        await self._stop_fetching(p)
        self._feeds.pop(p, None)
        self.counts["lost"] += 1
        await put(self.inbox, ownership.Lost(p))
        log.warning("partition claim lapsed: another shard may hold it", extra={"partition": p})

    async def _stop_fetching(self, p: int) -> None:
        feed = self._feeds.get(p)
        if feed is not None:
            await feed.stop()

    async def _hand_back(self, p: int, state: dict | None, seq: int) -> None:
        try:
            if state is not None:
                await self._save(p, state, seq)
            async with self._saving.setdefault(p, asyncio.Lock()):  # after a checkpoint still on its way
                await self._unclaim(p)
        finally:
            with self._lock:
                self._handing -= 1

    async def _unclaim(self, p: int) -> None:
        held = self._claims.pop(p, None) is not None
        self._releasing.discard(p)
        await self._stop_fetching(p)
        self._feeds.pop(p, None)
        if held:
            try:
                await self._leases.release(p)
            except Exception as e:  # it lapses after shards.lease instead
                self._complaints.log(log, logging.WARNING, "release", "claim not deleted", partition=p, error=f"{type(e).__name__}: {e}")
        self.counts["released"] += 1

    async def _save(self, p: int, state: dict, seq: int) -> None:
        """Store one partition's checkpoint if the partition is still ours; acknowledge what it holds."""
        async with self._saving.setdefault(p, asyncio.Lock()):
            if await self.checkpoints.save(p, state) and p in self._feeds:
                await self._feeds[p].acknowledge(seq)

    async def leave(self, nc, deadline: float) -> bool:
        """Wait for the hand-backs the engine thread asked for, leave the fleet, say offline."""
        for p in list(self._feeds):
            await self._stop_fetching(p)
        while self._handing and time.monotonic() < deadline and nc.is_connected:
            await asyncio.sleep(0.01)
        for p in list(self._claims):  # claimed while the engine thread was stopping: it never held them
            await self._unclaim(p)
        try:
            await self.champion.leave()
            await self._leases.leave()
        except Exception as e:  # it lapses after shards.lease
            log.warning("member key not deleted: %s", e)
        await nc.publish(self.status_subject, b"offline")
        self.subscribed = False
        return not self._claims
