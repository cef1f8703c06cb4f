"""Spells: frames in a row missing from a channel that is measured in most frames. The engine keeps
a suspect value (a broken sensor: health.py) as missing, and a sensor that goes silent leaves the
same; an example that a learner reads across a spell, held there, would teach it that nothing
moved, so learners leave such examples out."""

from __future__ import annotations

import numpy as np

SPELL = 8  # frames in a row missing from a channel measured in most frames: a spell, not a gap


def spells(values: np.ndarray, lookback: int, horizon: int) -> np.ndarray:
    """Per frame i of ``values`` (n, channels), whether its example (frames i - lookback + 1 ..
    i + horizon) touches a spell: ``SPELL`` or more frames in a row missing from a channel that
    has a value in most frames."""
    n = len(values)
    missing = ~np.isfinite(values[:, np.isfinite(values).mean(axis=0) > 0.5])
    run = np.zeros(n, bool)
    for c in missing.T:  # frames within a run of SPELL or more
        ends = np.convolve(c, np.ones(SPELL), "valid") == SPELL  # a run of SPELL ends at j + SPELL - 1
        if ends.any():
            starts = np.flatnonzero(ends)
            marks = np.zeros(n + 1, int)
            np.add.at(marks, starts, 1)
            np.add.at(marks, starts + SPELL, -1)
            run |= np.cumsum(marks)[:n] > 0
    if not run.any():
        return run
    touched = np.concatenate([[0], np.cumsum(run)])  # runs in frames [a, b): touched[b] - touched[a]
    i = np.arange(n)
    return touched[np.minimum(i + horizon + 1, n)] - touched[np.maximum(i - lookback + 1, 0)] > 0
