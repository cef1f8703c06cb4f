"""The linear contender as the engine serves it: its weights folded onto the window of held values
(the change from the newest row folds into that row's weights), through the fewest output
directions that carry almost all of each output's forecast variance (reduced-rank regression: the
outputs, H steps of every target, move together, so serving costs the rank, not the outputs)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from streamrnn.linear import OnlineRidge

RANK_LOSS = 1e-3  # of each output's forecast variance (on average), what serving may leave out to serve fewer output directions


def serving(ridge: OnlineRidge) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]:
    """The weights on a window of normalised held values, oldest row first, flattened, as two
    factors: (lookback x channels, rank) and (rank, outputs), or the first alone (None) where
    that is cheaper; a bias (outputs,); and the weights on the :func:`calendar` features
    (calendar features, outputs), None without them; float32, each output scaled to engineering units.
    The same forecasts as :meth:`predict` on :meth:`encode`'s features, without forming them
    (the change from the newest row folds into that row's weights), but for what lies outside
    the fewest output directions that carry all but ``RANK_LOSS`` of each output's variance on
    the examples learnt (reduced-rank regression: the outputs, H steps of every target, move
    together, and serving costs the rank, not the outputs)."""
    lb, c = ridge.lookback, ridge.channels
    w = ridge.weights
    factors = ridge.factors if ridge.factors is not None else directions(ridge) or ()
    rows = np.zeros((lb, c, ridge.outputs))
    rows[:-1] = w[: (lb - 1) * c].reshape(lb - 1, c, -1)
    rows[-1] = w[(lb - 1) * c : lb * c] - rows[:-1].sum(axis=0)
    scale = np.tile(ridge.std[ridge.targets], ridge.horizon)  # outputs are (step, target), target fastest
    full = rows.reshape(lb * c, -1)
    bias = (w[-1] * scale).astype(np.float32)
    when = (w[lb * c : ridge.features - 1] * scale).astype(np.float32) if ridge.calendar else None  # the calendar's, before the bias
    if not factors:
        return (full * scale).astype(np.float32), None, bias, when
    return (full @ factors[0]).astype(np.float32), (factors[1] * scale).astype(np.float32), bias, when


def directions(ridge: OnlineRidge) -> tuple[np.ndarray, np.ndarray] | None:
    """The fewest output directions that carry all but ``RANK_LOSS`` of every output's forecast
    variance on the examples learnt (each output on its own scale, so that a step-1 change
    counts as much as a step-H one), as the factors (outputs, rank), (rank, outputs) of the
    projection onto them; None where so many that two factors cost more than one."""
    f = ridge.features - 1  # the bias is served whole
    w, gram = ridge.weights[:f], ridge.gram[:f, :f]
    if ridge._held:
        x = np.stack([a[:f] for a, _ in ridge._held])
        gram = gram + x.T @ x
    cov = w.T @ gram @ w  # the forecasts' second moments (outputs, outputs)
    d = np.sqrt(np.clip(np.diagonal(cov), 0.0, None))
    if not (d > 0).all() or not np.isfinite(cov).all():
        return None
    energy, vectors = np.linalg.eigh(cov / d[:, None] / d[None, :])  # ascending
    kept = np.cumsum(np.clip(energy, 0.0, None)[::-1])
    rank = int(np.searchsorted(kept, (1.0 - RANK_LOSS) * kept[-1])) + 1
    if rank * (f + ridge.outputs) >= f * ridge.outputs:
        return None
    v = vectors[:, ::-1][:, :rank]
    return v / d[:, None], v.T * d[None, :]  # outputs scaled to one, projected, scaled back
