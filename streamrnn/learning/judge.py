"""The retrain as a whole, and its verdict: fit a challenger (:mod:`streamrnn.learning.trainer`) and the
linear contender on a snapshot, then judge challenger, champion and persistence on the snapshot's
held-out tail, which no fit saw. The challenger serves only where it beats both; a champion that has
fallen behind persistence is replaced by persistence."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from streamrnn.config import TrainerSettings
from streamrnn.engine import ridgeform
from streamrnn.engine.bank import warm
from streamrnn.engine.linear import OnlineRidge
from streamrnn.engine.model import ModelSpec, StreamRNN, build
from streamrnn.engine.snapshot import RetrainResult, Snapshot, TrainReport, Verdict
from streamrnn.learning import examples
from streamrnn.learning.trainer import change_scale, normalisation, prepare, run_loss, train


def holdout_error(model: StreamRNN, snapshot: Snapshot, scale: np.ndarray) -> float:
    """Error of ``model`` on each stream's held-out tail, steps 1..H, on a scale common to all models.

    The model runs from a blank state over the whole snapshot; each target's error at step k is
    divided by ``scale`` (H+1, T), the snapshot's persistence error, so the result reads as
    1 - skill averaged over targets, and two models with different normalisations compare fairly.
    """
    parts = []
    for i, raw in enumerate(snapshot.values):
        p = prepare(raw.astype(np.float64), model.spec, scale, limit=len(raw))
        p["ym"][: snapshot.split(i)] = False
        parts.append(p)
    ratio = model.dscale / torch.as_tensor(scale, dtype=torch.float32)
    return run_loss(model, parts, slice(1, None), ratio[1:])


if TYPE_CHECKING:
    from streamrnn.engine.engine import Engine


def in_line(engine: Engine) -> RetrainResult:
    """Snapshot, fit, judge and adopt in line: replay's and the tests' way, so it repeats exactly.
    The fit's budget is counted in steps and epochs only: ``trainer.max_seconds``, a wall-clock
    guard for the daemon, would make the result depend on how busy the machine was."""
    snap = engine.snapshot()
    cfg = engine.settings.trainer.model_copy(update={"max_seconds": math.inf})
    return engine.adopt(snap, retrain(snap, engine.spec, engine.state_dict(), cfg, seed=engine.next_seed()))


def linear_in_line(engine: Engine) -> RetrainResult:
    """Fit the linear contender alone, in line (replay); the daemon has the retrainer do it."""
    snap = engine.snapshot(recurrent=False)
    return engine.adopt(snap, retrain(snap, engine.spec, {}, engine.settings.trainer))


def retrain(snapshot: Snapshot, spec: ModelSpec, champion: dict[str, Tensor], settings: TrainerSettings, seed: int = 0) -> Verdict:
    """Fit a challenger from the champion's weights, then judge it, and carry the linear contender
    over the new frames; never raises."""
    linear, summary = fit_linear(snapshot, spec)
    if not snapshot.recurrent:
        return Verdict(
            "linear",
            TrainReport(
                status="ok" if linear is not None else "failed", error=summary.get("error"), frames=snapshot.frames, linear=summary
            ),
            linear=linear,
        )
    state, report = train(snapshot, spec, champion, settings, seed)
    report.linear = summary
    verdict = Verdict("failed", report) if state is None else judge(snapshot, spec, champion, state, report, settings, seed)
    verdict.linear = linear
    return verdict


def fit_linear(snapshot: Snapshot, spec: ModelSpec) -> tuple[dict | None, dict]:
    """The linear contender's statistics carried over the snapshot's frames it has not learnt from,
    solved again (its penalty chosen on the newest examples): (its new state, a summary). Its
    normalisation is the first snapshot's, kept after, so that the statistics add up. (None, ...)
    where it is off or failed; never raises."""
    if not snapshot.lookback:
        return None, {}
    start = time.perf_counter()
    try:
        if snapshot.linear is None:
            mean, std = normalisation(snapshot.values)
            ridge = OnlineRidge(
                len(spec.channels), list(spec.target_index), spec.horizon, snapshot.lookback, mean, std, calendar=snapshot.calendar
            )
        else:
            ridge = ridgeform.from_state(snapshot.linear)
        learnt = examples.learn_frames(ridge, snapshot.streams, snapshot.values, snapshot.ts, snapshot.counts, snapshot.max_examples)
        if not np.isfinite(ridge.weights).all():
            raise FloatingPointError("non-finite weights")
        return ridgeform.state(ridge), {
            "examples": learnt,
            "learnt": ridge.learnt,
            "penalty": ridge.penalty,
            "seconds": round(time.perf_counter() - start, 3),
        }
    except Exception as e:  # as in train(): a failed fit keeps the contender it had
        return None, {"error": f"{type(e).__name__}: {e}", "seconds": round(time.perf_counter() - start, 3)}


def judge(
    snapshot: Snapshot,
    spec: ModelSpec,
    champion: dict[str, Tensor],
    challenger: dict[str, Tensor],
    report: TrainReport,
    settings: TrainerSettings,
    seed: int = 0,
) -> Verdict:
    """Champion, challenger and persistence on the snapshot's held-out tail; the best is served.

    The challenger wins only with an error below both others. A champion that has fallen behind
    persistence is replaced by it. The model to serve is warmed over the snapshot's last
    ``settings.rewarm`` frames here, away from serving, so the swap costs the engine only the
    frames that arrived since.
    """
    try:
        start = time.perf_counter()
        models = {"challenger": _model(spec, challenger), "champion": _model(spec, champion), "persistence": build(spec, seed=seed)}
        raws = [v.astype(np.float64) for v in snapshot.values]
        scale = change_scale(raws, spec, [None] * len(raws))
        err = {name: holdout_error(m, snapshot, scale) for name, m in models.items()}
        verdict = Verdict(
            "rejected", report, champion_error=err["champion"], challenger_error=err["challenger"], persistence_error=err["persistence"]
        )
        others = [e for e in (err["champion"], err["persistence"]) if np.isfinite(e)]
        if np.isfinite(err["challenger"]) and err["challenger"] < min(others, default=np.inf):
            verdict.outcome, verdict.serve = "promoted", "challenger"
        elif np.isfinite(err["persistence"]) and err["persistence"] < err["champion"]:
            verdict.serve = "persistence"
        if verdict.serve:
            model = models[verdict.serve]
            verdict.state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
            verdict.hidden = warm(model, snapshot.values, settings.rewarm).cpu().numpy()
        report.seconds += time.perf_counter() - start
        return verdict
    except Exception as e:  # as in train(): a failure is a verdict, never a crash
        report.status, report.error = "failed", f"judging: {type(e).__name__}: {e}"
        return Verdict("failed", report)


def _model(spec: ModelSpec, state: dict[str, Tensor]) -> StreamRNN:
    m = StreamRNN(spec)
    m.load_state_dict(state)
    return m.eval()
