"""The forecast message: one JSON object per stream per closed frame, its schema in ``schema/``.

Numbers are rounded to 7 significant digits (what float32 arithmetic supports); a value that does
not exist yet (a band before enough errors were seen, a target never observed) is ``null``.
The layout is versioned by ``schema`` and kept stable: add fields, never rename or remove them.
"""

from __future__ import annotations

import json
import math
from importlib import resources

import numpy as np

from streamrnn.engine import Forecast

SCHEMA_ID = "streamrnn.forecast/1"
_DIGITS = 7


def rounded(a: np.ndarray) -> list[float | None]:
    """``a`` to ``_DIGITS`` significant digits as a JSON-ready list, NaN/inf as None."""
    a = np.asarray(a, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        mag = np.floor(np.log10(np.abs(a)))
        scale = 10.0 ** (_DIGITS - 1 - np.where(np.isfinite(mag), mag, 0.0))
        r = np.round(a * scale) / scale
    if np.isfinite(r).all():
        return r.tolist()
    return [x if math.isfinite(x) else None for x in r.tolist()]


def document(fc: Forecast, period: float, skill: dict[str, float | None] | None = None) -> dict:
    """The message as a dict (see ``schema/forecast.schema.json``)."""
    skill = skill or {}
    now = rounded(fc.now)
    targets = {}
    for j, name in enumerate(fc.targets):
        targets[name] = {
            "now": now[j],
            "values": rounded(fc.values[:, j]),
            "lower": rounded(fc.lower[:, j]),
            "upper": rounded(fc.upper[:, j]),
            "skill": skill.get(name),
        }
    return {
        "schema": SCHEMA_ID,
        "stream": fc.stream,
        "ts": fc.ts,
        "period": period,
        "horizon": int(fc.values.shape[0]),
        "model": {"kind": fc.kind, "version": fc.version},
        "targets": targets,
    }


def encode(fc: Forecast, period: float, skill: dict[str, float | None] | None = None) -> bytes:
    return json.dumps(document(fc, period, skill), separators=(",", ":"), allow_nan=False).encode()


def schema() -> dict:
    """The JSON Schema of the forecast message."""
    return json.loads(resources.files("streamrnn").joinpath("schema/forecast.schema.json").read_text())
