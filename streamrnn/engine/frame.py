"""What the engine takes in: one stream's values at one tick, as the intake assembles them (or a
replay reads them from a file)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One stream at one tick: values per channel (``Engine.channels``), NaN where not observed."""

    stream: str
    ts: float
    values: np.ndarray
