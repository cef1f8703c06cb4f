"""Hidden-state bank: one recurrent state and one set of held values per stream, stepped as a batch.

Streams map to rows of preallocated tensors. A step gathers the rows of the streams whose frame
closed, runs the model once over them, and writes the new state back, detached (inference mode):
``output, hidden = model(x, hidden); hidden = hidden.detach()`` without ever building a graph.
"""

from __future__ import annotations

import numpy as np
import torch

from streamrnn.engine.model import StreamRNN


class StreamCapError(RuntimeError):
    """A new stream would exceed ``streams.max_streams``."""


class HiddenBank:
    """Per-stream rows: hidden state (torch, on the model's device) and last observed values (numpy)."""

    def __init__(self, model: StreamRNN, channels: int, max_streams: int, idle_timeout: float) -> None:
        self.max_streams, self.idle_timeout, self.channels = max_streams, idle_timeout, channels
        self.rows: dict[str, int] = {}
        self.names: list[str | None] = []
        self._free: list[int] = []
        self.last_seen = np.zeros(0)
        self.held = np.zeros((0, channels))  # last observed value per channel, NaN if never seen
        self.centre = np.zeros((0, channels))  # running mean of the observed values, NaN if never seen
        self.alpha = model.spec.centre_alpha
        self.hidden = model.init_hidden(0)  # (state_layers, layers, rows, hidden)
        self._grow(min(16, max_streams))

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def capacity(self) -> int:
        return len(self.names)

    def _grow(self, capacity: int) -> None:
        extra = capacity - self.capacity
        self.names.extend([None] * extra)
        self._free.extend(range(capacity - 1, capacity - extra - 1, -1))
        self.last_seen = np.concatenate([self.last_seen, np.zeros(extra)])
        self.held = np.concatenate([self.held, np.full((extra, self.channels), np.nan)])
        self.centre = np.concatenate([self.centre, np.full((extra, self.channels), np.nan)])
        pad = self.hidden.new_zeros(*self.hidden.shape[:2], extra, self.hidden.shape[3])
        self.hidden = torch.cat([self.hidden, pad], dim=2)

    def row(self, stream: str, now: float) -> tuple[int, bool]:
        """The row of ``stream`` (created if new) and whether it is new; raises StreamCapError at the cap."""
        r = self.rows.get(stream)
        if r is not None:
            self.last_seen[r] = now
            return r, False
        if not self._free:
            if self.capacity >= self.max_streams:
                raise StreamCapError(f"stream {stream!r} refused: {self.max_streams} streams active (streams.max_streams)")
            self._grow(min(2 * self.capacity, self.max_streams))
        r = self._free.pop()
        self.rows[stream], self.names[r] = r, stream
        self.last_seen[r] = now
        self.held[r] = np.nan
        self.centre[r] = np.nan
        self.hidden[:, :, r] = 0.0
        return r, True

    def state(self) -> dict:
        """Copies of every row (the checkpoint's ``bank``)."""
        return {
            "rows": dict(self.rows),
            "names": list(self.names),
            "free": list(self._free),
            "last_seen": self.last_seen.copy(),
            "held": self.held.copy(),
            "centre": self.centre.copy(),
            "hidden": self.hidden.detach().cpu().numpy().copy(),
        }

    def load_state(self, st: dict, device: torch.device | str, now: float | None = None) -> None:
        """Go on from :meth:`state`, the states on ``device``; with ``now``, every stream counts as
        seen then (the downtime is not idleness). Raises ValueError where the parts do not fit."""
        self.check(st)
        hidden = torch.as_tensor(st["hidden"])
        self.rows, self.names, self._free = dict(st["rows"]), list(st["names"]), list(st["free"])
        self.last_seen, self.held, self.centre = st["last_seen"], st["held"], st["centre"]
        if now is not None:
            self.last_seen[:] = now
        self.hidden = hidden.to(device)

    def check(self, st: dict) -> None:
        """Raises ValueError where :meth:`state`'s parts do not fit together or these channels."""
        rows = len(st["names"])
        if np.shape(st["hidden"])[2] != rows or st["held"].shape != (rows, self.channels) or st["centre"].shape != (rows, self.channels):
            raise ValueError("checkpoint's hidden-state bank does not fit its own rows and channels")

    def idle(self, now: float) -> list[str]:
        """Streams not seen for ``idle_timeout`` seconds."""
        return [s for s, r in self.rows.items() if now - self.last_seen[r] > self.idle_timeout]

    def remove(self, stream: str) -> int:
        r = self.rows.pop(stream)
        self.names[r] = None
        self._free.append(r)
        return r

    def step(self, model: StreamRNN, rows: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hold the fresh values of ``values`` (B, C) for ``rows`` (distinct), move their running
        means, and step their states as one batch. Returns the deltas (B, H+1, targets), normalised (float32),
        and the values now held (B, C). Few operations, each on the whole batch: at one stream the
        step costs little more than the model."""
        fresh = np.isfinite(values)
        held = np.where(fresh, values, self.held.take(rows, axis=0))
        centre = ewm_update(self.centre.take(rows, axis=0), held, fresh, self.alpha)
        self.held[rows], self.centre[rows] = held, centre
        if len(rows) == 1:  # a view, stepped in place: no gather or scatter
            return model.serve(held, centre, fresh, self.hidden.narrow(2, int(rows[0]), 1)), held
        idx = torch.from_numpy(rows).to(self.hidden.device)
        state = self.hidden.index_select(2, idx)
        out = model.serve(held, centre, fresh, state)
        self.hidden.index_copy_(2, idx, state)
        return out, held

    @property
    def streams(self) -> list[str]:
        return list(self.rows)


def catch_up(
    model: StreamRNN, hidden: torch.Tensor, values: np.ndarray, held: np.ndarray | None, centre: np.ndarray | None, alpha: float
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """States (state_layers, layers, B, hidden) stepped over ``values`` (B, k, C), frames they
    missed, from the values held and running means of before them (B, C; None: nothing seen yet),
    as serving would have stepped them: in one pass of the model over the frames as a sequence.
    Returns the states, values held and means after them."""
    held_ = fill(values, held)
    centre_ = centres(values, alpha, centre, filled=held_)
    x = torch.from_numpy(np.array([held_, centre_, np.isfinite(values)], dtype=np.float32)).to(hidden.device)
    with torch.inference_mode():
        new = model.advance(x[0], x[1], x[2], hidden)
    return new, held_[:, -1], centre_[:, -1]


@torch.inference_mode()
def warm(model: StreamRNN, values: list[np.ndarray], frames: int) -> torch.Tensor:
    """The recurrent state of ``model`` after the last ``frames`` of each stream's ``values``, from a
    blank state. Streams run as batches of equal length. Returns the states in the order given."""
    device = next(model.buffers()).device
    out = model.init_hidden(len(values))
    groups: dict[int, list[int]] = {}
    for i, v in enumerate(values):
        groups.setdefault(min(len(v), frames), []).append(i)
    for n, idx in groups.items():
        if n == 0:
            continue
        vals = np.stack([values[i][-n:] for i in idx])  # (B, T, C)
        sel = torch.as_tensor(idx, device=device)
        out[:, :, sel] = catch_up(model, out.index_select(2, sel), vals, None, None, model.spec.centre_alpha)[0]
    return out


def ewm_update(centre: np.ndarray, held: np.ndarray, fresh: np.ndarray, alpha: float) -> np.ndarray:
    """One step of the running mean: moves toward the values observed in this frame (``fresh``),
    starts at the first one, holds otherwise. ``held`` is the last observed value, NaN if never."""
    start = np.where(np.isnan(centre), held, centre)
    return start + (alpha * fresh) * (held - start)


def fill(values: np.ndarray, held: np.ndarray | None = None) -> np.ndarray:
    """Sample-and-hold along time (axis -2 of (..., T, C)): each NaN takes the last finite value
    before it, or ``held`` (..., C), what was held before the first frame (NaN if not given)."""
    if held is not None:
        return fill(np.concatenate([held[..., None, :], values], axis=-2))[..., 1:, :]
    n = values.shape[-2]
    idx = np.where(np.isfinite(values), np.arange(n)[:, None], 0)
    np.maximum.accumulate(idx, axis=-2, out=idx)
    return np.take_along_axis(values, idx, axis=-2)


def centres(
    values: np.ndarray, alpha: float, centre: np.ndarray | None = None, held: np.ndarray | None = None, *, filled: np.ndarray | None = None
) -> np.ndarray:
    """The running mean after each frame (axis -2 of (..., T, C)), exactly as the bank keeps it while
    serving, from the ``centre`` and ``held`` values (..., C) of before the first frame (none
    seen if not given); a batch of streams is one loop over time. ``filled``: ``fill(values,
    held)``, where the caller has it already."""
    out = np.empty_like(values, dtype=np.float64)
    c = np.full(values.shape[:-2] + values.shape[-1:], np.nan) if centre is None else centre
    held_ = fill(values, held) if filled is None else filled
    fresh = np.isfinite(values)
    for t in range(values.shape[-2]):
        c = ewm_update(c, held_[..., t, :], fresh[..., t, :], alpha)
        out[..., t, :] = c
    return out
