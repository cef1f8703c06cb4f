"""The linear contender as the engine serves it: its weights folded onto the window of held values
(the change from the newest row folds into that row's weights), through the fewest output
directions that carry almost all of each output's forecast variance (reduced-rank regression: the
outputs, H steps of every target, move together, so serving costs the rank, not the outputs)."""

from __future__ import annotations

import numpy as np

RANK_LOSS = 1e-3  # of each output's forecast variance (on average), what serving may leave out to serve fewer output directions


def serving(
    weights: np.ndarray, factors: tuple[np.ndarray, ...], lookback: int, channels: int, scale: np.ndarray, calendar: bool
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]:
    """A ridge's ``weights`` (features, outputs: the window's changes from its newest row, the
    newest row's level, the calendar's when ``calendar``, the bias last) as served on a window of
    normalised held values, oldest row first, flattened: as two factors, (lookback x channels,
    rank) and (rank, outputs), through the output directions ``factors`` (:func:`directions`), or
    as the first alone (None) where ``factors`` is empty; a bias (outputs,); and the weights on the
    calendar features, None without them; float32, each output scaled by ``scale`` to engineering
    units. The same forecasts as the ridge's own on its features, without forming them (the change
    from the newest row folds into that row's weights), but for what lies outside the directions."""
    lb, c = lookback, channels
    w = weights
    rows = np.zeros((lb, c, w.shape[1]))
    rows[:-1] = w[: (lb - 1) * c].reshape(lb - 1, c, -1)
    rows[-1] = w[(lb - 1) * c : lb * c] - rows[:-1].sum(axis=0)
    full = rows.reshape(lb * c, -1)
    bias = (w[-1] * scale).astype(np.float32)
    when = (w[lb * c : len(w) - 1] * scale).astype(np.float32) if calendar else None  # the calendar's, before the bias
    if not factors:
        return (full * scale).astype(np.float32), None, bias, when
    return (full @ factors[0]).astype(np.float32), (factors[1] * scale).astype(np.float32), bias, when


def directions(weights: np.ndarray, gram: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The fewest output directions that carry all but ``RANK_LOSS`` of every output's forecast
    variance on the examples whose Gram matrix is ``gram`` (each output on its own scale, so that
    a step-1 change counts as much as a step-H one), for ``weights`` (features, outputs) without
    the bias, as the factors (outputs, rank), (rank, outputs) of the projection onto them; None
    where so many that two factors cost more than one."""
    w, (f, outputs) = weights, weights.shape
    cov = w.T @ gram @ w  # the forecasts' second moments (outputs, outputs)
    d = np.sqrt(np.clip(np.diagonal(cov), 0.0, None))
    if not (d > 0).all() or not np.isfinite(cov).all():
        return None
    energy, vectors = np.linalg.eigh(cov / d[:, None] / d[None, :])  # ascending
    kept = np.cumsum(np.clip(energy, 0.0, None)[::-1])
    rank = int(np.searchsorted(kept, (1.0 - RANK_LOSS) * kept[-1])) + 1
    if rank * (f + outputs) >= f * outputs:
        return None
    v = vectors[:, ::-1][:, :rank]
    return v / d[:, None], v.T * d[None, :]  # outputs scaled to one, projected, scaled back
