"""The gate: which contender is served, per target and step, from their recent errors.

The contenders are persistence, the recurrent model and the linear family. The evaluator keeps,
per regime, step and target, exponentially weighted sums of the products of the contenders' errors
on forecasts whose truth has arrived (:class:`Errors`). From their second moments the gate draws
the convex combination of the contenders with the least squared error (Bates and Granger's
combination, its weights kept non-negative and summing to one), and records what that combination
forecast, as a fourth contender. Weights fitted to the errors they are judged on flatter
themselves, and errors come in bursts (a set-point step, an upset), so an average lead can be
luck. So what is served is persistence, unless another of the four had less squared error than it
by more than chance (a one-sided test on the difference of squared errors, Diebold and Mariano's,
at ``SIGNIFICANT`` standard errors), at that step or over all steps of that target; of those that
did, the one with the least at that step. Errors k steps ahead overlap k - 1 steps with their
neighbours', so only one in k counts as evidence, and the errors' weights fade: a (step, target)
with too little of it within the gate's memory (far steps, always) is judged on its target's
errors pooled over the steps, and where that is too little, on its regime's pooled over steps and
targets. One with enough is judged on its own errors drawn toward its target's, the more the less
evidence it has (a prior of ``warmup`` errors' worth): the steps of one target err alike, and a
choice or a combination drawn from a few dozen effective errors is mostly noise. Only errors
already scored enter, so no choice depends on a value that had not arrived when the forecast was
made.

Weights learnt in calm times do not carry over to the moments after a set-point step or an upset,
when a linear model extrapolates the jump in its window for as long as the window holds it. So a
forecast whose contenders disagree by more than ``WILD`` times their typical disagreement (in that
step and target) is a wild one, and wild forecasts have errors and choices of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from itertools import combinations
from typing import NamedTuple

import numpy as np

CONTENDERS = ("persistence", "recurrent", "linear")
PERSISTENCE, RECURRENT, LINEAR = range(len(CONTENDERS))
COMBINATION = len(CONTENDERS)  # the combination's errors sit after the contenders'
REGIMES = ("calm", "wild")
WILD = 3.0  # contenders this many typical disagreements apart: a wild forecast
SIGNIFICANT = 2.0  # standard errors by which a contender must beat persistence to be served
_SUPPORTS = [list(s) for k in range(1, len(CONTENDERS) + 1) for s in combinations(range(len(CONTENDERS)), k)]


@dataclass
class Errors:
    """The gate's evidence per regime, step and target: exponentially weighted sums of the products
    of the errors of persistence, the contenders and the combination (``second``: e_i e_j,
    ``fourth``: e_i² e_j², each (regimes, H, T, K + 1, K + 1)), of the weights and of their squares
    (``weight``, ``weight2``: (regimes, H, T)), and the errors ever scored (``count``)."""

    second: np.ndarray
    fourth: np.ndarray
    weight: np.ndarray
    weight2: np.ndarray
    count: np.ndarray

    @classmethod
    def zeros(cls, horizon: int, targets: int) -> Errors:
        cell, k = (len(REGIMES), horizon, targets), len(CONTENDERS) + 1
        return cls(np.zeros((*cell, k, k)), np.zeros((*cell, k, k)), np.zeros(cell), np.zeros(cell), np.zeros(cell))

    def fold(self, regime: int, err: np.ndarray, mine: np.ndarray, decay: float) -> None:
        """Add the errors (H, T, B, K + 1), finite, where ``mine`` (H, T, B), fading what was there
        by ``decay`` per error added to its (step, target)."""
        n = mine.sum(axis=-1)  # (H, T)
        e = err * mine[..., None]
        fade = decay**n
        self.second[regime] *= fade[..., None, None]
        self.second[regime] += e.swapaxes(-1, -2) @ e
        self.fourth[regime] *= fade[..., None, None]
        e *= e
        self.fourth[regime] += e.swapaxes(-1, -2) @ e
        # each pass's errors are weighed as one, at the end of the pass: the weights' sums are exact
        self.weight[regime] = self.weight[regime] * fade + n
        self.weight2[regime] = self.weight2[regime] * fade * fade + n
        self.count[regime] += n

    def state(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name).copy() for f in fields(self)}

    @classmethod
    def from_state(cls, st: dict[str, np.ndarray], like: Errors) -> Errors:
        """``state()`` back; fresh ``like`` where it is missing or has other shapes (older checkpoints)."""
        if all(f.name in st and st[f.name].shape == getattr(like, f.name).shape for f in fields(cls)):
            return cls(**{f.name: st[f.name].copy() for f in fields(cls)})
        return cls(**{f.name: np.zeros_like(getattr(like, f.name)) for f in fields(cls)})


class Level(NamedTuple):
    """The evidence per (regime, step, target) at one level of pooling (axes of one where pooled):
    mean error products, each (step, target) on its own scale, the effective errors behind them and
    the errors' worth scored."""

    second: np.ndarray
    fourth: np.ndarray
    ess: np.ndarray
    seen: np.ndarray


