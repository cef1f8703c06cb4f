"""Per-stream ring buffer of the last N frames, in arrays allocated once: constant memory at any uptime.

A missing value is stored as NaN, so the mask is ``isfinite(values)``: one source of truth.
"""

from __future__ import annotations

import numpy as np


class Ring:
    """The last ``size`` frames of one stream: values (size, channels) float32 and ts (size,) float64."""

    __slots__ = ("values", "ts", "count", "size")

    def __init__(self, size: int, channels: int) -> None:
        self.values = np.full((size, channels), np.nan, dtype=np.float32)
        self.ts = np.full(size, np.nan, dtype=np.float64)
        self.count = 0  # frames ever appended
        self.size = size

    def __len__(self) -> int:
        return self.size if self.count > self.size else self.count

    def append(self, ts: float, values: np.ndarray) -> None:
        i = self.count % self.size
        self.values[i] = values
        self.ts[i] = ts
        self.count += 1

    def last(self, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the last ``n`` frames (all held if None), oldest first: (ts (n,), values (n, C))."""
        held = len(self)
        n = held if n is None else min(n, held)
        start, end = (self.count - n) % self.size, self.count % self.size or self.size
        if start < end or not n:  # in one piece
            return self.ts[start : start + n].copy(), self.values[start : start + n].copy()
        return np.concatenate([self.ts[start:], self.ts[:end]]), np.concatenate([self.values[start:], self.values[:end]])

    def since(self, ts: float) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the frames newer than ``ts``, oldest first."""
        t, v = self.last()
        keep = t > ts
        return t[keep], v[keep]

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.ts.nbytes


class Rings(dict[int, Ring]):
    """Every stream's ring by its bank row, and the last tick each stream stepped (a frame for a
    tick at or before it is late)."""

    def __init__(self, size: int, channels: int) -> None:
        super().__init__()
        self.size, self.channels = size, channels
        self.ticks: dict[int, int] = {}

    def open(self, row: int) -> None:
        """A new stream's ring, empty."""
        self[row] = Ring(self.size, self.channels)

    def late(self, row: int, tick: int) -> bool:
        """A frame for ``tick`` is late: the stream stepped it, or a later one, already."""
        return tick <= self.ticks.get(row, -(2**62))

    def take_all(self, rows: list[int], ticks: list[int], stamps: list[float], values: np.ndarray) -> None:
        """Keep a batch's frames (``values`` (B, C)) of distinct streams, none of them late (the
        caller asked :meth:`late`)."""
        for row, tick, ts, v in zip(rows, ticks, stamps, values):
            self.ticks[row] = tick
            self[row].append(ts, v)

    def drop(self, row: int) -> None:
        del self[row]
        self.ticks.pop(row, None)

    def last_tick(self) -> int:
        """The newest tick stepped, over every stream; -1 before any."""
        return max(self.ticks.values(), default=-1)

    def most(self) -> int:
        """The most frames any stream ever appended."""
        return max((r.count for r in self.values()), default=0)

    def state(self, live: bool = False) -> dict:
        """The rings (their own arrays where ``live``, else copies) and the last ticks."""
        keep = (lambda a: a) if live else np.copy
        return {
            "rings": {row: {"values": keep(r.values), "ts": keep(r.ts), "count": r.count} for row, r in self.items()},
            "last_tick": dict(self.ticks),
        }

    def check(self, st: dict) -> None:
        """Raises ValueError where :meth:`state`'s rings are not of this size and these channels."""
        if any(r["values"].shape != (self.size, self.channels) for r in st["rings"].values()):
            raise ValueError("checkpoint's streams do not fit its own model and ring layout")

    def load_state(self, st: dict) -> None:
        """Go on from :meth:`state`, in place (others hold this mapping)."""
        self.check(st)
        self.clear()
        for row, r in st["rings"].items():
            ring = self[int(row)] = Ring(self.size, self.channels)
            ring.values[:], ring.ts[:], ring.count = r["values"], r["ts"], int(r["count"])
        self.ticks = {int(k): int(v) for k, v in st["last_tick"].items()}
