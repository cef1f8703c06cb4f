"""One NATS connection on an event loop of its own thread, as paho runs its network thread: the
caller's thread hands it work (:meth:`Connection.soon`), the loop connects with backoff until the
server answers, publishes what it was handed once connected, and closes flushing what is unsent.
nats-py is asyncio; the rest of streamrnn is not."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterable

from streamrnn.config import MqttSettings
from streamrnn.logs import RateLimited
from streamrnn.transport.jetstream import subject

log = logging.getLogger(__name__)


async def until(event: asyncio.Event, timeout: float) -> bool:
    """Wait for ``event`` at most ``timeout`` seconds; whether it is set."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    return True


class Connection:
    """Subclasses serve the connection in :meth:`serve` and say goodbye in :meth:`leave`."""

    def __init__(self, cfg: MqttSettings, name: str) -> None:
        self.cfg, self.name = cfg, name
        self.counts: Counter[str] = Counter()
        self.connected = self.subscribed = False  # subscribed: what the subclass serves is set up
        self._complaints = RateLimited(burst=5, per=60.0)
        self._epoch = 0  # counts reconnects
        self._unsent = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._stopping: asyncio.Event | None = None
        self._closed: asyncio.Event | None = None
        self._up = asyncio.Event()  # connected once: what was published before waits for it
        self._tasks: set[asyncio.Task] = set()
        self._nc = None
        self._thread = threading.Thread(target=self._run, name="nats", daemon=True)

    @property
    def ready(self) -> bool:
        return self.connected and self.subscribed

    @property
    def pending(self) -> int:
        return self._unsent

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """:meth:`leave`, flush, close; whether everything went out in time."""
        if not self._thread.is_alive():
            return True
        done = asyncio.run_coroutine_threadsafe(self._close(time.monotonic() + 0.9 * timeout), self._loop)
        try:
            flushed = done.result(timeout)
        except Exception as e:  # a timeout, or the connection gone
            log.warning("nats connection not closed cleanly: %s", e)
            flushed = False
        self._thread.join(max(0.1, timeout))
        return flushed

    def publish_many(self, messages: Iterable[tuple[str, bytes]], retain: bool = False) -> list[str | None]:
        """Hand the messages to the connection's thread (taken while disconnected, too: the client
        buffers them until it reconnects); None for each, as a taken MQTT publish."""
        batch = [(subject(t), p) for t, p in messages]
        self.send(batch)
        return [None] * len(batch)

    def send(self, batch: list[tuple[str, bytes]]) -> None:
        """Hand (subject, payload) pairs to JetStream from any thread, as :meth:`publish_many` does."""
        with self._lock:
            self._unsent += len(batch)
        self.soon(self._publish(batch))

    def soon(self, coro) -> None:
        """Run ``coro`` on the connection's loop (from any thread)."""

        def go() -> None:
            task = self._loop.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        self._loop.call_soon_threadsafe(go)

    async def serve(self, nc) -> None:
        raise NotImplementedError

    async def leave(self, nc, deadline: float) -> bool:
        """Before the connection closes; whether all was done."""
        return True

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:  # as asyncio.run ends: what is still pending (an object-store read, say) is cancelled, not destroyed
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

    async def _main(self) -> None:
        self._stopping, self._closed = asyncio.Event(), asyncio.Event()
        try:
            nc = await self._connect()
            if nc is not None:
                await self.serve(nc)
        finally:
            if self._stopping.is_set():
                await self._closed.wait()  # the loop runs until stop() is done with it

    async def _connect(self):
        """The connection, tried again with backoff until the server answers (or the daemon stops)."""
        import nats

        cfg, wait = self.cfg, self.cfg.reconnect_min
        while not self._stopping.is_set():
            try:
                nc = await nats.connect(
                    cfg.url,
                    name=self.name,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=cfg.reconnect_min,
                    user=cfg.username,
                    password=cfg.secret(),
                    disconnected_cb=self._disconnected,
                    reconnected_cb=self._reconnected,
                    error_cb=self._error,
                )
            except Exception as e:  # refused, unreachable: said at a bounded rate, tried again
                msg = "nats server unreachable"
                self._complaints.log(log, logging.WARNING, "connect", msg, broker=cfg.url, error=f"{type(e).__name__}: {e}")
                await asyncio.sleep(wait)
                wait = min(2 * wait, cfg.reconnect_max)
                continue
            self.connected = True
            self.counts["connects"] += 1
            log.info("connected", extra={"broker": cfg.url, "client": self.name})
            self._nc = nc
            self._up.set()
            return nc
        return None

    async def _publish(self, batch: list[tuple[str, bytes]]) -> None:
        """After the first connection, each to JetStream (a stream keeps the subject), again until
        it is acknowledged: a message written to a server that dies is not lost with it (one whose
        acknowledgement was lost goes out twice, the same)."""
        n = len(batch)
        await self._up.wait()
        js, wait = self._nc.jetstream(), 0.1
        try:
            while not self._closed.is_set():
                done = await asyncio.gather(*(js.publish(s, p, timeout=2.0) for s, p in batch), return_exceptions=True)
                failed = [(m, r) for m, r in zip(batch, done) if isinstance(r, BaseException)]
                if not failed:
                    return
                self.counts["publish_retried"] += len(failed)
                error = f"{type(failed[0][1]).__name__}: {failed[0][1]}"
                self._complaints.log(log, logging.WARNING, "publish", "publish not acknowledged: again", messages=len(failed), error=error)
                batch = [m for m, _ in failed]
                await asyncio.sleep(wait)
                wait = min(2 * wait, self.cfg.reconnect_max)
            self.counts["publish_failed"] += len(batch)  # closed before they were acknowledged
        finally:
            with self._lock:
                self._unsent -= n

    async def _close(self, deadline: float) -> bool:
        try:
            self._stopping.set()
            nc = self._nc
            if nc is None or nc.is_closed:
                return False
            done = await self.leave(nc, deadline)
            while self._unsent > 0 and nc.is_connected and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await nc.flush(timeout=max(0.1, deadline - time.monotonic()))
            await nc.close()
            self.connected = False
            return done and self._unsent == 0
        finally:
            self._closed.set()

    async def _disconnected(self) -> None:
        self.connected = False
        self.counts["disconnects"] += 1

    async def _reconnected(self) -> None:
        self.connected = True
        self._epoch += 1
        self.counts["reconnects"] += 1
        log.info("reconnected", extra={"broker": self.cfg.url})

    async def _error(self, e: Exception) -> None:
        self._complaints.log(log, logging.WARNING, "error", "nats error", error=f"{type(e).__name__}: {e}")


async def put(inbox: queue.Queue, item: object) -> None:
    """Into the inbox, after the messages before it, waiting while it is full."""
    while True:
        try:
            return inbox.put_nowait(item)
        except queue.Full:
            await asyncio.sleep(0.01)
