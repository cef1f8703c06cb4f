"""The linear contender's form outside the process that serves it: plain arrays and numbers
(:func:`state`) that cross to the trainer and back and go into checkpoints, and the ridge they
describe, every part checked on the way back in (:func:`from_state`): a checkpoint or a trainer's
reply is not trusted to fit."""

from __future__ import annotations

import numpy as np

from streamrnn.engine.linear import OnlineRidge


def state(ridge: OnlineRidge) -> dict:
    """Plain arrays and numbers: what crosses to the trainer and back, and into checkpoints."""
    held = ridge.newest
    f, o = ridge.features, ridge.outputs
    return {
        "shape": np.array([ridge.channels, ridge.horizon, ridge.lookback, ridge.refit]),
        "targets": ridge.targets.copy(),
        "calendar": ridge.calendar,
        "mean": ridge.mean.copy(),
        "std": ridge.std.copy(),
        "decay": ridge.decay,
        "recent": ridge.recent,
        "gram": ridge.gram.copy(),
        "cross": ridge.cross.copy(),
        "count": ridge.count,
        "weights": ridge.weights.copy(),
        "held_x": np.stack([a for a, _ in held]) if held else np.zeros((0, f)),
        "held_y": np.stack([b for _, b in held]) if held else np.zeros((0, o)),
        "learnt": ridge.learnt,
        "penalty": ridge.penalty,
        "absorbed": dict(ridge.absorbed),
        "solves": ridge.solves,
        "factors": None if ridge.factors is None else [a.copy() for a in ridge.factors],  # [] to serve whole
    }


def from_state(st: dict) -> OnlineRidge:
    """The ridge :func:`state` describes; raises ValueError where its parts do not fit together."""
    channels, horizon, lookback, refit = (int(v) for v in st["shape"])
    r = OnlineRidge(
        channels,
        [int(t) for t in st["targets"]],
        horizon,
        lookback,
        st["mean"],
        st["std"],
        refit=refit,
        recent=int(st["recent"]),
        calendar=bool(st.get("calendar", False)),
    )
    f, o = r.features, r.outputs
    shapes = {"gram": (f, f), "cross": (f, o), "weights": (f, o)}
    for name, want in shapes.items():
        if np.shape(st[name]) != want:
            raise ValueError(f"linear state {name} has shape {np.shape(st[name])}, wants {want}")
    if np.shape(st["held_x"])[1:] != (f,) or np.shape(st["held_y"])[1:] != (o,) or len(st["held_x"]) != len(st["held_y"]):
        raise ValueError("linear state's recent examples do not fit its features and outputs")
    if not all(np.isfinite(st[name]).all() for name in ("gram", "cross", "weights", "mean", "std")):
        raise ValueError("linear state is not finite")
    r.decay, r.count, r.learnt, r.penalty = float(st["decay"]), float(st["count"]), int(st["learnt"]), float(st["penalty"])
    r.gram, r.cross, r.weights = np.array(st["gram"], float), np.array(st["cross"], float), np.array(st["weights"], float)
    r.newest = list(zip(np.asarray(st["held_x"], float), np.asarray(st["held_y"], float)))
    r.absorbed = {str(k): int(v) for k, v in st["absorbed"].items()}
    r.solves = int(st["solves"])
    factors = st.get("factors")  # older states: drawn when first served
    if factors is not None and len(factors) == 0:
        r.factors = ()
    elif factors is not None and len(factors) == 2:
        left, right = (np.asarray(a, float) for a in factors)
        if (
            left.ndim == right.ndim == 2
            and left.shape[0] == right.shape[1] == o
            and left.shape[1] == right.shape[0]
            and np.isfinite(left).all()
            and np.isfinite(right).all()
        ):
            r.factors = (left, right)
    return r
