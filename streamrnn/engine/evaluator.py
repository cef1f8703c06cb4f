"""Scores forecasts when their truth arrives, never earlier, and draws the interval bands.

A forecast for step k made at tick n waits, per stream, until the frame of tick n + k comes; only a
value observed in that frame scores it. Per target and step: MSE and MAE of the model and of the
persistence forecast (the last observed value when the forecast was made), skill
``1 - MSE_model / MSE_persistence``, and the realised coverage of the bands. The bands are
split-conformal: the ``coverage`` quantile of the recent absolute errors of that target and step,
pooled over the streams (they share one model).

Scoring waits: the truths of up to ``LAG`` steps are queued and scored in one pass, since a pass
costs about the same for one frame as for hundreds. The bands therefore draw on errors at most
``LAG`` steps old; anything that reads the scores or the state scores the queue first, and so
does a stream's reset.
"""

from __future__ import annotations

import numpy as np

from streamrnn.engine import migrations
from streamrnn.engine.bands import Bands
from streamrnn.engine.evidence import Evidence
from streamrnn.engine.scores import scored
from streamrnn.engine.trust import Trust

_TOTALS = ("n", "se", "se_p", "ae", "ae_p", "n_band", "hit")
_ARRAYS = ("tick", "fc", "base", "move", "ctick", "cfc")  # kept in a checkpoint, with the bands' rings
_MOMENT_ROWS = (
    64  # streams whose contenders' forecasts are kept for the gate (a panel), and scored forecasts per pass that feed it, at most
)
LAG = 8  # steps whose truths may wait to be scored together
FLUSH = 256  # frames queued that are scored at once: a batch this large gains nothing by waiting
_NEVER = 2**62


