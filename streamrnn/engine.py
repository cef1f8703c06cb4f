"""Frames in, forecasts out: the whole of forecasting and learning, with no I/O of its own.

Per batch of closed frames: score the forecasts their values resolve, keep the frames in the rings,
step the hidden states of those streams as one batch, turn the outputs into forecasts in engineering
units with conformal bands, and keep them for scoring. Retraining is offered, not forced: the caller
asks ``retrain_due`` and runs ``retrain()`` in line (replay) or ``snapshot()`` -> trainer ->
``consider()`` in the background (the daemon).
"""

from __future__ import annotations

import copy
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from streamrnn import trainer
from streamrnn.config import Settings
from streamrnn.evaluator import Evaluator
from streamrnn.model import ModelSpec, StreamRNN, build, resolve_device
from streamrnn.ring import Ring
from streamrnn.state import HiddenBank, StreamCapError
from streamrnn.trainer import Snapshot, TrainReport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frame:
    """One stream at one tick: values per channel (``Engine.channels``), NaN where not observed."""

    stream: str
    ts: float
    values: np.ndarray


@dataclass(frozen=True)
class Forecast:
    """Steps 1..H for every target at ``ts + k * period``; ``now`` is step 0 (the soft sensor)."""

    stream: str
    ts: float
    kind: str
    version: int
    targets: tuple[str, ...]
    values: np.ndarray  # (H, targets), engineering units
    lower: np.ndarray  # (H, targets), NaN until enough errors were seen
    upper: np.ndarray
    now: np.ndarray  # (targets,)


@dataclass
class RetrainResult:
    outcome: str  # "promoted", "rejected" or "failed"
    report: TrainReport
    champion_error: float = float("nan")
    challenger_error: float = float("nan")
    version: int = 0
    extra: dict = field(default_factory=dict)