def weights(errors: Errors, warmup: float) -> tuple[np.ndarray, np.ndarray]:
    """(combination, served) weights, each (regimes, contenders, H, targets). Each (regime, step,
    target) is judged at the finest level with ``warmup`` errors' worth of evidence: its own, its
    target's steps, its regime's steps and targets; below that it serves the recurrent model alone,
    as the engine did before it had contenders."""
    k = len(CONTENDERS)
    steps = np.arange(1, errors.weight.shape[1] + 1)[:, None]  # errors k steps ahead overlap k - 1 steps: one in k is news
    with np.errstate(divide="ignore", invalid="ignore"):
        ess = np.where(errors.weight2 > 0, errors.weight**2 / errors.weight2, 0.0) / steps  # effective errors behind the sums
        second, fourth = (np.nan_to_num(m / errors.weight[..., None, None]) for m in (errors.second, errors.fourth))
    own, target, regime = levels(second, fourth, ess, errors.count / steps)
    own = own._replace(seen=np.minimum(own.seen, own.ess))  # the errors seen, as far as they still weigh
    by_own = own.seen >= warmup
    by_target = ~by_own & (target.seen >= warmup)
    by_regime = ~by_own & ~by_target & (regime.seen >= warmup)
    cell = by_own[..., None, None], by_target[..., None, None]
    shrink = (own.ess / (own.ess + warmup))[..., None, None]
    second = np.where(cell[0], shrink * own.second + (1 - shrink) * target.second, np.where(cell[1], target.second, regime.second))
    ready = by_own | by_target | by_regime
    # a cell of its own may go by its target's steps too: a lead over all of them is better evidence
    beats = ((by_own | by_target)[..., None] & _beats(target)) | (by_own[..., None] & _beats(own)) | (by_regime[..., None] & _beats(regime))
    mixed = np.stack([_weights(m[..., :k, :k], r) for m, r in zip(second, ready)])
    return mixed, served(mixed, second, beats, ready)


