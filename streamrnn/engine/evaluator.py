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
from streamrnn.engine.pending import Pending
from streamrnn.engine.scores import scored
from streamrnn.engine.trust import Trust

_TOTALS = ("n", "se", "se_p", "ae", "ae_p", "n_band", "hit")
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
        # The forecasts waiting for their truths; the contenders' only for a panel of streams (all
        # of them up to _MOMENT_ROWS), which the gate's error moments read.
        self.pending = Pending(h, t, contenders, LAG, _MOMENT_ROWS)
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
        # The errors of persistence, the contenders and their combination, as the gate weighs them.
        self.evidence = Evidence(h, t, gate_memory)
        self.trust = Trust(h, t, trust)

    # -- per-stream pending forecasts -------------------------------------------------------
    def reset(self, row: int) -> None:
        """Open a stream's row, or forget its pending forecasts (the row is reused or its state was
        replaced) once the truths already given have scored them. A row is opened before it is scored
        or recorded."""
        self.flush()
        self.pending.forget(row)
        self.trust.reset(row)

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
        p = self.pending
        made, slots, valid, at = p.find(rows, ticks)
        if not valid.any():
            return
        fc = p.steps(p.fc, at)  # (B, H, 2, T)
        truth = truth.astype(np.float32)[:, None, :]
        err = fc[:, :, 0] - truth  # NaN where either is missing
        err_p = p.bases(at) - truth
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

    def _trust(self, rows: np.ndarray, ticks: np.ndarray, truth: np.ndarray) -> None:
        """Fold into the trust the moves of the forecasts these truths score, and the truths'."""
        p = self.pending
        _, _, valid, at = p.find(rows, ticks)
        if not valid.any():
            return
        move = p.steps(p.move, at)  # (B, H, T)
        change = truth.astype(np.float32)[:, None, :] - p.bases(at)
        ok = valid[..., None] & np.isfinite(move) & np.isfinite(change)
        self.trust.fold(rows, move, change, ok)

    def _contenders(
        self, rows: np.ndarray, slots: np.ndarray, made: np.ndarray, truth: np.ndarray, err_p: np.ndarray, ok: np.ndarray
    ) -> None:
        """The errors of the contenders' forecasts kept for these truths (B, 1, T), into the gate's
        moments beside persistence's (``err_p``, (B, H, T)); of more than _MOMENT_ROWS of them, as
        many evenly spread: the moments are means."""
        p = self.pending
        kept = p.ctick[rows[:, None], slots] == made  # (B, H)
        some = np.flatnonzero(kept.any(axis=1))
        if not len(some):
            return
        if len(some) > _MOMENT_ROWS:
            some = some[np.linspace(0, len(some) - 1, _MOMENT_ROWS).astype(np.int64)]
        cfc = p.steps(p.cfc, rows[some, None] * p.slots + slots[some])  # (S, H, K, T)
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
        move = None
        if self.trust.enabled:  # the moves of the forecasts scored (not a suspect target's: its prediction is NaN)
            move = np.nan if gated is None else np.where(np.isnan(band[:, :, 0]), np.nan, gated - base[:, None, :])
        self.pending.keep(rows, ticks, band, base, move, contenders, panel)

    # -- checkpoints ------------------------------------------------------------------------
    def state(self) -> dict:
        """Copies of the pending forecasts, the totals, the residuals and the truths queued for
        scoring (kept queued: scoring them now would redraw the bands when this run would not)."""
        out = self.pending.state()
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
        self.pending.check(st)
        self.conformal.load_state(st["res"], st["res_n"], st.get("bands"))
        self.pending.load_state(st)
        self._queue = [tuple(np.asarray(a) for a in entry) for entry in st.get("queue", [])]  # older checkpoints flushed it first
        self._queued = sum(len(rows) for rows, _, _ in self._queue)
        self._due = min((int(ticks.min()) + LAG for _, ticks, _ in self._queue), default=_NEVER)
        self._total[:] = [st["total"][k] for k in _TOTALS]
        self._live[:] = [st["live"][k] for k in _TOTALS]
        self.evidence.load_state(st.get("gate", {}))  # older checkpoints: the gate starts afresh
        self.trust.load_state(st.get("trust"))  # older checkpoints: the trust starts afresh

    # -- bands and scores -------------------------------------------------------------------
    def scores(self, live: bool = False, flush: bool = True) -> dict[str, np.ndarray]:
        """Per (step, target): mse, mae, persistence_mse, persistence_mae, skill, coverage, n.

        ``flush=False``: as of the last scoring pass (at most LAG steps behind), for a reader on
        the wall clock (the daemon's gauges): scoring the queued truths early would redraw the bands
        at a moment that depends on when it looked, and the forecasts would differ from replay's."""
        if flush:
            self.flush()
        return scored(self.live if live else self.total)