class Engine:
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
        self._ti = np.asarray(self.spec.target_index)
        self._key = np.asarray(self.spec.target_only)
        self._std_t = self._target_std()
        self.bank = HiddenBank(self.model, len(self.channels), settings.streams.max_streams, settings.streams.idle_timeout)
        ev = settings.evaluator
        self.evaluator = Evaluator(len(self._ti), self.spec.horizon, ev.coverage, ev.residuals, ev.live_window)
        self.rings: dict[int, Ring] = {}
        self._last_tick: dict[int, int] = {}
        self.counts: Counter[str] = Counter()
        self.frames_seen = 0
        self._next_retrain = 0
        self._last_evict = -math.inf
        self.results: list[RetrainResult] = []

    def _target_std(self) -> np.ndarray:
        """Engineering units of one output unit, per step and target (H+1, T)."""
        return self.model.dscale.double().cpu().numpy()

    # -- serving ----------------------------------------------------------------------------
    def step(self, frames: Sequence[Frame]) -> list[Forecast]:
        """Take closed frames (at most one per stream is stepped at a time) and return their forecasts."""
        if not frames:
            return []
        now = max(f.ts for f in frames)
        if now - self._last_evict > self.settings.streams.idle_timeout / 10:
            self.evict_idle(now)
        rows, ticks, accepted, later = [], [], [], []
        taken: set[int] = set()
        for f in frames:
            try:
                row, new = self.bank.row(f.stream, f.ts)
            except StreamCapError as e:
                self.counts["refused"] += 1
                log.warning("%s", e)
                continue
            if new:
                self.rings[row] = Ring(self.settings.ring.size, len(self.channels))
                self.evaluator.reset(row)
                self.counts["streams_created"] += 1
            if row in taken:
                later.append(f)
                continue
            tick = round(f.ts / self.period)
            if tick <= self._last_tick.get(row, -(2**62)):
                self.counts["late"] += 1
                continue
            taken.add(row)
            self._last_tick[row] = tick
            self.evaluator.score(row, tick, f.values[self._ti])
            self.rings[row].append(f.ts, f.values)
            rows.append(row)
            ticks.append(tick)
            accepted.append(f)
        out = self._forecast(rows, ticks, accepted) if rows else []
        return out + self.step(later) if later else out

    def _forecast(self, rows: list[int], ticks: list[int], frames: list[Frame]) -> list[Forecast]:
        r = np.asarray(rows)
        values = np.stack([f.values for f in frames])  # (B, C)
        self.bank.observe(r, values)
        fresh = np.isfinite(values)
        deltas = self.bank.step(self.model, rows, fresh)  # (B, H+1, T), normalised
        base = self.bank.held[r][:, self._ti]  # (B, T): the persistence forecast
        pred = base[:, None, :] + deltas[:, 1:, :] * self._std_t[1:]  # (B, H, T)
        soft = self._key & ~fresh[:, self._ti]  # key variables between their samples
        now = np.where(soft, base + deltas[:, 0, :] * self._std_t[0], base)
        half = self.evaluator.half_width()
        lower, upper = pred - half, pred + half
        out = []
        for i, (row, tick, f) in enumerate(zip(rows, ticks, frames)):
            self.evaluator.record(row, tick, pred[i], lower[i], upper[i], base[i])
            out.append(Forecast(f.stream, f.ts, self.spec.kind, self.version, self.spec.targets, pred[i], lower[i], upper[i], now[i]))
        self.frames_seen += len(rows)
        return out

    def evict_idle(self, now: float) -> list[str]:
        """Drop the streams that sent nothing for ``streams.idle_timeout`` seconds."""
        self._last_evict = now
        gone = self.bank.idle(now)
        for stream in gone:
            row = self.bank.remove(stream)
            del self.rings[row]
            self._last_tick.pop(row, None)
            self.evaluator.reset(row)
            self.counts["evicted"] += 1
            log.info("evicted idle stream %s", stream)
        return gone

    # -- learning ---------------------------------------------------------------------------
    @property
    def retrain_due(self) -> bool:
        """Time to retrain: ``retrain_every`` frames since the last (sooner while the rings fill), once
        some stream holds ``trainer.min_frames``."""
        if self.frames_seen < self._next_retrain:
            return False
        return max((r.count for r in self.rings.values()), default=0) >= self.settings.trainer.min_frames

    def snapshot(self) -> Snapshot:
        """Copies of every ring, for a trainer that may run elsewhere; schedules the next retrain."""
        names, values, ts = [], [], []
        for stream, row in self.bank.rows.items():
            t, v = self.rings[row].last()
            names.append(stream)
            values.append(v)
            ts.append(t)
        # Retrain sooner while the rings fill (at 2x, 4x ... the first), then every retrain_every.
        self._next_retrain = self.frames_seen + min(max(self.frames_seen, 1), self.settings.trainer.retrain_every)
        return Snapshot(names, values, ts, self.settings.trainer.holdout_fraction)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def retrain(self) -> RetrainResult:
        """Snapshot, fit and judge in line (deterministic: used by replay and tests)."""
        snap = self.snapshot()
        seed = self.settings.trainer.seed + len(self.results) + 1
        state, report = trainer.train(snap, self.spec, self.state_dict(), self.settings.trainer, seed=seed)
        return self.consider(snap, state, report)

    def consider(self, snap: Snapshot, state: dict[str, torch.Tensor] | None, report: TrainReport) -> RetrainResult:
        """Champion/challenger on the snapshot's held-out tail, with persistence as a standing contender.

        The candidate is served only if its error is lower than both the champion's and the
        persistence forecast's. A champion that has fallen behind persistence is replaced by it.
        """
        if state is None:
            result = RetrainResult("failed", report, version=self.version)
            log.warning("retrain failed: %s", report.error)
        else:
            candidate = StreamRNN(self.spec)
            candidate.load_state_dict(state)
            candidate.eval()
            raws = [v.astype(np.float64) for v in snap.values]
            scale = trainer.change_scale(raws, self.spec, [None] * len(raws))
            err = lambda m: trainer.holdout_error(m, snap, scale)  # noqa: E731
            new, old, base = err(candidate), err(copy.deepcopy(self.model).cpu()), err(build(self.spec))
            best_other = min(x for x in (old, base) if math.isfinite(x)) if math.isfinite(old) or math.isfinite(base) else math.inf
            if math.isfinite(new) and new < best_other:
                self.promote(candidate)
                result = RetrainResult("promoted", report, old, new, self.version)
            else:
                result = RetrainResult("rejected", report, old, new, self.version)
                if math.isfinite(base) and base < old:
                    self.promote(build(self.spec))
                    self.counts["fallback_persistence"] += 1
                    log.info("champion behind persistence on the held-out tail (%.4g > %.4g): serving persistence", old, base)
            result.extra["persistence_error"] = base
            log.info("retrain %s: holdout error %.4g (champion %.4g, persistence %.4g), version %d", result.outcome, new, old, base, self.version)
        self.counts[f"retrain_{result.outcome}"] += 1
        self.results.append(result)
        return result

    def promote(self, model: StreamRNN) -> None:
        """Serve ``model`` from the next step on, its hidden states re-warmed over each stream's recent frames."""
        self.model = model.to(self.device).eval()
        self.version += 1
        self._std_t = self._target_std()
        self.bank.reset_hidden(self.model)
        self.rewarm()

    @torch.inference_mode()
    def rewarm(self) -> None:
        """Run the serving model over the last ``trainer.rewarm`` frames of every stream, batched by length."""
        by_len: dict[int, list[tuple[int, np.ndarray]]] = {}
        for row in self.bank.rows.values():
            recent = self.rings[row].last(self.settings.trainer.rewarm)[1]
            by_len.setdefault(len(recent), []).append((row, recent))
        for length, group in by_len.items():
            if length == 0:
                continue
            rows = [r for r, _ in group]
            vals = np.stack([v for _, v in group])  # (B, T, C)
            held = np.stack([trainer.fill(v) for v in vals])
            centre = np.stack([trainer.centres(v, self.spec.centre_alpha) for v in vals])
            f32 = lambda a: torch.as_tensor(a, dtype=torch.float32, device=self.device)  # noqa: E731
            _, hidden = self.model(f32(held), f32(centre), torch.as_tensor(np.isfinite(vals), device=self.device))
            self.bank.hidden[:, :, torch.as_tensor(rows, device=self.device)] = hidden

    # -- reading ----------------------------------------------------------------------------
    @property
    def streams(self) -> list[str]:
        return self.bank.streams

    def frame(self, stream: str, ts: float, values: dict[str, float]) -> Frame:
        """A frame from a mapping feature -> value; features not given are missing."""
        v = np.full(len(self.channels), np.nan)
        for i, name in enumerate(self.channels):
            x = values.get(name)
            if x is not None:
                v[i] = x
        return Frame(stream, ts, v)
