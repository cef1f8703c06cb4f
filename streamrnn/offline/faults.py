"""Sensor faults injected into a stream's frames, as broken instruments make them on a plant.

One spec format for the simulator (``streamrnn simulate --faults``) and for any CSV (``streamrnn
replay --inject``): faults separated by commas, each ``KIND:CHANNEL@START[+LENGTH][*SIZE][/STREAM]``,
for example ``range:level@1000+200*30,stuck:feed_temp@2500/reactor-02``. START counts the stream's
frames from 0, LENGTH frames (default 200) the fault lasts, SIZE is in spreads of that channel (its
standard deviation over the stream's frames before the onset), STREAM limits it to one stream.

The kinds, what each does to the channel's measured values inside its window:

- ``stuck``: frozen at the last value before the onset (a failed transmitter holding its output);
- ``range``: out of range, SIZE (default 30) spreads beyond anything seen before, first 60 % of
  it, then all of it, with the true value showing through now and then (a broken 4-20 mA loop);
- ``spike``: isolated spikes of SIZE (default 10) spreads, on about one frame in twenty;
- ``bias``: a level shift of SIZE (default 3) spreads that stays for the window (a recalibration);
- ``drift``: an offset growing linearly to SIZE (default 5) spreads over the window;
- ``dropout``: no values at all (missing);
- ``noise``: a burst of white noise of SIZE (default 2) spreads.

Deterministic by seed: the same spec, seed and data give the same faulted values. Unmeasured
values (NaN, a rarely sampled variable between samples) stay unmeasured.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

SIZES = {"stuck": 0.0, "range": 30.0, "spike": 10.0, "bias": 3.0, "drift": 5.0, "dropout": 0.0, "noise": 2.0}
KINDS = tuple(SIZES)
LENGTH = 200
_SPEC = re.compile(
    r"^(?P<kind>\w+):(?P<channel>[^@]+)@(?P<start>\d+)(?:\+(?P<length>\d+))?(?:\*(?P<size>[0-9.eE+-]+))?(?:/(?P<stream>.+))?$"
)


@dataclass(frozen=True)
class Fault:
    """One fault of one channel: ``kind`` over the frames ``start .. start + length - 1`` of each
    stream it applies to (every stream where ``stream`` is None), ``size`` in spreads."""

    kind: str
    channel: str
    start: int
    length: int = LENGTH
    size: float = math.nan
    stream: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in SIZES:
            raise ValueError(f"fault kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.length < 1 or self.start < 0:
            raise ValueError(f"fault {self.kind}:{self.channel}: start must be >= 0 and length >= 1")
        if math.isnan(self.size):
            object.__setattr__(self, "size", SIZES[self.kind])

    @property
    def end(self) -> int:
        """The first frame after the fault."""
        return self.start + self.length

    def __str__(self) -> str:
        where = f"/{self.stream}" if self.stream else ""
        return f"{self.kind}:{self.channel}@{self.start}+{self.length}*{self.size:g}{where}"


def parse(spec: str) -> list[Fault]:
    """The faults of a spec (module docstring); ValueError naming the part it cannot read."""
    faults = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        m = _SPEC.match(part)
        if not m:
            raise ValueError(f"fault {part!r}: expected KIND:CHANNEL@START[+LENGTH][*SIZE][/STREAM], KIND one of {', '.join(KINDS)}")
        g = m.groupdict()
        try:
            size = float(g["size"]) if g["size"] else math.nan
        except ValueError:
            raise ValueError(f"fault {part!r}: size {g['size']!r} is not a number") from None
        faults.append(Fault(g["kind"], g["channel"].strip(), int(g["start"]), int(g["length"] or LENGTH), size, g["stream"]))
    if not faults:
        raise ValueError("no fault in the spec")
    return faults


def injector(spec: str | None, channels: tuple[str, ...] | list[str], seed: int = 0) -> Injector | None:
    """The :class:`Injector` of a spec (None for none), or ValueError saying what is wrong with it."""
    if not spec:
        return None
    try:
        return Injector(parse(spec), tuple(channels), seed)
    except ValueError as e:
        raise ValueError(f"faults: {e}") from None


@dataclass
class _Onset:
    """What a fault fixed at its onset in one stream: the value it froze, the spread and range it
    is measured against, and its own random numbers."""

    frozen: float
    spread: float
    low: float
    high: float
    rng: np.random.Generator
    sign: float


@dataclass
class _Channel:
    """The clean values of one stream's channel seen so far: count, mean, M2 (Welford), range, last."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    last: float = math.nan

    def add(self, x: float) -> None:
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self.m2 += d * (x - self.mean)
        self.low, self.high, self.last = min(self.low, x), max(self.high, x), x

    @property
    def spread(self) -> float:
        sd = math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 0.0
        return sd if sd > 0 else max(abs(self.mean) * 0.01, 1e-6)


