"""The forecast message: one JSON object per stream per closed frame, its schema in ``schema/``.

Numbers are rounded to 7 significant digits (what float32 arithmetic supports); a value that does
not exist yet (a band before enough errors were seen, a target never observed) is ``null``.
The layout is versioned by ``schema`` and kept stable: add fields, never rename or remove them.
"""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import orjson

from streamrnn.engine import Forecast, Forecasts

SCHEMA_ID = "streamrnn.forecast/1"
_DIGITS = 7


def rounded(a: np.ndarray) -> np.ndarray:
    """``a`` to ``_DIGITS`` significant digits (NaN and infinities kept: they are written as null)."""
    a = np.asarray(a, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        mag = np.floor(np.log10(np.abs(a)))
        scale = 10.0 ** (_DIGITS - 1 - np.where(np.isfinite(mag), mag, 0.0))
        return np.round(a * scale) / scale


def encode_all(fcs: Forecasts, period: float, skill: dict[str, float | None] | None = None) -> list[bytes]:
    """One message per forecast of a step (see ``schema/forecast.schema.json``), the numbers of
    all of them rounded in one pass."""
    if not len(fcs):
        return []
    skill = skill or {}
    series = rounded(np.stack([fcs.values, fcs.lower, fcs.upper], axis=1)).transpose(0, 3, 1, 2).tolist()  # (B, T, 3, H)
    now = rounded(fcs.now).tolist()  # (B, T)
    names = [(j, name, skill.get(name)) for j, name in enumerate(fcs.targets)]
    model, horizon = {"kind": fcs.kind, "version": fcs.version}, int(fcs.values.shape[1])
    out = []
    for stream, ts, s, n in zip(fcs.streams, fcs.ts, series, now):
        targets = {name: {"now": n[j], "values": s[j][0], "lower": s[j][1], "upper": s[j][2], "skill": sk} for j, name, sk in names}
        doc = {"schema": SCHEMA_ID, "stream": stream, "ts": ts, "period": period, "horizon": horizon, "model": model, "targets": targets}
        out.append(orjson.dumps(doc))  # NaN and infinities as null
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
