"""One claimed partition's messages, from its JetStream consumer into the shard's inbox: in stream
order, each once, the inbox's back-pressure holding the fetches, acknowledged up to where a
checkpoint holds them."""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from collections import Counter, deque
from collections.abc import Callable

from streamrnn.delivery import Delivery
from streamrnn.logs import RateLimited
from streamrnn.transport import jetstream

log = logging.getLogger(__name__)

_BATCH = 256  # messages fetched at once at most
_LINGER = 0.02  # seconds a batch fetch waits for more when nothing waits at JetStream


class PartitionFeed:
    """Fetches partition ``p`` from the message after ``after`` while ``taking()`` says so (None:
    not now); binds its consumer again, from the last message taken, when ``epoch()`` moves (a
    reconnect) or a delivery is missing (lost in transit while a leader changed: JetStream would
    deliver it again only after ``ack_wait``, behind newer readings)."""

    def __init__(
        self,
        nc,
        p: int,
        after: int,
        sub,
        ack_wait: float,
        inbox: queue.Queue,
        taking: Callable[[], bool],
        epoch: Callable[[], int],
        counts: Counter[str],
        complaints: RateLimited,
    ) -> None:
        self.nc, self.js, self.p, self.sub, self.ack_wait, self.inbox = nc, nc.jetstream(), p, sub, ack_wait, inbox
        self.taking, self.epoch, self.counts, self.complaints = taking, epoch, counts, complaints
        self.last = after  # the last sequence put into the inbox
        self.delivered = 0  # ... and its delivery's sequence on the consumer: a gap means some were lost in transit
        self.drained = 0.0  # when JetStream last said nothing waits for this partition (not a stall: quiet)
        # the last fetch found nothing: the next waits for one message, which it returns the moment
        # it comes; a batch fetch that finds nothing waiting lingers until its batch fills or its
        # timeout passes, holding the first message to come (so a batch fetch lingers _LINGER at most)
        self.idle = False
        # (sequence, acknowledgement subject) since the last checkpoint: not the messages, whose
        # objects, a checkpoint's interval of them, made each full collection walk that many more
        self.unacked: deque[tuple[int, str]] = deque()
        self.task = asyncio.get_running_loop().create_task(self._fetch())

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def acknowledge(self, seq: int) -> None:
        """A checkpoint holds the messages up to ``seq``: acknowledge them (the last acknowledges those before it)."""
        reply = None
        while self.unacked and self.unacked[0][0] <= seq:
            reply = self.unacked.popleft()[1]
        if reply is not None:
            try:
                await self.nc.publish(reply)  # what Msg.ack() sends
            except Exception as e:  # the next checkpoint's acknowledges these too
                self.complaints.log(log, logging.WARNING, "ack", "acknowledgement failed", error=f"{type(e).__name__}: {e}")

    async def _fetch(self) -> None:
        import nats

        epoch = self.epoch()
        while (go := self.taking()) is not False:
            if go is None:  # our claim may lapse: fetch nothing until it is renewed
                self.counts["fetch_fenced"] += 1
                await asyncio.sleep(0.05)
                continue
            try:
                if epoch != self.epoch() or self.delivered < 0:
                    epoch, (self.sub, _) = self.epoch(), await jetstream.consume(self.js, self.p, self.last, self.ack_wait)
                    self.delivered = 0
                msgs = await (self.sub.fetch(1, timeout=0.5) if self.idle else self.sub.fetch(_BATCH, timeout=_LINGER))
            except (TimeoutError, nats.errors.TimeoutError):
                self.idle = True
                await self._drained()
                continue
            except Exception as e:  # the connection lost or a server error: again, said at a bounded rate
                self.complaints.log(log, logging.WARNING, "fetch", "fetch failed", partition=self.p, error=f"{type(e).__name__}: {e}")
                await asyncio.sleep(0.5)
                continue
            self.idle = False
            for m in msgs:
                if not await self._take(m):
                    return
                if self.delivered < 0:
                    break

    async def _drained(self) -> None:
        """After an empty fetch: ask the consumer whether nothing waits, at most once a second."""
        if time.time() - self.drained < 1.0:
            return
        try:
            info = await self.sub.consumer_info()
        except Exception:  # unanswered: a leader being elected, not quiet
            self.counts["drain_unconfirmed"] += 1
            return
        if info.num_pending == 0:
            self.drained = time.time()

    async def _take(self, m) -> bool:
        """Into the inbox, waiting while it is full (the engine is behind: no more fetches until it
        catches up); False if the partition stopped being ours meanwhile."""
        meta = m.metadata
        seq = meta.sequence.stream
        if meta.sequence.consumer != self.delivered + 1:  # lost in transit (a leader changed): from the last one taken, again
            self.counts["delivery_gaps"] += 1
            self.delivered = -1
            return True
        self.delivered += 1
        if seq <= self.last:
            return True  # delivered again: taken already
        part, topic = jetstream.where(m.subject)
        d = Delivery(topic, m.data, meta.timestamp.timestamp(), seq, 1, 0, partition=part, seq=seq, behind=meta.num_pending > 0)
        while self.taking() is not False:
            try:
                self.inbox.put_nowait(d)
            except queue.Full:
                self.counts["inbox_full_waits"] += 1
                await asyncio.sleep(0.01)
                continue
            self.last = seq
            self.unacked.append((seq, m.reply))
            return True
        return False
