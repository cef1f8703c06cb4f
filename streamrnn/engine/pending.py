"""The forecasts waiting for their truths, per stream: the evaluator's bookkeeping.

Per stream row, in slots by tick modulo ``H + 1 + lag`` (a forecast is kept until its last step's
truth is scored, which may wait ``lag`` steps): the prediction and its band's half-width side by
side, so that scoring a batch gathers each forecast step in one piece, the persistence forecast,
and the gate's forecast less persistence (for the trust). float32, as the forecasts are published:
at 1,000 streams this is the engine's largest array after the rings. The contenders' forecasts,
which only the gate's error moments read, are kept for a panel of streams in slots of their own.
"""

from __future__ import annotations

import numpy as np

ARRAYS = ("tick", "fc", "base", "move", "ctick", "cfc")  # kept in a checkpoint


class Pending:
    """The pending forecasts of every stream row (rows grow as streams come)."""

    def __init__(self, horizon: int, targets: int, contenders: int, lag: int, panel: int) -> None:
        """``panel``: the streams whose contenders' forecasts are kept, at most (:meth:`panel`)."""
        h, t = horizon, targets
        self.horizon, self.targets = h, t
        self.slots = h + 1 + lag
        self.ks = np.arange(1, h + 1)
        self.most, self.epoch = panel, 4 * self.slots  # ticks between two turns of the panel
        self.tick = np.zeros((0, self.slots), dtype=np.int64)
        self.fc = np.zeros((0, self.slots, h, 2, t), dtype=np.float32)  # prediction, half-width
        self.base = np.zeros((0, self.slots, t), dtype=np.float32)
        self.move = np.zeros((0, self.slots, h, t), dtype=np.float32)  # the gate's forecast less base, for the trust
        self.ctick = np.zeros((0, self.slots), dtype=np.int64)
        self.cfc = np.zeros((0, self.slots, h, contenders, t), dtype=np.float32)

    @property
    def rows(self) -> int:
        return len(self.tick)

    def panel(self, rows: np.ndarray, ticks: np.ndarray) -> np.ndarray | slice:
        """Which of a batch's forecasts (``rows``, ``ticks`` as the evaluator records them) keep their
        contenders' for the gate: every one while the streams' rows are at most ``panel``, else
        a panel of about that many rows, turning every few horizons so that every stream takes its
        turn; a function of row and tick alone, so that a replay and the daemon keep the same."""
        stride = -(-self.rows // self.most)
        if stride <= 1:
            return slice(None)
        return np.flatnonzero((rows + ticks // self.epoch) % stride == 0)

    def ensure(self, row: int) -> None:
        """Rows up to ``row`` exist (twice as many as before, at least)."""
        if row < len(self.tick):
            return
        rows, had = max(row + 1, 2 * len(self.tick)), len(self.tick)

        def grow(a: np.ndarray) -> np.ndarray:  # rows not opened yet take no memory until written (calloc)
            out = np.zeros((rows, *a.shape[1:]), a.dtype)
            out[:had] = a
            return out

        self.tick, self.fc, self.base, self.move = grow(self.tick), grow(self.fc), grow(self.base), grow(self.move)
        self.ctick, self.cfc = grow(self.ctick), grow(self.cfc)
        self.tick[had:] = self.ctick[had:] = -1  # no forecast: a slot is read only where its tick is the one wanted

    def forget(self, row: int) -> None:
        """The row holds no forecast."""
        self.ensure(row)
        self.tick[row] = self.ctick[row] = -1

    def keep(
        self,
        rows: np.ndarray,
        ticks: np.ndarray,
        band: np.ndarray,
        base: np.ndarray,
        move: np.ndarray | float | None,
        contenders: tuple[np.ndarray, ...],
        panel: np.ndarray | slice,
    ) -> None:
        """Keep forecasts made at ``ticks`` (``band`` (B, H, 3, T): prediction, lower, upper), their
        persistence, their moves for the trust (None: not kept) and the contenders' at ``panel``."""
        s = ticks % self.slots
        self.tick[rows, s] = ticks
        fc = np.empty((len(rows), self.horizon, 2, self.targets), dtype=np.float32)
        fc[:, :, 0] = band[:, :, 0]
        np.subtract(band[:, :, 2], band[:, :, 0], out=fc[:, :, 1])  # the half-width
        self.fc[rows, s] = fc
        self.base[rows, s] = base
        if move is not None:
            self.move[rows, s] = move
        if contenders:
            r, s = rows[panel], s[panel]
            self.ctick[r, s] = ticks[panel]
            for i, c in enumerate(contenders):
                self.cfc[r, s, :, i] = c

    def find(self, rows: np.ndarray, ticks: np.ndarray) -> tuple[np.ndarray, ...]:
        """Where the forecasts these truths score are kept: the ticks they were made at (B, H), their
        slots, which slots hold them (-1: an empty slot), and the flat (row, slot) of each."""
        made = ticks[:, None] - self.ks
        slots = made % self.slots
        return made, slots, (self.tick[rows[:, None], slots] == made) & (made >= 0), rows[:, None] * self.slots + slots

    def steps(self, a: np.ndarray, at: np.ndarray) -> np.ndarray:
        """Of a per-step array (fc, move, cfc), each forecast's step that its truth scores, at the
        flat (row, slot)s ``at`` (B, H): (B, H, ...)."""
        return a.reshape(-1, *a.shape[3:]).take(at * self.horizon + self.ks - 1, axis=0)

    def bases(self, at: np.ndarray) -> np.ndarray:
        """The persistence forecasts at the flat (row, slot)s ``at`` (B, H): (B, H, T)."""
        return self.base.reshape(-1, self.targets).take(at, axis=0)

    def state(self) -> dict:
        return {name: getattr(self, name).copy() for name in ARRAYS}

    def check(self, st: dict) -> None:
        """Raise ValueError where :meth:`state` was made for other steps, targets or contenders."""
        for name in ARRAYS:
            have, got = getattr(self, name).shape, st[name].shape
            if got[2:] != have[2:]:
                raise ValueError(f"evaluator state {name} has shape {got}, this evaluator wants {have}")

    def load_state(self, st: dict) -> None:
        """Go on from :meth:`state` (saved with any number of slots), once :meth:`check` passed."""
        self.tick, self.fc, self.base, self.move = self._reslot(st["tick"], st["fc"], st["base"], st["move"])
        self.ctick, self.cfc = self._reslot(st["ctick"], st["cfc"])

    def _reslot(self, tick: np.ndarray, *kept: np.ndarray) -> list[np.ndarray]:
        """Pending forecasts saved with any number of slots (their ticks, and what is kept of them
        per slot), each in its slot here (by tick)."""
        rows = len(tick)
        out = [np.full((rows, self.slots), -1, dtype=np.int64)] + [
            np.full((rows, self.slots, *a.shape[2:]), np.nan, dtype=np.float32) for a in kept
        ]
        r, s = np.nonzero(tick >= 0)
        order = np.argsort(tick[r, s], kind="stable")  # of two that meet in one slot, the newer stays
        r, s = r[order], s[order]
        to = tick[r, s] % self.slots
        for a, b in zip(out, (tick, *kept)):
            a[r, to] = b[r, s]
        return out
