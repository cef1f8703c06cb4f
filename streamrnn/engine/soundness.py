"""Whether an engine's saved state may be served: a checksum says a file is the one written, not
that what was written is sound (a bug, a foreign writer, a bit flipped before the checksum).

Checked before any of it is loaded (a daemon's checkpoint, a partition's, whatever their source):
the weights, the hidden states, the evaluator's running totals and its trust's moments are finite; every value a stream
held, its running means, its ring and what health knows of it are missing (NaN) or a reading the
daemon could have taken (finite, within ``frames.max_abs``). A state that is not is refused whole,
as an unsound file is: the caller falls back to the one before, or starts afresh.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

_READINGS = ("raw", "last", "low", "high", "mean")  # health's statistics in the readings' units


def unsound(st: dict, max_abs: float) -> str | None:
    """Why the engine state ``st`` (``Engine.state()``, as read back) may not be served: the first
    part found wrong, named; None where it is sound."""
    for name, a in _finite(st):
        if not np.isfinite(np.asarray(a, np.float64)).all():
            return f"{name} is not finite"
    for name, a in _readings(st):
        a = np.asarray(a, np.float64)
        if (np.isinf(a) | (np.abs(np.nan_to_num(a)) > max_abs)).any():
            return f"{name} holds values no reading could have (infinite, or beyond frames.max_abs = {max_abs:g})"
    return None


def _finite(st: dict) -> Iterator[tuple[str, np.ndarray]]:
    for k, v in st["weights"].items():
        yield f"weights {k}", v
    yield "bank.hidden", st["bank"]["hidden"]
    for part in ("total", "live"):
        for k, v in st["evaluator"][part].items():
            yield f"evaluator.{part}.{k}", v
    if "trust" in st["evaluator"]:
        yield "evaluator.trust", st["evaluator"]["trust"]["moments"]


def _readings(st: dict) -> Iterator[tuple[str, np.ndarray]]:
    yield "bank.held", st["bank"]["held"]
    yield "bank.centre", st["bank"]["centre"]
    for row, ring in st["rings"].items():
        yield f"ring {row}", ring["values"]
    for k in _READINGS:
        if k in (st.get("health") or {}):
            yield f"health.{k}", st["health"][k]
