"""Frame assembly: readings that arrive one sensor at a time, in any order, become frames on a grid.

Tick t of a stream stands for time ``t * period``. Its frame holds, per feature, the newest reading
with ``ts <= t * period`` that is younger than ``max_hold`` (sample-and-hold), NaN where there is
none; a tick that would hold nothing at all yields no frame. A tick closes

- by event time, once a reading of the same stream is more than ``lateness`` seconds past it, or
- by the wall clock, once its stream has sent nothing for ``idle_close`` seconds (it went quiet),
  or once its readings have waited ``max_open`` seconds with no tick closing (its clock is stuck),

and a reading for a tick that has closed is late: counted and dropped, never folded into a frame
that was already forecast from. Frames come out in tick order per stream.

Every stream is bounded: at most ``max_pending`` readings in hand (more are refused as
``overflow``), at most ``max_streams`` streams (a new one displaces the probationer heard least
recently: a stream that has not yet closed ``probation`` frames; else it is refused as
``capacity``). A stream whose every reading has been late for ``resync_after`` seconds while its
event time kept running (its clock jumped back, or a reading from the future had pushed it ahead)
starts afresh on its new clock. ``on_drop(stream)`` is told of each stream displaced or restarted,
so that what is kept downstream of the frames (the engine's state) goes with it.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Callable

import numpy as np

from streamrnn.engine.frame import Frame
from streamrnn.intake.payload import Reading, Rejected

_EPS = 1e-6  # of a tick: ts that float arithmetic put a hair off the grid still lands on it


class _Stream:
    __slots__ = ("pending", "held", "held_ts", "closed", "watermark", "wall", "frames", "late_since", "late_ts")

    def __init__(self, channels: int) -> None:
        self.pending: list[Reading] = []
        self.held = np.full(channels, np.nan)
        self.held_ts = np.full(channels, -np.inf)
        self.closed: int | None = None  # last closed tick
        self.watermark = -math.inf  # newest ts seen
        self.wall = 0.0  # wall-clock time of the last reading
        self.frames = 0  # frames closed, up to the probation
        self.late_since: float | None = None  # wall-clock time of the first of an unbroken run of late readings
        self.late_ts = math.inf  # the event time of that first one

    def frames_until(self, name: str, last: int, period: float, max_hold: float) -> list[Frame]:
        """Close the ticks up to ``last``: each tick's frame holds, per feature, the newest reading at
        or before it and younger than ``max_hold``; ticks with nothing alive are skipped."""
        if self.closed is not None and last <= self.closed:
            return []
        tick = lambda ts: math.ceil(ts / period - _EPS)  # as Assembler.tick: where a reading is first used
        self.pending.sort(key=lambda r: r.ts)
        pending, i, out = self.pending, 0, []
        t = self.closed + 1 if self.closed is not None else tick(pending[0].ts) if pending else last + 1
        while t <= last:
            while i < len(pending) and tick(pending[i].ts) <= t:
                r = pending[i]
                self.held[r.feature], self.held_ts[r.feature] = r.value, r.ts
                i += 1
            alive = t * period - self.held_ts < max_hold
            if alive.any():
                out.append(Frame(name, t * period, np.where(alive, self.held, np.nan)))
            if (t + 1) * period - self.held_ts.max() < max_hold:
                t += 1  # a held value still counts at the next tick
            elif i < len(pending):
                t = max(t + 1, tick(pending[i].ts))  # skip the empty ticks
            else:
                break
        self.pending = pending[i:]
        self.closed = last
        return out

    def state(self) -> dict:
        """The readings in hand, the held values, the last closed tick, the watermark, the frames."""
        kept = {"held": self.held.copy(), "held_ts": self.held_ts.copy(), "closed": self.closed, "watermark": self.watermark}
        return {"pending": [(r.feature, r.ts, r.value) for r in self.pending], **kept, "frames": self.frames}

    @classmethod
    def from_state(cls, name: str, d: dict, channels: int, probation: int) -> _Stream:
        st = cls(channels)
        st.pending = [Reading(name, int(f), float(ts), float(v)) for f, ts, v in d["pending"]]
        st.held[:], st.held_ts[:], st.watermark = d["held"], d["held_ts"], float(d["watermark"])
        st.closed = None if d["closed"] is None else int(d["closed"])
        st.frames = int(d.get("frames", probation))  # older checkpoints: established
        return st


class Assembler:
    """Per-stream frame assembly. ``counts`` holds the readings refused (``late``, ``overflow``;
    ``capacity`` is raised) and the streams ``displaced`` or ``resynced``."""

    def __init__(
        self,
        channels: int,
        period: float,
        lateness: float,
        max_hold: float,
        idle_close: float,
        max_streams: int,
        forget_after: float,
        *,
        max_pending: int = 1 << 30,
        max_open: float = math.inf,
        probation: int = 0,
        resync_after: float = math.inf,
        on_drop: Callable[[str], None] | None = None,
    ) -> None:
        self.channels, self.period, self.lateness, self.max_hold = channels, period, lateness, max_hold
        self.idle_close, self.max_streams, self.forget_after = idle_close, max_streams, forget_after
        self.max_pending, self.max_open, self.probation, self.resync_after = max_pending, max_open, probation, resync_after
        self.on_drop = on_drop
        self.streams: dict[str, _Stream] = {}
        self.counts: Counter[str] = Counter()
        # streams with readings in hand, by when they last had none or closed a tick (oldest first)
        self._open: OrderedDict[str, float] = OrderedDict()
        # streams still on probation, least recently heard first: the first is displaced at the cap
        self._probation: OrderedDict[str, None] = OrderedDict()
        # The streams not found quiet since their last reading, least recently heard first: the
        # wall-clock check walks only the front of it, not every stream each turn (at 1,000 streams
        # that walk was a quarter of the daemon's engine thread). The rest are looked at again
        # when one of them is due to be forgotten.
        self._heard: OrderedDict[str, _Stream] = OrderedDict()
        self._forget_at = math.inf

    def tick(self, ts: float) -> int:
        """The first tick at or after ``ts``: where a reading is first used."""
        return math.ceil(ts / self.period - _EPS)

    def add(self, r: Reading, wall: float) -> list[Frame]:
        """Take one reading; return the frames its event time closed. Raises Rejected at the stream cap."""
        st = self.streams.get(r.stream)
        if st is not None and st.closed is not None and self.tick(r.ts) <= st.closed:
            if not self._resync(r, st, wall):
                self._hear(r.stream, st, wall)
                self.counts["late"] += 1
                return []
            st = None
        if st is None:
            st = self._open_stream(r.stream)
        st.late_since = None
        self._hear(r.stream, st, wall)
        if len(st.pending) >= self.max_pending:
            self.counts["overflow"] += 1
            return []
        if not st.pending:
            self._open[r.stream] = wall
        st.pending.append(r)
        if r.ts <= st.watermark:
            return []
        st.watermark = r.ts
        last = math.ceil((r.ts - self.lateness) / self.period - _EPS) - 1  # ticks with t*p + lateness < ts
        return self._close(r.stream, st, last)

    def _hear(self, name: str, st: _Stream, wall: float) -> None:
        """The stream sent something at ``wall``: it is the most recently heard."""
        st.wall = wall
        self._heard[name] = st
        self._heard.move_to_end(name)
        if name in self._probation:
            self._probation.move_to_end(name)

    def _open_stream(self, name: str) -> _Stream:
        """A new stream; at the cap, in the place of the probationer heard least recently."""
        if len(self.streams) >= self.max_streams:
            if not self._probation:
                raise Rejected(
                    "capacity", f"stream {name!r} refused: {self.max_streams} streams open (streams.max_streams), none of them on probation"
                )
            victim, _ = self._probation.popitem(last=False)
            self._drop(victim)
            self.counts["displaced"] += 1
        st = self.streams[name] = _Stream(self.channels)
        if self.probation:
            self._probation[name] = None
        return st

    def _resync(self, r: Reading, st: _Stream, wall: float) -> bool:
        """Whether a late reading ends a run of late ones long enough, with the event time running
        through it, to restart its stream on its new clock (then the stream is dropped)."""
        if st.late_since is None:
            st.late_since, st.late_ts = wall, r.ts
            return False
        if wall - st.late_since < self.resync_after or r.ts <= st.late_ts:
            return False
        self._drop(r.stream)
        self.counts["resynced"] += 1
        return True

    def _drop(self, name: str) -> None:
        """Forget a stream here and, through ``on_drop``, downstream."""
        self.streams.pop(name, None)
        self._heard.pop(name, None)
        self._open.pop(name, None)
        self._probation.pop(name, None)
        if self.on_drop is not None:
            self.on_drop(name)

    def due(self, wall: float, everything: bool = False) -> list[tuple[str, int]]:
        """The closings the wall clock calls for: (stream, last tick) of each stream silent for
        ``idle_close`` seconds (of every stream with readings in hand if ``everything``). Long-silent
        streams are forgotten (once quiet for ``idle_close`` too). The daemon journals these, so
        that a replay closes the same ticks; each must be closed, as a stream is named once per
        silence."""
        if everything:
            return [(name, self.tick(st.watermark)) for name, st in self.streams.items() if st.pending]
        if wall > self._forget_at:
            self._forget(wall)
        out: list[tuple[str, int]] = []
        heard = self._heard
        while heard:
            name, st = next(iter(heard.items()))
            if wall - st.wall < self.idle_close:
                break  # the rest were heard later (a wall clock stepped back delays them by the step)
            del heard[name]
            if st.pending:
                out.append((name, self.tick(st.watermark)))
            self._forget_at = min(self._forget_at, st.wall + self.forget_after)
        stuck = self._open
        while stuck:  # streams that keep sending while no tick of theirs closes
            name, since = next(iter(stuck.items()))
            if wall - since < self.max_open:
                break
            del stuck[name]
            st = self.streams[name]
            if st.pending and all(n != name for n, _ in out):
                out.append((name, self.tick(st.watermark)))
                self.counts["stuck"] += 1
        return out

    def _forget(self, wall: float) -> None:
        """Forget the streams with nothing in hand that were quiet for ``forget_after`` seconds."""
        self._forget_at = math.inf
        for name, st in list(self.streams.items()):
            if name in self._heard:
                continue
            if st.pending:
                continue  # named by due() and never closed: kept as it is
            if wall - st.wall > self.forget_after:
                del self.streams[name]
                self._probation.pop(name, None)
            else:
                self._forget_at = min(self._forget_at, st.wall + self.forget_after)

    def close(self, stream: str, last: int) -> list[Frame]:
        """Close the stream's ticks up to ``last`` (as :meth:`due` named them)."""
        st = self.streams.get(stream)
        return self._close(stream, st, last) if st is not None else []

    def flush(self) -> list[Frame]:
        """Close everything in hand (at shutdown)."""
        return [f for name, last in self.due(-math.inf, everything=True) for f in self.close(name, last)]

    # -- checkpoints ------------------------------------------------------------------------
    def state(self) -> dict:
        """Per stream: the readings in hand, the held values, the last closed tick, the watermark."""
        return {name: st.state() for name, st in self.streams.items()}

    def load_state(self, state: dict, wall: float) -> None:
        """Go on from ``state()``. Silence is measured from ``wall``: the time the daemon was down is
        not a stream going quiet, and its readings are still on their way from the broker."""
        self.streams, self._heard, self._open, self._probation, self._forget_at = {}, OrderedDict(), OrderedDict(), OrderedDict(), math.inf
        for name, d in state.items():
            st = self.streams[name] = self._heard[name] = _Stream.from_state(name, d, self.channels, self.probation)
            if st.pending:
                self._open[name] = wall
            if st.frames < self.probation:
                self._probation[name] = None
        self.restart_clock(wall)

    def restart_clock(self, wall: float) -> None:
        """Measure every stream's silence, and how long its readings have waited, from ``wall``
        (after a restart, and after replaying the journal on the clock of its records)."""
        for name, st in self.streams.items():
            st.wall = wall
            if st.late_since is not None:
                st.late_since = wall
            if name in self._open:
                self._open[name] = wall

    def _close(self, name: str, st: _Stream, last: int) -> list[Frame]:
        out = st.frames_until(name, last, self.period, self.max_hold)
        if st.pending:
            self._open[name] = st.wall  # a tick closed: the readings left wait from now
            self._open.move_to_end(name)
        else:
            self._open.pop(name, None)
        if out and st.frames < self.probation:
            st.frames = min(self.probation, st.frames + len(out))
            if st.frames >= self.probation:
                self._probation.pop(name, None)
        return out
