"""The engine's side of retraining: when one is due, the snapshot of the rings handed out, the
verdict taken in, and the model it names caught up over the frames since and swapped in
(:class:`~streamrnn.engine.adoption.Adoption`). A part of :class:`~streamrnn.engine.engine.Engine`,
whose state it shares (the streams' rows, the rings, the model served, the counts); the fit itself
is the learning part's (:mod:`streamrnn.learning.judge`)."""

from __future__ import annotations

import logging
from collections import Counter, deque

import numpy as np
import torch

from streamrnn.config import Settings
from streamrnn.engine import ridgeform
from streamrnn.engine.adoption import Adoption, checked
from streamrnn.engine.bank import HiddenBank
from streamrnn.engine.contenders import Contenders
from streamrnn.engine.model import ModelSpec, StreamRNN
from streamrnn.engine.ring import Rings
from streamrnn.engine.snapshot import RetrainResult, Snapshot, Verdict

log = logging.getLogger(__name__)


class Retraining:
    """Retraining's half of the engine (a base of :class:`Engine`, which sets these)."""

    settings: Settings
    spec: ModelSpec
    device: torch.device
    model: StreamRNN
    version: int
    bank: HiddenBank
    rings: Rings
    contenders: Contenders
    counts: Counter[str]
    frames_seen: int
    retrains: int  # verdicts adopted since the first start (checkpointed): seeds the next
    results: deque[RetrainResult]
    _next_retrain: int
    _next_linear: int
    _adoption: Adoption | None
    _std_t: np.ndarray

    def _target_std(self) -> np.ndarray:
        """Engineering units of one output unit, per step and target (H+1, T)."""
        return self.model.dscale.double().cpu().numpy()

    @property
    def retrain_due(self) -> bool:
        """Time to retrain: ``retrain_every`` frames since the last (sooner while the rings fill), once
        some stream holds ``trainer.min_frames``."""
        return self.settings.trainer.enabled and self.frames_seen >= self._next_retrain and self.retrain_ready

    @property
    def retrain_ready(self) -> bool:
        """Some stream holds ``trainer.min_frames``: enough to fit on."""
        return self.rings.most() >= self.settings.trainer.min_frames

    @property
    def linear_due(self) -> bool:
        """Time to fit the linear contender alone: ``linear.refit_every`` frames since it was last
        fitted (alone or in a retrain), once a retrain could run."""
        lin = self.settings.linear
        return self.settings.trainer.enabled and lin.enabled and self.frames_seen >= self._next_linear and self.retrain_ready

    def snapshot(self, recurrent: bool = True) -> Snapshot:
        """Copies of every ring, for a trainer that may run elsewhere; schedules the next retrain
        (``recurrent``), or the next fit of the linear contender alone."""
        rows = list(self.bank.rows.values())
        last = [self.rings[row].last() for row in rows]  # (ts, values) per stream
        counts = [self.rings[row].count for row in rows]
        if recurrent:  # retrain sooner while the rings fill (at 2x, 4x ... the first), then every retrain_every
            self._next_retrain = self.frames_seen + min(max(self.frames_seen, 1), self.settings.trainer.retrain_every)
        lin = self.settings.linear
        self._next_linear = self.frames_seen + lin.refit_every
        return Snapshot(
            list(self.bank.rows),
            [v for _, v in last],
            [t for t, _ in last],
            self.settings.trainer.holdout_fraction,
            counts,
            self.bank.held[rows],
            self.bank.centre[rows],
            linear=ridgeform.state(self.contenders.linear) if self.contenders.linear is not None else None,
            lookback=lin.lookback if lin.enabled else 0,
            calendar=lin.calendar,
            max_examples=lin.max_examples,
            recurrent=recurrent,
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def next_seed(self) -> int:
        """The seed of the next retrain: a function of how many came before, so replays repeat."""
        return self.settings.trainer.seed + self.retrains + 1

    def adopt(self, snap: Snapshot, verdict: Verdict, at_once: bool = True) -> RetrainResult:
        """Act on a retrain's verdict between two steps: swap the model it names in, or keep serving.
        A verdict whose weights or states do not fit this model, or are not finite, is a failure.

        The model is served once its states are caught up over the frames since the snapshot: here
        (``at_once``), or over later calls of :meth:`catch_up`, the model before it serving
        meanwhile (the result's version is the one it will serve as)."""
        verdict = checked(verdict, self.model, self.bank, snap)
        if verdict.linear is not None and self.adopt_linear(verdict.linear):
            self.counts["linear_fitted"] += 1
        elif verdict.report.linear.get("error"):
            self.counts["linear_failed"] += 1
            log.warning("linear contender not refitted: %s", verdict.report.linear["error"])
        if verdict.outcome == "linear":  # the linear contender alone: no retrain to count
            return RetrainResult("linear", verdict.report, version=self.version)
        version = self.version
        if verdict.serve is not None and verdict.state is not None and verdict.hidden is not None:
            self.catch_up()  # one still catching up is served first
            model = StreamRNN(self.spec)
            model.load_state_dict({k: torch.as_tensor(v) for k, v in verdict.state.items()})
            self._adoption = Adoption(model.to(self.device).eval(), snap, torch.as_tensor(verdict.hidden), self.bank, self.rings)
            version = self.version + 1
            if at_once:
                self.catch_up()
            if verdict.serve == "persistence":
                self.counts["fallback_persistence"] += 1
                log.info(
                    "champion behind persistence on the held-out tail (%.4g > %.4g): serving persistence",
                    verdict.champion_error,
                    verdict.persistence_error,
                )
        result = RetrainResult(verdict.outcome, verdict.report, verdict.champion_error, verdict.challenger_error, version)
        result.extra["persistence_error"] = verdict.persistence_error
        if verdict.outcome == "failed":
            log.warning("retrain failed: %s", verdict.report.error)
        else:
            errors = (verdict.challenger_error, verdict.champion_error, verdict.persistence_error)
            log.info("retrain %s: holdout error %.4g (champion %.4g, persistence %.4g), version %d", verdict.outcome, *errors, version)
        self.counts[f"retrain_{verdict.outcome}"] += 1
        self.retrains += 1
        self.results.append(result)
        return result

    def adopt_linear(self, state: dict) -> bool:
        """Serve a retrain's linear contender from the next step; one that does not fit this
        engine's channels, targets and horizon, or is not finite, is refused (the one before stays)."""
        refused = self.contenders.adopt(state, self.rings, self.bank.capacity)
        if refused is not None:
            self.counts["linear_refused"] += 1
            log.warning("linear contender refused: %s", refused)
        return refused is None

    def serve(self, model: StreamRNN, version: int) -> None:
        """Serve a model fitted elsewhere (a fleet's champion) as ``version`` from the next step,
        each stream's state warmed over its ring."""
        self._swap(Adoption(model.to(self.device).eval(), Snapshot([], [], []), model.init_hidden(0), self.bank, self.rings), version)

    @property
    def adopting(self) -> bool:
        """A verdict's model is being caught up: :meth:`catch_up` moves it on."""
        return self._adoption is not None

    def catch_up(self, budget: int | None = None) -> bool:
        """Step the states of the model being adopted over up to ``budget`` of the frames they missed
        (stream-frames; all if None), and serve it once every stream is level (:class:`Adoption`).
        Returns whether the model was swapped in."""
        a = self._adoption
        if a is None or not a.step(budget):
            return False
        self._swap(a, self.version + 1)
        return True

    def _swap(self, a: Adoption, version: int) -> None:
        self._adoption, self.bank.hidden = None, a.serving_hidden(self.settings.trainer.rewarm)
        self.model, self.version = a.model, version
        self._std_t = self._target_std()