def levels(second: np.ndarray, fourth: np.ndarray, ess: np.ndarray, seen: np.ndarray) -> tuple[Level, Level, Level]:
    """The evidence of each (regime, step, target) from its mean error products, effective errors
    and errors' worth; of each target pooled over the steps; of each regime pooled over steps and
    targets (evidence-weighted means). As evidence of a target's steps, that of its best-backed
    step (the errors of one forecast's steps are nearly one error); of a regime's targets, their sum
    (targets go wild, or err, at different times)."""
    k = len(CONTENDERS)
    scale = np.maximum(np.trace(second[..., :k, :k], axis1=-2, axis2=-1) / k, 1e-150)[..., None, None]  # squared below
    own = Level(second / scale, fourth / (scale * scale), ess, seen)
    w = ess[..., None, None]

    def mean(m: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        return (w * m).sum(axis=axes, keepdims=True) / np.maximum(w.sum(axis=axes, keepdims=True), 1e-300)

    best_ess, best_seen = ess.max(axis=1, keepdims=True), seen.max(axis=1, keepdims=True)
    target = Level(mean(own.second, (1,)), mean(own.fourth, (1,)), best_ess, best_seen)
    regime = Level(
        mean(own.second, (1, 2)), mean(own.fourth, (1, 2)), best_ess.sum(axis=2, keepdims=True), best_seen.sum(axis=2, keepdims=True)
    )
    return own, target, regime


def _beats(level: Level) -> np.ndarray:
    """Which of persistence, the contenders and the combination (..., K + 1) had less squared error
    than persistence by ``SIGNIFICANT`` standard errors of the difference (persistence: always)."""
    second, fourth, ess = level.second, level.fourth, level.ess
    mse = np.diagonal(second, axis1=-2, axis2=-1)
    quart = np.diagonal(fourth, axis1=-2, axis2=-1)
    gain = mse[..., :1] - mse  # persistence's squared error less each one's: the mean difference
    var = quart[..., :1] - 2 * fourth[..., 0, :] + quart - gain * gain  # the difference's variance
    beats = (gain > 0) & (gain * np.sqrt(ess[..., None]) > SIGNIFICANT * np.sqrt(np.maximum(var, 0.0)))
    beats[..., PERSISTENCE] = True
    return beats


def served(mixed: np.ndarray, second: np.ndarray, beats: np.ndarray, ready: np.ndarray) -> np.ndarray:
    """The served weights (regimes, K, H, T): where ``ready``, of persistence and those of the
    contenders and the combination ``mixed`` that ``beats`` it, the one with the least squared
    error; the combination (the recurrent model alone) before."""
    k = len(CONTENDERS)
    mse = np.diagonal(second, axis1=-2, axis2=-1)  # (regimes, H, T, K + 1)
    best = np.where(beats, mse, np.inf).argmin(axis=-1)
    single = np.moveaxis(np.eye(k + 1)[best][..., :k], -1, 1)  # (regimes, K, H, T): one-hot, zero for the combination
    pick = (ready & (best != COMBINATION))[:, None]
    return np.where(pick, single, mixed)


def threshold(spread: np.ndarray, count: np.ndarray) -> np.ndarray:
    """The squared disagreement (H, targets) between the linear and the recurrent forecast past
    which a forecast is wild: ``WILD`` squared times its typical square, ``spread`` (a weighted sum
    of them, each clipped here, so that an upset does not widen what counts as calm) over
    ``count`` (the weight behind it); infinite where none were scored."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, WILD**2 * spread / count, np.inf)


def wild(disagreement: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """Which forecasts (B, H, targets) are wild, from the linear minus the recurrent forecast."""
    return disagreement * disagreement > limit


def _weights(moments: np.ndarray, ready: np.ndarray) -> np.ndarray:
    """Weights (contenders, H, targets) from the error moments (H, targets, K, K); the recurrent
    model alone where not ``ready`` (H, targets)."""
    h, t, k, _ = moments.shape
    m = moments.reshape(-1, k, k)
    scale = np.maximum(np.trace(m, axis1=1, axis2=2) / k, 1e-300)[:, None, None]
    m = m / scale  # every cell on its own scale: the tie-breaking ridge below is relative
    ws, losses = np.zeros((len(_SUPPORTS), len(m), k)), np.full((len(_SUPPORTS), len(m)), np.inf)
    for i, support in enumerate(_SUPPORTS):  # the least-error weights on each support; kept where none is negative
        sub = m[:, support][:, :, support] + 1e-9 * np.eye(len(support))
        u = np.linalg.solve(sub, np.ones((len(m), len(support), 1)))[:, :, 0]
        total = u.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ws[i][:, support] = u / total[:, None]
            losses[i] = np.where((ws[i] >= 0).all(axis=1) & (total > 0), 1.0 / total, np.inf)
    pick = losses.argmin(axis=0)  # the first of the least: the smallest support
    best = losses[pick, np.arange(len(m))]
    best_w = ws[pick, np.arange(len(m))]
    ready = ready.reshape(-1) & np.isfinite(best)
    out = np.zeros((len(m), k))
    out[:, RECURRENT] = 1.0
    out[ready] = best_w[ready]
    return out.T.reshape(k, h, t)


class Mixer:
    """A combination's weights (contenders, H, targets), prepared once per draw for forecasts of any
    batch: the weighted sum of the contenders that have some weight, as whole arrays (a contender
    of weight 1 at a cell, the others 0, is copied there exactly), so that serving costs a few
    array operations per contender at one stream as at thousands. A contender of weight 0 at a cell
    must not spoil it with an infinity: the rare cells that come out non-finite are summed again
    over only the contenders they weigh."""

    def __init__(self, w: np.ndarray) -> None:
        self.w = w
        self.used = [c for c in range(len(w)) if (w[c] != 0).any()]
        self.whole = next((c for c in self.used if (w[c] == 1.0).all()), None)  # one contender everywhere: a copy

    def __call__(
        self,
        persistence: np.ndarray,
        recurrent: np.ndarray,
        linear: np.ndarray | None,
        wild: tuple[tuple[np.ndarray, ...], np.ndarray] | None = None,
    ) -> np.ndarray:
        """The forecasts (B, H, targets) from ``persistence`` (B, targets) and the others' (B, H,
        targets; ``linear`` None: not fitted yet, persistence in its place); at the forecasts that
        ``wild`` names (the indices of a (B, H, targets) mask, as ``np.nonzero`` gives them, found
        once for every mixer), weighed by its weights (contenders, H, targets)."""
        held = persistence[:, None, :]
        sources = (held, recurrent, held if linear is None else linear)
        dtype = np.result_type(persistence, recurrent, *(() if linear is None else (linear,)))
        if self.whole is not None:
            out = np.array(np.broadcast_to(sources[self.whole], recurrent.shape), dtype=dtype)
        else:
            out = None
            with np.errstate(invalid="ignore"):
                for c in self.used:  # in contender order, as the cells that spoil are summed below
                    term = self.w[c] * sources[c]
                    out = term if out is None else np.add(out, term, out=out)
            out = np.asarray(out, dtype=dtype)
            if not np.isfinite(out).all():
                at = np.nonzero(~np.isfinite(out))
                out[at] = _weighed(self.w[:, at[1], at[2]], persistence, recurrent, linear, at)
        if wild is not None and len(wild[0][0]):
            at = wild[0]
            out[at] = _weighed(wild[1][:, at[1], at[2]], persistence, recurrent, linear, at)
        return out


def _weighed(
    w: np.ndarray, persistence: np.ndarray, recurrent: np.ndarray, linear: np.ndarray | None, at: tuple[np.ndarray, ...]
) -> np.ndarray:
    """The forecasts at ``at`` (indices into (B, H, targets)) weighed by ``w`` (contenders, len(at)),
    each contender only where it has weight."""
    held = persistence[at[0], at[2]]
    values = (held, recurrent[at], held if linear is None else linear[at])
    with np.errstate(invalid="ignore"):
        return sum(np.where(w[c] != 0, w[c] * values[c], 0.0) for c in range(len(values)))
