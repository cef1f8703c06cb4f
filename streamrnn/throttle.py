"""A runaway stream must not delay every other: all streams share one inbox to the engine, so a
gateway that floods one stream (a loop, a replay gone wrong, a hostile client) would queue seconds
of its messages in front of everyone's.

In the transport's thread, before the inbox, each stream's recent message rate is kept (a count
fading with a time constant of a second), and all streams' together. While the inbox is backed up
(more than ``backlog`` messages wait), a message of a stream that sends a quarter or more of all
messages and more than ``SHARE`` times the median rate of the streams heard more than once lately
is refused (reason ``rate``), counted and acknowledged: the backlog in front of the other streams
stays about ``backlog`` messages however hard one stream floods. Nothing is refused while the
engine keeps up, however fast the streams send (a simulation run faster than its period, a
gateway catching up), nor when every stream bursts alike, nor when a flood of ids heard once each
(refused downstream, by ``streams.allow`` or the cap) makes the median small. What costs one message
here is a split of its topic and a little arithmetic; the median is taken again twice a second.
"""

from __future__ import annotations

import math
from collections import OrderedDict

TAU = 1.0  # seconds: the time constant of a stream's rate
SHARE = 4.0  # times the median rate: a runaway
_EVERY = 0.5  # seconds between two medians


class Throttle:
    """The rates of the streams heard lately (at most ``streams``; the one heard least recently
    makes room), for topics of the ``templates`` (levels ``{stream}``, ``{feature}``), each with
    the weight of one of its messages (a frame topic's carries every sensor: it weighs as many)."""

    def __init__(self, templates: dict[str, float], streams: int, backlog: int) -> None:
        self.streams, self.backlog = streams, backlog
        self._shapes = []  # (levels, the stream's level, the fixed levels by index, weight)
        for tpl, weight in templates.items():
            levels = tpl.split("/")
            fixed = {i: x for i, x in enumerate(levels) if x not in ("{stream}", "{feature}")}
            self._shapes.append((len(levels), levels.index("{stream}"), fixed, weight))
        self._rates: OrderedDict[str, list[float]] = OrderedDict()  # stream -> [count fading, when]
        self._all = [0.0, 0.0]  # every stream's messages: [count fading, when]
        self.median, self._next = math.inf, -math.inf  # nothing refused before a median is taken

    def stream(self, topic: str) -> tuple[str, float] | None:
        """The stream a topic is of and its message's weight, None for a topic of no template (the
        parser refuses it)."""
        levels = topic.split("/")
        for n, at, fixed, weight in self._shapes:
            if len(levels) == n and all(levels[i] == x for i, x in fixed.items()):
                return levels[at], weight
        return None

    def allow(self, topic: str, now: float, waiting: int) -> str | None:
        """None where the message may go on; else the stream it is refused for. ``now``: a
        monotonic clock; ``waiting``: the messages in the inbox."""
        found = self.stream(topic)
        if found is None:
            return None
        stream, weight = found
        rate = self._rates.get(stream)
        if rate is None:
            if len(self._rates) >= self.streams:
                self._rates.popitem(last=False)
            rate = self._rates[stream] = [0.0, now]
        else:
            self._rates.move_to_end(stream)
        for r in (rate, self._all):
            r[0] = r[0] * math.exp((r[1] - now) / TAU) + weight
            r[1] = now
        if now >= self._next:
            self._median(now)
        runaway = rate[0] > SHARE * self.median and 4 * rate[0] >= self._all[0]
        return stream if waiting > self.backlog and runaway else None

    def _median(self, now: float) -> None:
        """The median rate of the streams heard more than once in the last few time constants."""
        recent = sorted(c * math.exp((t - now) / TAU) for c, t in self._rates.values() if now - t < 5 * TAU and c > 1.5)
        self.median = recent[(len(recent) - 1) // 2] if len(recent) > 1 else math.inf  # one stream alone is no runaway
        self._next = now + _EVERY
