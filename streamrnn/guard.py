"""While a sensor of a stream is broken, every forecast of that stream is its held value.

A suspect channel is read as missing, and the model and the linear contender were fitted on frames
where it was there: a target that leans on it (two loads that move together) is then forecast
worse than by holding its last value, and the gate, weighing months of calm evidence, does not
notice for as long. Measured on ETTh1 with one load's sensor broken, the other load's forecast lost
to persistence by 18 to 30 % over the fault, whether its forecasts were served from the start or
only after they had beaten persistence on the fault's own errors (that evidence comes a horizon
late, and the fault moves on meanwhile). So from the frame a channel of a stream turns suspect for
more than a spike until ``linger`` frames after the last one is healthy again (an incident; the
engine's linger is 0: a horizon more cost the clean ETTh1 a quarter of its accuracy at H = 24, its
frozen fill days being incidents), each target of that stream is served as held: persistence,
which a fault can never make worse. The other streams, and this one outside its incidents, are
not touched.
"""

from __future__ import annotations

import numpy as np

_NONE = np.iinfo(np.int64).max // 2  # frames since a channel was last suspect: never


class Guard:
    """Per bank row: frames since a channel of the stream was last suspect (not a spike)."""

    def __init__(self, linger: int) -> None:
        self.linger = linger
        self.quiet = np.zeros(0, np.int64)

    def grow(self, capacity: int) -> None:
        if capacity > len(self.quiet):
            self.quiet = np.concatenate([self.quiet, np.full(capacity - len(self.quiet), _NONE)])

    def reset(self, row: int) -> None:
        """A stream's row was freed: no incident."""
        if row < len(self.quiet):
            self.quiet[row] = _NONE

    def watch(self, rows: np.ndarray, suspect: np.ndarray) -> np.ndarray:
        """Move each row's clock on with this frame (``suspect``: whether a channel of it is, (B,));
        which rows are in an incident."""
        quiet = np.where(suspect, 0, self.quiet[rows] + 1)
        self.quiet[rows] = quiet
        return quiet <= self.linger

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"guard_quiet": self.quiet.copy()}

    def load_state(self, st: dict, capacity: int) -> None:
        """Go on from :meth:`state_dict`'s array in ``st``; where it is missing (an older
        checkpoint), no row is in an incident."""
        quiet = st.get("guard_quiet")
        self.quiet = np.array(quiet, dtype=np.int64) if quiet is not None and np.ndim(quiet) == 1 else np.zeros(0, np.int64)
        self.grow(capacity)