@dataclass
class Injector:
    """Applies ``faults`` to each stream's frames, one frame at a time and in order (a live feed
    and a file alike); ``channels`` names the frames' columns."""

    faults: list[Fault]
    channels: tuple[str, ...]
    seed: int = 0
    _seen: dict[tuple[str, int], _Channel] = field(default_factory=dict)
    _frames: dict[str, int] = field(default_factory=dict)
    _onsets: dict[tuple[str, int], _Onset] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted({f.channel for f in self.faults} - set(self.channels))
        if unknown:
            raise ValueError(f"faults name channels that are not columns: {unknown} (columns: {', '.join(self.channels)})")
        self._index = [self.channels.index(f.channel) for f in self.faults]

    def __call__(self, stream: str, values: np.ndarray) -> np.ndarray:
        """The stream's next frame (C,) with its faults applied (a copy where any applies)."""
        i = self._frames.get(stream, 0)
        self._frames[stream] = i + 1
        out = values
        for n, (f, c) in enumerate(zip(self.faults, self._index)):
            if f.stream not in (None, stream) or not f.start <= i < f.end:
                continue
            if out is values:
                out = values.astype(np.float64, copy=True)
            onset = self._onsets.get((stream, n))
            if onset is None:
                onset = self._onsets[(stream, n)] = self._onset(stream, c, n)
            out[c] = _apply(f, onset, float(out[c]), i - f.start)
        for c, x in enumerate(values):  # the clean values: what the spreads and frozen values are of
            if math.isfinite(x):
                self._seen.setdefault((stream, c), _Channel()).add(float(x))
        return out

    def _onset(self, stream: str, c: int, n: int) -> _Onset:
        seen = self._seen.get((stream, c), _Channel())
        rng = np.random.default_rng([self.seed, n, sum(stream.encode())])
        low, high = (seen.low, seen.high) if seen.n else (0.0, 0.0)
        return _Onset(seen.last, seen.spread, low, high, rng, 1.0 if rng.random() < 0.5 else -1.0)

    def table(self, streams: list[str], ts: np.ndarray, values: np.ndarray, columns: list[int]) -> np.ndarray:
        """A table's rows (values (rows, all columns)) with the faults applied, each stream's frames
        taken in time order; ``columns`` are the table's columns of ``channels``."""
        out = values.copy()
        for r in np.lexsort((np.arange(len(ts)), ts)):
            out[r, columns] = self(streams[r], values[r, columns])
        return out


def _apply(f: Fault, o: _Onset, x: float, k: int) -> float:
    """The faulted value of clean value ``x`` at frame ``k`` of fault ``f``."""
    if f.kind == "dropout":
        return math.nan
    draw = o.rng.random()  # one draw a frame, measured or not, so a fault's course does not depend on the gaps
    noise = o.rng.standard_normal()
    if not math.isfinite(x):
        return x
    size = f.size * o.spread
    if f.kind == "stuck":
        return o.frozen if math.isfinite(o.frozen) else x
    if f.kind == "range":
        if draw < 0.03:  # the true value shows through
            return x
        edge = o.low - size if o.sign < 0 else o.high + size
        base = o.low if o.sign < 0 else o.high
        return base + (edge - base) * (0.6 if k < f.length // 4 else 1.0)
    if f.kind == "spike":
        return x + math.copysign(size, noise) if draw < 0.05 else x
    if f.kind == "bias":
        return x + o.sign * size
    if f.kind == "drift":
        return x + o.sign * size * (k + 1) / f.length
    return x + size * noise  # noise