class Evaluator:
    def __init__(
        self,
        targets: int,
        horizon: int,
        coverage: float = 0.9,
        residuals: int = 500,
        live_window: int = 1000,
        contenders: int = 0,
        gate_memory: int = 500,
        trust: bool = True,
    ) -> None:
        """``contenders``: forecasts besides the served one and persistence that ``record`` keeps
        and scoring compares (the gate's); ``gate_memory``: the scored forecasts per (step, target)
        after which one weighs 1/e in their error moments; ``trust``: whether each stream's own errors
        draw its forecasts toward the held value (:class:`Trust`, folded as each truth arrives)."""
        self.targets, self.horizon, self.coverage = targets, horizon, coverage
        self.contenders = contenders
        h, t = horizon, targets
        # Pending forecasts per stream row, in slots by tick modulo H+1+LAG (a forecast is kept until
        # its last step's truth is scored, which may wait LAG steps): the prediction and its band's
        # half-width side by side, so that scoring a batch gathers each forecast step in one piece,
        # and the persistence forecast. float32, as the forecasts are published: at 1,000 streams
        # this is the engine's largest array after the rings. The contenders' forecasts, which only
        # the gate's error moments read, are kept for a panel of streams (all of them up to
        # _MOMENT_ROWS), in slots of their own.
        self._slots = h + 1 + LAG
        self._tick = np.zeros((0, self._slots), dtype=np.int64)
        self._fc = np.zeros((0, self._slots, h, 2, t), dtype=np.float32)  # prediction, half-width
        self._base = np.zeros((0, self._slots, t), dtype=np.float32)
        self._move = np.zeros((0, self._slots, h, t), dtype=np.float32)  # the gate's forecast less base, for the trust
        self._ctick = np.zeros((0, self._slots), dtype=np.int64)
        self._cfc = np.zeros((0, self._slots, h, contenders, t), dtype=np.float32)
        self._epoch = 4 * self._slots  # ticks between two turns of the panel
        # Truths waiting to be scored, and the last tick whose forecasts may be recorded before they
        # are: a later one may reuse a slot that holds a forecast they score.
        self._queue: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._queued = 0
        self._due = _NEVER
        # Running totals since start, and exponentially weighted ones for the live view.
        self._total, self._live = np.zeros((len(_TOTALS), h, t)), np.zeros((len(_TOTALS), h, t))
        self.total = dict(zip(_TOTALS, self._total))  # views: one add updates them all
        self.live = dict(zip(_TOTALS, self._live))
        self._decay = 1.0 - 1.0 / live_window
        # Recent absolute errors per (step, target) for the bands.
        self.conformal = Bands(h, t, coverage, residuals)
        self._ks = np.arange(1, h + 1)
        # The errors of persistence, the contenders and their combination, as the gate weighs them.
        self.evidence = Evidence(h, t, gate_memory)
        self.trust = Trust(h, t, trust)

    # -- per-stream pending forecasts -------------------------------------------------------
    def _ensure(self, row: int) -> None:
        if row < len(self._tick):
            return
        rows, had = max(row + 1, 2 * len(self._tick)), len(self._tick)

        def grow(a: np.ndarray) -> np.ndarray:  # rows not opened yet take no memory until written (calloc)
            out = np.zeros((rows, *a.shape[1:]), a.dtype)
            out[:had] = a
            return out

        self._tick, self._fc, self._base, self._move = grow(self._tick), grow(self._fc), grow(self._base), grow(self._move)
        self._ctick, self._cfc = grow(self._ctick), grow(self._cfc)
        self._tick[had:] = self._ctick[had:] = -1  # no forecast: a slot is read only where its tick is the one wanted

    def reset(self, row: int) -> None:
        """Open a stream's row, or forget its pending forecasts (the row is reused or its state was
        replaced) once the truths already given have scored them. A row is opened before it is scored
        or recorded."""
        self.flush()
        self._ensure(row)
        self._tick[row] = self._ctick[row] = -1
        self.trust.reset(row)

    def panel(self, rows: np.ndarray, ticks: np.ndarray) -> np.ndarray | slice:
        """Which of a batch's forecasts (``rows``, ``ticks`` as ``record`` takes them) keep their
        contenders' for the gate: every one while the streams' rows are at most _MOMENT_ROWS, else
        a panel of about that many rows, turning every few horizons so that every stream takes its
        turn; a function of row and tick alone, so that a replay and the daemon keep the same."""
        stride = -(-len(self._tick) // _MOMENT_ROWS)
        if stride <= 1:
            return slice(None)
        return np.flatnonzero((rows + ticks // self._epoch) % stride == 0)

    def score(self, rows: np.ndarray, ticks: np.ndarray, truth: np.ndarray) -> None:
        """Score what was forecast for ``ticks`` against ``truth`` (B, targets), NaN where not
        observed; ``rows`` (B,) distinct. Queued, and scored with the next few steps' in one pass;
        the trust takes them now, so that a stream's factors do not depend on when a pass came."""
        if self.trust.enabled:
            self._trust(rows, ticks, truth)
        self._queue.append((rows, ticks, truth))
        self._queued += len(rows)
        self._due = min(self._due, int(ticks.min()) + LAG)
        if len(self._queue) >= LAG or self._queued >= FLUSH:
            self.flush()

    def flush(self) -> None:
        """Score the queued truths, oldest first."""
        if not self._queue:
            return
        q, self._queue, self._queued = self._queue, [], 0
        self._due = _NEVER
        self._score(*(np.concatenate(part) for part in zip(*q)))

    def _score(self, rows: np.ndarray, ticks: np.ndarray, truth: np.ndarray) -> None:
        """One pass over a batch of truths in time order (a row may come more than once): its cost
        is per call, not per frame. Errors in float32, as the forecasts were kept; sums in float64."""
        made, slots, valid, at = self._pending(rows, ticks)
        if not valid.any():
            return
        fc = self._fc.reshape(-1, *self._fc.shape[3:]).take(at * self.horizon + self._ks - 1, axis=0)  # (B, H, 2 + contenders, T)
        truth = truth.astype(np.float32)[:, None, :]
        err = fc[:, :, 0] - truth  # NaN where either is missing
        err_p = self._base.reshape(-1, self.targets).take(at, axis=0) - truth
        ok = ~np.isnan(err + err_p)
        if not valid.all():
            ok &= valid[..., None]
        n = ok.sum(axis=0)  # (H, T)
        if not n.any():
            return
        if self.contenders:
            self._contenders(rows, slots, made, truth, err_p, ok)
        np.copyto(err, 0.0, where=~ok)
        np.copyto(err_p, 0.0, where=~ok)
        ae, ae_p = np.abs(err, out=err), np.abs(err_p, out=err_p)
        half = fc[:, :, 1]  # NaN where the forecast had no band
        f8 = np.float64
        got = np.array(
            [
                n,
                np.einsum("bij,bij->ij", ae, ae, dtype=f8),
                np.einsum("bij,bij->ij", ae_p, ae_p, dtype=f8),
                ae.sum(axis=0, dtype=f8),
                ae_p.sum(axis=0, dtype=f8),
                (ok & (half == half)).sum(axis=0),
                (ok & (ae <= half)).sum(axis=0),
            ]
        )  # in _TOTALS order
        self._total += got
        self._live *= self._decay**n  # a batch's forecasts count as one after another in the live view
        self._live += got
        self.conformal.add(ae, ok, n)

    def _pending(self, rows: np.ndarray, ticks: np.ndarray) -> tuple[np.ndarray, ...]:
        """Where the forecasts these truths score are kept: the ticks they were made at (B, H), their
        slots, which slots hold them (-1: an empty slot), and the flat (row, slot) of each."""
        made = ticks[:, None] - self._ks
        slots = made % self._slots
        return made, slots, (self._tick[rows[:, None], slots] == made) & (made >= 0), rows[:, None] * self._slots + slots

    def _trust(self, rows: np.ndarray, ticks: np.ndarray, truth: np.ndarray) -> None:
        """Fold into the trust the moves of the forecasts these truths score, and the truths'."""
        _, _, valid, at = self._pending(rows, ticks)
        if not valid.any():
            return
        move = self._move.reshape(-1, self.targets).take(at * self.horizon + self._ks - 1, axis=0)  # (B, H, T)
        change = truth.astype(np.float32)[:, None, :] - self._base.reshape(-1, self.targets).take(at, axis=0)
        ok = valid[..., None] & np.isfinite(move) & np.isfinite(change)
        self.trust.fold(rows, move, change, ok)

    def _contenders(
        self, rows: np.ndarray, slots: np.ndarray, made: np.ndarray, truth: np.ndarray, err_p: np.ndarray, ok: np.ndarray
    ) -> None:
        """The errors of the contenders' forecasts kept for these truths (B, 1, T), into the gate's
        moments beside persistence's (``err_p``, (B, H, T)); of more than _MOMENT_ROWS of them, as
        many evenly spread: the moments are means."""
        kept = self._ctick[rows[:, None], slots] == made  # (B, H)
        some = np.flatnonzero(kept.any(axis=1))
        if not len(some):
            return
        if len(some) > _MOMENT_ROWS:
            some = some[np.linspace(0, len(some) - 1, _MOMENT_ROWS).astype(np.int64)]
        at = (rows[some, None] * self._slots + slots[some]) * self.horizon + self._ks - 1
        cfc = self._cfc.reshape(-1, *self._cfc.shape[3:]).take(at, axis=0)  # (S, H, K, T)
        err = np.concatenate([err_p[some][:, :, None], cfc - truth[some][:, :, None]], axis=2)
        self.evidence.fold(err, ok[some] & kept[some][..., None])

    def bands(self, pred: np.ndarray) -> np.ndarray:
        """Predictions (B, H, targets) within their bands: (B, H, 3, targets) float32 (as published),
        the prediction, lower and upper side by side, as ``record`` takes them; NaN bands where too
        few errors were seen."""
        return self.conformal.around(pred)

    def record(
        self,
        rows: np.ndarray,
        ticks: np.ndarray,
        band: np.ndarray,
        base: np.ndarray,
        contenders: tuple[np.ndarray, ...] = (),
        panel: np.ndarray | slice = slice(None),
        gated: np.ndarray | None = None,
    ) -> None:
        """Keep forecasts made at ``ticks``: ``band`` (B, H, 3, targets) as ``bands`` draws it, base
        (B, targets) = persistence, the contenders' forecasts (P, H, targets) each at the forecasts
        ``panel`` names (:meth:`panel`), and the gate's before the trust drew them in (``gated``, (B,
        H, targets); NaN: not scored); ``rows`` (B,) distinct."""
        if ticks.max() > self._due:
            self.flush()  # a slot about to be reused may hold a forecast a queued truth scores
        s = ticks % self._slots
        self._tick[rows, s] = ticks
        fc = np.empty((len(rows), self.horizon, 2, self.targets), dtype=np.float32)
        fc[:, :, 0] = band[:, :, 0]
        np.subtract(band[:, :, 2], band[:, :, 0], out=fc[:, :, 1])  # the half-width
        self._fc[rows, s] = fc
        self._base[rows, s] = base
        if self.trust.enabled:  # the moves of the forecasts scored (not a suspect target's: its prediction is NaN)
            self._move[rows, s] = np.nan if gated is None else np.where(np.isnan(band[:, :, 0]), np.nan, gated - base[:, None, :])
        if contenders:
            r, s = rows[panel], s[panel]
            self._ctick[r, s] = ticks[panel]
            for i, c in enumerate(contenders):
                self._cfc[r, s, :, i] = c

    # -- checkpoints ------------------------------------------------------------------------
    def state(self) -> dict:
        """Copies of the pending forecasts, the totals, the residuals and the truths queued for
        scoring (kept queued: scoring them now would redraw the bands when this run would not)."""
        out = {name: getattr(self, f"_{name}").copy() for name in _ARRAYS}
        out["queue"] = [tuple(a.copy() for a in entry) for entry in self._queue]
        out["total"] = {k: v.copy() for k, v in self.total.items()}
        out["live"] = {k: v.copy() for k, v in self.live.items()}
        out["res"], out["res_n"] = self.conformal.res.copy(), self.conformal.res_n.copy()
        out["bands"] = self.conformal.state()
        out["gate"] = self.evidence.state()
        out["trust"] = self.trust.state()
        return out

    def load_state(self, st: dict) -> None:
        """Go on from ``state()``; raises ValueError if it was made for other targets, steps or residuals."""
        st = migrations.evaluator(st, self.contenders)
        for name in _ARRAYS:
            have, got = getattr(self, f"_{name}").shape, st[name].shape
            if got[2:] != have[2:]:
                raise ValueError(f"evaluator state {name} has shape {got}, this evaluator wants {have}")
        self.conformal.load_state(st["res"], st["res_n"], st.get("bands"))
        self._tick, self._fc, self._base, self._move = self._reslot(st["tick"], st["fc"], st["base"], st["move"])
        self._ctick, self._cfc = self._reslot(st["ctick"], st["cfc"])
        self._queue = [tuple(np.asarray(a) for a in entry) for entry in st.get("queue", [])]  # older checkpoints flushed it first
        self._queued = sum(len(rows) for rows, _, _ in self._queue)
        self._due = min((int(ticks.min()) + LAG for _, ticks, _ in self._queue), default=_NEVER)
        self._total[:] = [st["total"][k] for k in _TOTALS]
        self._live[:] = [st["live"][k] for k in _TOTALS]
        self.evidence.load_state(st.get("gate", {}))  # older checkpoints: the gate starts afresh
        self.trust.load_state(st.get("trust"))  # older checkpoints: the trust starts afresh

    def _reslot(self, tick: np.ndarray, *kept: np.ndarray) -> list[np.ndarray]:
        """Pending forecasts saved with any number of slots (their ticks, and what is kept of them
        per slot), each in its slot here (by tick)."""
        rows = len(tick)
        out = [np.full((rows, self._slots), -1, dtype=np.int64)] + [
            np.full((rows, self._slots, *a.shape[2:]), np.nan, dtype=np.float32) for a in kept
        ]
        r, s = np.nonzero(tick >= 0)
        order = np.argsort(tick[r, s], kind="stable")  # of two that meet in one slot, the newer stays
        r, s = r[order], s[order]
        to = tick[r, s] % self._slots
        for a, b in zip(out, (tick, *kept)):
            a[r, to] = b[r, s]
        return out

    # -- bands and scores -------------------------------------------------------------------
    def half_width(self) -> np.ndarray:
        """Band half-widths (H, targets); NaN where too few errors were seen (:class:`Bands`)."""
        return self.conformal.half_width()

    def scores(self, live: bool = False, flush: bool = True) -> dict[str, np.ndarray]:
        """Per (step, target): mse, mae, persistence_mse, persistence_mae, skill, coverage, n.

        ``flush=False``: as of the last scoring pass (at most LAG steps behind), for a reader on
        the wall clock (the daemon's gauges): scoring the queued truths early would redraw the bands
        at a moment that depends on when it looked, and the forecasts would differ from replay's."""
        if flush:
            self.flush()
        return scored(self.live if live else self.total)
