"""The forecast: its value types, and the message it is published as, one JSON object per stream
per closed frame, its schema in ``schema/``.

Numbers are the float32 values the model computes, each written as the shortest decimal that reads
back as the same float32 (at most 9 significant digits); a value that does not exist yet (a band
before enough errors were seen, a target never observed) is ``null``.
The layout is versioned by ``schema`` and kept stable: add fields, never rename or remove them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np
import orjson


@dataclass(frozen=True)
class Forecast:
    """Steps 1..H for every target at ``ts + k * period``; ``now`` is step 0 (the soft sensor)."""

    stream: str
    ts: float
    kind: str
    version: int
    targets: tuple[str, ...]
    values: np.ndarray  # (H, targets), engineering units
    lower: np.ndarray  # (H, targets), NaN until enough errors were seen
    upper: np.ndarray
    now: np.ndarray  # (targets,)
    suspect: tuple[str, ...] = ()  # channels whose sensor looks broken: read as missing, a suspect target served as held
    contenders: dict[str, np.ndarray] | None = None  # name -> (H, targets): what the gate chose from


class Forecasts(Sequence[Forecast]):
    """The forecasts of one step, as arrays over its streams: encoded in one pass by the daemon,
    read one :class:`Forecast` at a time by everyone else."""

    __slots__ = ("streams", "ts", "kind", "version", "targets", "values", "lower", "upper", "now", "suspect", "contenders")

    def __init__(
        self,
        streams: list[str],
        ts: list[float],
        kind: str,
        version: int,
        targets: tuple[str, ...],
        values: np.ndarray,
        lower: np.ndarray,
        upper: np.ndarray,
        now: np.ndarray,
        suspect: list[tuple[str, ...]] | None = None,
        contenders: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.streams, self.ts, self.kind, self.version, self.targets = streams, ts, kind, version, targets
        self.values, self.lower, self.upper, self.now = values, lower, upper, now  # (B, H, T) x 3, (B, T)
        self.suspect = suspect if suspect is not None else [()] * len(streams)  # per stream, its suspect channels
        self.contenders = contenders  # name -> (B, H, T): what the gate chose from (the linear contender once fitted)

    def __len__(self) -> int:
        return len(self.streams)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        return Forecast(
            self.streams[i],
            self.ts[i],
            self.kind,
            self.version,
            self.targets,
            self.values[i],
            self.lower[i],
            self.upper[i],
            self.now[i],
            self.suspect[i],
            None if self.contenders is None else {k: v[i] for k, v in self.contenders.items()},
        )

    def __add__(self, other: Forecasts) -> Forecasts:
        if not len(other):
            return self
        if not len(self):
            return other
        cat = lambda a, b: np.concatenate([a, b])
        return Forecasts(
            self.streams + other.streams,
            self.ts + other.ts,
            self.kind,
            other.version,
            self.targets,
            cat(self.values, other.values),
            cat(self.lower, other.lower),
            cat(self.upper, other.upper),
            cat(self.now, other.now),
            self.suspect + other.suspect,
            None
            if self.contenders is None or other.contenders is None
            else {k: cat(v, other.contenders[k]) for k, v in self.contenders.items()},
        )

    @classmethod
    def empty(cls, kind: str, version: int, targets: tuple[str, ...], horizon: int) -> Forecasts:
        z = np.zeros((0, horizon, len(targets)))
        return cls([], [], kind, version, targets, z, z, z, np.zeros((0, len(targets))))


SCHEMA_ID = "streamrnn.forecast/1"
_NUMPY = orjson.OPT_SERIALIZE_NUMPY  # float32 arrays written by orjson itself: no Python floats made


def encode_all(fcs: Forecasts, period: float, skill: dict[str, float | None] | None = None) -> list[bytes]:
    """One message per forecast of a step (see ``schema/forecast.schema.json``)."""
    if not len(fcs):
        return []
    skill = skill or {}
    f32 = lambda a: np.ascontiguousarray(np.swapaxes(a, 1, 2), dtype=np.float32)
    values, lower, upper = f32(fcs.values), f32(fcs.lower), f32(fcs.upper)
    now = fcs.now.astype(np.float32)
    names = [(name, skill.get(name)) for name in fcs.targets]
    model, horizon = {"kind": fcs.kind, "version": fcs.version}, int(fcs.values.shape[1])
    out = []
    for stream, ts, v, lo, up, n, bad in zip(fcs.streams, fcs.ts, values, lower, upper, now, fcs.suspect):
        targets = {
            name: {"now": n_, "values": v_, "lower": lo_, "upper": up_, "skill": sk, "suspect": name in bad}
            for (name, sk), n_, v_, lo_, up_ in zip(names, n, v, lo, up)
        }
        doc = {"schema": SCHEMA_ID, "stream": stream, "ts": ts, "period": period, "horizon": horizon, "model": model, "targets": targets}
        doc["suspect"] = list(bad)
        out.append(orjson.dumps(doc, option=_NUMPY))  # NaN and infinities as null
    return out


def encode(fc: Forecast, period: float, skill: dict[str, float | None] | None = None) -> bytes:
    """One forecast's message."""
    batch = Forecasts(
        [fc.stream], [fc.ts], fc.kind, fc.version, fc.targets, fc.values[None], fc.lower[None], fc.upper[None], fc.now[None], [fc.suspect]
    )
    return encode_all(batch, period, skill)[0]


def document(fc: Forecast, period: float, skill: dict[str, float | None] | None = None) -> dict:
    """The message as a dict."""
    return orjson.loads(encode(fc, period, skill))


def schema() -> dict:
    """The JSON Schema of the forecast message."""
    return json.loads(resources.files("streamrnn").joinpath("schema/forecast.schema.json").read_text())
