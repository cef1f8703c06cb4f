"""The forecast message: one JSON object per stream per closed frame, its schema in ``schema/``.

Numbers are the float32 values the model computes, each written as the shortest decimal that reads
back as the same float32 (at most 9 significant digits); a value that does not exist yet (a band
before enough errors were seen, a target never observed) is ``null``.
The layout is versioned by ``schema`` and kept stable: add fields, never rename or remove them.
"""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import orjson

from streamrnn.engine import Forecast, Forecasts

SCHEMA_ID = "streamrnn.forecast/1"
_NUMPY = orjson.OPT_SERIALIZE_NUMPY  # float32 arrays written by orjson itself: no Python floats made


def encode_all(fcs: Forecasts, period: float, skill: dict[str, float | None] | None = None) -> list[bytes]:
    """One message per forecast of a step (see ``schema/forecast.schema.json``)."""
    if not len(fcs):
        return []
    skill = skill or {}
    f32 = lambda a: np.ascontiguousarray(np.swapaxes(a, 1, 2), dtype=np.float32)  # noqa: E731  (B, T, H)
    values, lower, upper = f32(fcs.values), f32(fcs.lower), f32(fcs.upper)
    now = fcs.now.astype(np.float32)
    names = [(name, skill.get(name)) for name in fcs.targets]
    model, horizon = {"kind": fcs.kind, "version": fcs.version}, int(fcs.values.shape[1])
    out = []
    for stream, ts, v, lo, up, n in zip(fcs.streams, fcs.ts, values, lower, upper, now):
        targets = {name: {"now": n_, "values": v_, "lower": lo_, "upper": up_, "skill": sk} for (name, sk), n_, v_, lo_, up_ in zip(names, n, v, lo, up)}
        doc = {"schema": SCHEMA_ID, "stream": stream, "ts": ts, "period": period, "horizon": horizon, "model": model, "targets": targets}
        out.append(orjson.dumps(doc, option=_NUMPY))  # NaN and infinities as null
    return out


def encode(fc: Forecast, period: float, skill: dict[str, float | None] | None = None) -> bytes:
    """One forecast's message."""
    batch = Forecasts([fc.stream], [fc.ts], fc.kind, fc.version, fc.targets, fc.values[None], fc.lower[None], fc.upper[None], fc.now[None])
    return encode_all(batch, period, skill)[0]


def document(fc: Forecast, period: float, skill: dict[str, float | None] | None = None) -> dict:
    """The message as a dict."""
    return orjson.loads(encode(fc, period, skill))


def schema() -> dict:
    """The JSON Schema of the forecast message."""
    return json.loads(resources.files("streamrnn").joinpath("schema/forecast.schema.json").read_text())
