"""Frames in, forecasts out: the whole of forecasting and learning, with no I/O of its own.

Per batch of closed frames: score the forecasts their values resolve, keep the frames in the rings,
step the hidden states of those streams as one batch, turn the outputs into forecasts in engineering
units with conformal bands, and keep them for scoring. Retraining is offered, not forced: the caller
asks ``retrain_due``, takes a ``snapshot()``, has a retrain run on it (:mod:`streamrnn.learning.judge`: in
line in a replay, in the retrainer's process in the daemon), and ``adopt()``s the verdict between two
steps. The engine hands the snapshot out and takes the verdict in; it never trains.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, deque
from collections.abc import Sequence

import numpy as np
import torch

from streamrnn.config import Settings
from streamrnn.engine.adoption import Adoption
from streamrnn.engine.bank import HiddenBank, StreamCapError
from streamrnn.engine.contenders import Contenders
from streamrnn.engine.evaluator import Evaluator
from streamrnn.engine.forecast import Forecasts
from streamrnn.engine.frame import Frame
from streamrnn.engine.health import Health
from streamrnn.engine.model import ModelSpec, StreamRNN, build, resolve_device
from streamrnn.engine.retraining import Retraining
from streamrnn.engine.ring import Rings
from streamrnn.engine.snapshot import RetrainResult
from streamrnn.engine.soundness import unsound

log = logging.getLogger(__name__)


class Engine(Retraining):
    """The one object every caller asks: serving here, retraining's side in :class:`Retraining`."""

    def __init__(self, settings: Settings, model: StreamRNN | None = None, version: int = 0) -> None:
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.spec = ModelSpec.from_settings(settings)
        if model is not None and model.spec != self.spec:
            raise ValueError(f"model spec {model.spec} does not match the configuration {self.spec}")
        self.model = (model or build(self.spec, seed=settings.trainer.seed)).to(self.device).eval()
        self.version = version
        self.channels: tuple[str, ...] = self.spec.channels
        self.period = settings.features.period
        self._ti, self._key = np.asarray(self.spec.target_index), np.asarray(self.spec.target_only)
        self._std_t = self._target_std()
        self.bank = HiddenBank(self.model, len(self.channels), settings.streams.max_streams, settings.streams.idle_timeout)
        ev, gate = settings.evaluator, settings.gate
        self.evaluator = Evaluator(len(self._ti), self.spec.horizon, ev.coverage, ev.residuals, ev.live_window, 3, gate.memory, gate.trust)
        self.contenders = Contenders(settings, len(self.channels), self._ti, self.spec.horizon, self.evaluator)
        self.rings = Rings(settings.ring.size, len(self.channels))
        self.health = Health(len(self.channels), settings.health)
        self.counts: Counter[str] = Counter()
        self.frames_seen = 0
        self.retrains = 0  # verdicts adopted since the first start (checkpointed): seeds the next
        self._next_retrain = 0
        self._next_linear = 0
        self._last_evict = -math.inf
        self.results: deque[RetrainResult] = deque(maxlen=1000)  # the latest, for reports
        self._adoption: Adoption | None = None  # a verdict's model being caught up

    # -- serving ----------------------------------------------------------------------------
    def step(self, frames: Sequence[Frame], now: float | None = None) -> Forecasts:
        """Take closed frames (at most one per stream is stepped at a time) and return their forecasts.

        ``now`` is the clock that idleness is measured on: the daemon passes the wall clock, so one
        stream's timestamps far ahead cannot make the others look idle; a replay leaves it to the
        frames' own timestamps."""
        if not frames:
            return self._none()
        clock = max(f.ts for f in frames) if now is None else now
        if clock - self._last_evict > self.settings.streams.idle_timeout / 10:
            self.evict_idle(clock)
        rows, ticks, accepted, later = [], [], [], []
        taken: set[int] = set()
        bank, rings, period = self.bank, self.rings, self.period
        for f in frames:
            try:
                row, new = bank.row(f.stream, f.ts if now is None else now)
            except StreamCapError:
                self.counts["refused"] += 1  # counted and logged (at a bounded rate) by the caller
                continue
            if new:
                rings.open(row)
                self.evaluator.reset(row)
                self.contenders.reset(row)
                self.counts["streams_created"] += 1
            if row in taken:
                later.append(f)
                continue
            tick = round(f.ts / period)
            if rings.late(row, tick):
                self.counts["late"] += 1
                continue
            taken.add(row)
            rows.append(row)
            ticks.append(tick)
            accepted.append(f)
        out = self._forecast(rows, ticks, accepted) if rows else self._none()
        return out + self.step(later, now) if later else out

    def _none(self) -> Forecasts:
        return Forecasts.empty(self.spec.kind, self.version, self.spec.targets, self.spec.horizon)

    def _forecast(self, rows: list[int], ticks: list[int], frames: list[Frame]) -> Forecasts:
        r, t = np.asarray(rows), np.asarray(ticks)
        stamps = [f.ts for f in frames]
        values = np.array([f.values for f in frames])  # (B, C)
        values, suspect = self.health.judge(r, values, self.bank.centre) if self.settings.health.enabled else (values, None)
        self.rings.take_all(rows, ticks, stamps, values)
        truth = values.take(self._ti, axis=1)
        self.evaluator.score(r, t, truth)
        inputs = values if suspect is None else self.health.impute(r, t, values, suspect)
        deltas, held = self.bank.step(self.model, r, inputs)  # (B, H+1, T), normalised; (B, C)
        base = held.take(self._ti, axis=1)  # (B, T): the persistence forecast
        out = base[:, None, :] + deltas * self._std_t  # (B, H+1, T): steps 0..H
        soft = self._key & ~np.isfinite(truth)  # key variables between their samples
        now = np.where(soft, out[:, 0], base)
        recurrent, linear = out[:, 1:], self.contenders.linear_forecast(r, held, base, stamps)
        panel = self.evaluator.pending.panel(r, t)  # the forecasts whose contenders the gate will score
        gated, mixed = self.contenders.serve(base, recurrent, linear, panel)  # before the linear's first fit, of the other two
        served = self.evaluator.trust.draw(r, base, gated)  # each stream's own errors draw it toward the held value
        contenders = (recurrent[panel], np.float32(np.nan) if linear is None else linear[panel], mixed)
        self.health.expected(r, t, served[:, 0], self._ti)
        if suspect is not None:  # a suspect target is served as held, and nothing of it is scored
            skill = lambda: self.evaluator.scores(live=True, flush=False)["skill"]  # read only in an incident
            served, now, unscored = self.health.hold(r, suspect.take(self._ti, axis=1), self._ti, served, now, soft, skill)
        band = self.evaluator.bands(served)  # (B, H, 3, T): prediction, lower, upper
        kept = (band, contenders) if suspect is None else (unscored(band, 0), tuple(unscored(c, 0, panel) for c in contenders))
        self.evaluator.record(r, t, kept[0], base, kept[1], panel, gated)
        self.frames_seen += len(rows)
        return Forecasts(
            [f.stream for f in frames],
            stamps,
            self.spec.kind,
            self.version,
            self.spec.targets,
            band[:, :, 0],
            band[:, :, 1],
            band[:, :, 2],
            now,
            None if suspect is None else [tuple(self.channels[c] for c in np.flatnonzero(s)) for s in suspect],
            {"recurrent": recurrent} if linear is None else {"recurrent": recurrent, "linear": linear},
        )

    def gate_weights(self) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
        """The gate's weights as it serves them now (:meth:`Contenders.weights`)."""
        return self.contenders.weights()

    def evict_idle(self, now: float) -> list[str]:
        """Drop the streams that sent nothing for ``streams.idle_timeout`` seconds."""
        self._last_evict = now
        gone = self.bank.idle(now)
        for stream in gone:
            self._remove(stream)
            self.counts["evicted"] += 1
            log.info("evicted idle stream %s", stream)
        return gone

    def forget(self, stream: str) -> bool:
        """Drop a stream's state (hidden state, ring, scores), so that its next frame starts it
        afresh: the assembler restarted it on a new clock, or displaced it at the stream cap."""
        if stream not in self.bank.rows:
            return False
        self._remove(stream)
        self.counts["forgotten"] += 1
        return True

    def _remove(self, stream: str) -> None:
        row = self.bank.remove(stream)
        self.rings.drop(row)
        self.evaluator.reset(row)
        self.contenders.reset(row)
        self.health.reset(row)

    # -- checkpoints ------------------------------------------------------------------------
    def state(self, live_rings: bool = False) -> dict:
        """Everything a restart needs to go on exactly where this engine is, as copies of plain data
        (numpy arrays, numbers, strings; checkpoint.py writes them). ``live_rings``: the rings' own
        arrays, not copies (:meth:`Durability.checkpoint` says when that is exact)."""
        return {
            "spec": self.spec.to_dict(),
            "version": self.version,
            "weights": {k: v.numpy() for k, v in self.state_dict().items()},
            "bank": self.bank.state(),
            **self.rings.state(live=live_rings),  # rings, last_tick
            "evaluator": self.evaluator.state(),
            **self.contenders.state(),  # linear, windows, gate
            "health": self.health.state_dict(),
            "counts": dict(self.counts),
            "frames_seen": self.frames_seen,
            "retrains": self.retrains,
            "next_retrain": self._next_retrain,
            "next_linear": self._next_linear,
            "last_evict": self._last_evict,
        }

    def load_state(self, st: dict, now: float | None = None) -> None:
        """Go on from ``state()``. The caller checked that it fits this engine's layout
        (:func:`checkpoint.layout`); a part of the wrong shape still raises before anything changes.
        With ``now`` (the daemon's wall clock), idleness counts from there: downtime is not silence;
        an unsound state (:mod:`streamrnn.engine.soundness`) raises ValueError, as one misshapen."""
        if (why := unsound(st, self.settings.frames.max_abs)) is not None:
            raise ValueError(f"state not sound: {why}")
        model = StreamRNN(ModelSpec(**st["spec"]))
        model.load_state_dict({k: torch.as_tensor(v) for k, v in st["weights"].items()})
        self.bank.check(st["bank"])
        self.rings.check(st)
        self.evaluator.load_state(st["evaluator"])
        self._adoption = None
        self.model, self.version = model.to(self.device).eval(), int(st["version"])
        self._std_t = self._target_std()
        self.bank.load_state(st["bank"], self.device, now)
        self.health.load_state(st.get("health"), self.bank.capacity)
        if now is not None:
            self._last_evict = now
        self.rings.load_state(st)
        self.counts = Counter(st["counts"])
        self.frames_seen, self.retrains = int(st["frames_seen"]), int(st["retrains"])
        self._next_retrain = int(st["next_retrain"])
        self._next_linear = int(st.get("next_linear", 0))
        if now is None:
            self._last_evict = float(st["last_evict"])
        refused = self.contenders.load_state(st, self.rings, self.bank.capacity)
        if refused is not None:
            self.counts["linear_refused"] += 1
            log.warning("linear contender refused: %s", refused)

    # -- reading ----------------------------------------------------------------------------
    @property
    def streams(self) -> list[str]:
        return self.bank.streams

    def last_ts(self, stream: str) -> float:
        """Timestamp of the stream's last frame stepped."""
        ring = self.rings[self.bank.rows[stream]]
        return float(ring.ts[(ring.count - 1) % ring.size])

    def scores(self, live: bool = False, flush: bool = True) -> dict[str, np.ndarray]:
        """Per (step, target): the evaluator's scores (:meth:`Evaluator.scores`)."""
        return self.evaluator.scores(live=live, flush=flush)

    def ring_frames(self) -> list[int]:
        """Frames held in each stream's ring."""
        return [len(r) for r in self.rings.values()]

    def last_tick(self) -> int:
        """The newest tick stepped, over every stream; -1 before any."""
        return self.rings.last_tick()

    @property
    def gate_drawn(self) -> bool:
        """The gate has drawn its weights from scored errors at least once."""
        return self.evaluator.evidence.version > 0
