"""The daemon's inbox: what the network thread hands the engine thread, served fairly over the streams.

One queue per stream, taken round-robin: a stream that sends a thousand messages while another sends
one delays that one by one turn of the round, not by the thousand (a FIFO made every stream wait
behind a runaway's seconds of backlog). Nothing is refused while there is room: a broker's redelivery
after a restart, or a gateway catching up, waits its turn and is served whole. Only when the inbox is
full does a stream holding more than ``share`` times its share (the inbox over the streams heard in
the last minute, so that a runaway alone in the inbox is still one of many) lose its newest message,
refused at the door, or the newest it holds dropped to let another stream's in: the network thread
never blocks behind a runaway, so the other streams' messages keep coming in. When
the inbox is full and no stream holds more than its share, ``put`` waits as :class:`queue.Queue`'s
does (the broker holds the rest) and raises :class:`queue.Full` after ``timeout``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Collection

from streamrnn.delivery import Delivery

_HEARD = 60.0  # seconds a stream counts among those the inbox serves after its last message


class FairInbox:
    """A bounded queue of deliveries, round-robin over ``key(topic)`` (the stream): the link puts,
    the daemon's turn takes (and puts back what it did not use); which stream a refusal fell on."""

    def __init__(self, maxsize: int, key: Callable[[str], str], share: float = 2.0) -> None:
        self.maxsize, self.key, self.share = maxsize, key, share
        self._queues: dict[str, deque[Delivery]] = {}  # streams with messages waiting
        self._turns: deque[str] = deque()  # those streams, in the order they are served
        self._size = 0
        self.shed: Counter[str] = Counter()  # messages shed, by stream, until the daemon reads them
        # stream -> when a message of it last came (monotonic), the longest heard first; at most
        # maxsize of them (a flood of ids, each heard once, holds no more than the inbox would)
        self._heard: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        self._taken = threading.Condition(self._lock)  # there is room
        self._put = threading.Condition(self._lock)  # there is a message

    def qsize(self) -> int:
        return self._size

    def empty(self) -> bool:
        return self._size == 0

    def put(self, item: Delivery, timeout: float | None = None) -> Delivery | None:
        """Queue ``item``. Returns a delivery that was refused to make it fit, if any (``item``
        itself, or the newest message of the stream holding the most), for the caller to
        acknowledge and count; raises :class:`queue.Full` if no room came within ``timeout``."""
        k = self.key(item.topic)
        with self._lock:
            self._hear(k, now := time.monotonic())
            shed = None
            if self._size >= self.maxsize:
                shed = self._shed(k, item, now)
                if shed is not None:
                    self.shed[k if shed is item else self.key(shed.topic)] += 1
                if shed is item:
                    return item
                if shed is None:
                    end = None if timeout is None else time.monotonic() + timeout
                    while self._size >= self.maxsize:
                        left = None if end is None else end - time.monotonic()
                        if left is not None and left <= 0:
                            raise queue.Full
                        self._taken.wait(left)
            q = self._queues.get(k)
            if q is None:
                q = self._queues[k] = deque()
                self._turns.append(k)
            q.append(item)
            self._size += 1
            self._put.notify()
            return shed

    def _hear(self, k: str, now: float) -> None:
        heard = self._heard
        heard[k] = now
        heard.move_to_end(k)
        while len(heard) > self.maxsize or now - next(iter(heard.values())) >= _HEARD:
            heard.popitem(last=False)

    def _shed(self, k: str, item: Delivery, now: float) -> Delivery | None:
        """Full: what to refuse so that ``item`` (of stream ``k``) fits, if anything."""
        limit = self.share * self._size / max(len(self._heard), len(self._queues))
        if len(self._queues.get(k, ())) + 1 > limit:
            return item  # its stream holds more than its share already
        fattest = max(self._queues, key=lambda s: len(self._queues[s]))
        q = self._queues[fattest]
        if len(q) <= limit:
            return None  # every stream within its share: wait for room
        self._size -= 1
        shed = q.pop()
        if not q:  # a share below one message: many streams in a small inbox
            del self._queues[fattest]
            self._turns.remove(fattest)
        return shed

    def take(self, n: int, per_stream: int, wait: float, skip: Collection[str] = ()) -> list[Delivery]:
        """Up to ``n`` messages, the streams in turn, at most ``per_stream`` of each (a runaway's
        backlog waits for the next take, behind every other stream's), waiting up to ``wait``
        seconds for the first. Streams in ``skip`` (those a turn has stepped already) give none and
        keep their place: they come first at the next take."""
        with self._lock:
            if not self._size and wait > 0:
                self._put.wait(wait)
            out: list[Delivery] = []
            counts: dict[str, int] = {}
            done: list[str] = []  # streams that gave their share of this take, with more waiting
            passed: list[str] = []  # streams skipped, in their order
            while self._turns and len(out) < n:
                k = self._turns.popleft()
                if k in skip:
                    passed.append(k)
                    continue
                q = self._queues[k]
                out.append(q.popleft())
                counts[k] = counts.get(k, 0) + 1
                if not q:
                    del self._queues[k]
                elif counts[k] >= per_stream:
                    done.append(k)
                else:
                    self._turns.append(k)
            self._turns.extendleft(reversed(passed))
            self._turns.extend(done)
            self._size -= len(out)
            if out:
                self._taken.notify_all()
            return out

    def requeue(self, items: list[Delivery]) -> None:
        """Put back messages taken and not used (a turn that served early), each at the head of
        its stream's queue, in their order; a stream with none waiting is served next."""
        with self._lock:
            for item in reversed(items):
                k = self.key(item.topic)
                q = self._queues.get(k)
                if q is None:
                    q = self._queues[k] = deque()
                    self._turns.appendleft(k)
                q.appendleft(item)
            self._size += len(items)
            if items:
                self._put.notify()

    def take_shed(self) -> Counter[str]:
        """The messages shed since the last call, by stream."""
        with self._lock:
            shed, self.shed = self.shed, Counter()
            return shed

    def oldest(self) -> float | None:
        """The earliest arrival still waiting (None: none waits): everything that arrived before
        it has been taken, whatever the order the streams were served in."""
        with self._lock:
            return min((q[0].arrival for q in self._queues.values()), default=None)
