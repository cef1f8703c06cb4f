"""A verdict's model on its way to serving: its hidden states caught up over the frames that came
since its snapshot, a few at a time, while the model before it serves.

Each stream of the snapshot still served starts from the state the model reached at the end of the
snapshot, with the values held and running means of then. A stream evicted and back since (a new
ring, its frames not the snapshot's), or whose ring has turned over, is cold: warmed over its recent
frames when the model is swapped in.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

from streamrnn.engine.bank import HiddenBank, catch_up, warm
from streamrnn.engine.model import StreamRNN
from streamrnn.engine.ring import Ring
from streamrnn.engine.snapshot import Snapshot, Verdict


class Adoption:
    """One verdict's model and its states by bank row, as of the frames of each stream ``reached``."""

    def __init__(self, model: StreamRNN, snap: Snapshot, hidden: torch.Tensor, bank: HiddenBank, rings: dict[int, Ring]) -> None:
        self.model, self.bank, self.rings = model, bank, rings
        device = bank.hidden.device
        rows, idx = [], []
        self.reached: dict[str, tuple[Ring, int]] = {}  # stream -> its ring, and the frames of it stepped over
        for i, stream in enumerate(snap.streams if snap.held is not None else ()):  # without held values and means: all cold
            row = bank.rows.get(stream)
            ring, count = (rings[row], snap.counts[i]) if row is not None else (None, 0)
            if ring is not None and 0 < count <= ring.count < count + ring.size and ring.ts[(count - 1) % ring.size] == snap.ts[i][-1]:
                rows.append(row)
                idx.append(i)
                self.reached[stream] = (ring, count)
        cap, c = bank.capacity, bank.held.shape[1]
        self.hidden = model.init_hidden(cap)  # (state_layers, layers, rows, hidden) by bank row
        self.held, self.centre = np.full((cap, c), np.nan), np.full((cap, c), np.nan)  # the values held and running means
        if rows:
            self.hidden[:, :, torch.as_tensor(rows, device=device)] = hidden[:, :, idx].to(device)
            self.held[rows], self.centre[rows] = snap.held[idx], snap.centre[idx]
        self.queue: deque[str] = deque()  # this round's streams still behind, in turn

    def step(self, budget: int | None = None) -> bool:
        """Step the states over up to ``budget`` of the frames they missed (stream-frames; all if
        None), as serving would have stepped them; True once every stream is level.

        In rounds: a round starts by finding the streams behind, then steps each over all the frames
        it has missed, a budget's worth of them a turn (few streams over many frames: one pass of the
        model over a sequence, and little Python per frame). A round that fits in one budget levels
        every stream."""
        todo: list[tuple[int, str, int, int]] = []  # (row, stream, frames to step, frames behind)
        if budget is None or not self.queue:
            behind = [(stream, *lag) for stream in list(self.reached) if (lag := self._lag(stream))[1]]
            if budget is None or sum(k for _, _, k in behind) <= budget:
                self._advance([(row, stream, k, k) for stream, row, k in behind])
                return True
            self.queue.extend(stream for stream, _, _ in behind)
        left = budget
        while self.queue and left:
            row, k = self._lag(self.queue[0])
            n = min(k, left)
            if n:
                todo.append((row, self.queue[0], n, k))
                left -= n
            if n == k:
                self.queue.popleft()
        self._advance(todo)
        return False

    def _lag(self, stream: str) -> tuple[int, int]:
        """The bank row of a stream being caught up, and the frames it is behind (0 for one no
        longer followed: evicted since, or its ring turned over, so it is warmed at the swap)."""
        ring, count = self.reached.get(stream, (None, 0))
        row = self.bank.rows.get(stream)
        if ring is None or row is None or self.rings.get(row) is not ring or ring.count - count > ring.size:
            self.reached.pop(stream, None)
            return -1, 0
        return row, ring.count - count

    def _advance(self, todo: list[tuple[int, str, int, int]]) -> None:
        """Step the states over the oldest ``n`` of the ``k`` frames each stream missed, the streams
        with as many frames as one batch."""
        groups: dict[int, list[tuple[int, str, int, int]]] = {}
        for t in todo:
            groups.setdefault(t[2], []).append(t)
        for n, members in groups.items():
            rows = np.array([row for row, _, _, _ in members])
            at = torch.as_tensor(rows, device=self.hidden.device)
            values = np.stack([self.rings[row].last(k)[1][:n] for row, _, _, k in members])  # (B, n, C), oldest first
            self.hidden[:, :, at], self.held[rows], self.centre[rows] = catch_up(
                self.model, self.hidden[:, :, at], values, self.held[rows], self.centre[rows], self.bank.alpha
            )
            for _, stream, _, _ in members:
                ring, count = self.reached[stream]
                self.reached[stream] = (ring, count + n)

    def serving_hidden(self, rewarm: int) -> torch.Tensor:
        """The bank's states for the model once it serves: those caught up, and the cold streams'
        warmed over their last ``rewarm`` frames."""
        bank = self.bank
        hidden = self.model.init_hidden(bank.capacity)
        kept = torch.as_tensor([bank.rows[stream] for stream in self.reached], dtype=torch.long, device=hidden.device)
        hidden[:, :, kept] = self.hidden[:, :, kept]
        cold = [row for stream, row in bank.rows.items() if stream not in self.reached]
        if cold:
            recent = [self.rings[row].last(rewarm)[1] for row in cold]
            hidden[:, :, torch.as_tensor(cold, device=hidden.device)] = warm(self.model, recent, rewarm)
        return hidden


def checked(verdict: Verdict, model: StreamRNN, bank: HiddenBank, snap: Snapshot) -> Verdict:
    """The verdict, or a failed one where the model it names cannot serve in place of ``model``
    (weights or states that do not fit, or are not finite): it comes from another process, and a bug
    or a fault there must cost one retrain, never the serving model."""
    problem = _unfit(verdict, model, bank, snap)
    if problem is None:
        return verdict
    verdict.report.status, verdict.report.error = "failed", problem
    errors = {k: getattr(verdict, k) for k in ("champion_error", "challenger_error", "persistence_error")}
    return Verdict("failed", verdict.report, **errors, linear=verdict.linear)


def _unfit(verdict: Verdict, model: StreamRNN, bank: HiddenBank, snap: Snapshot) -> str | None:
    """Why the model a verdict names cannot be served, or None. It comes from another process:
    a bug or a fault there must cost one retrain, never the serving model."""
    if verdict.serve is None:
        return None
    if verdict.state is None or verdict.hidden is None:
        return f"verdict names {verdict.serve} but carries no weights or states"
    problem = unfit_weights(verdict.state, model)
    if problem is not None:
        return f"verdict's {problem}"
    h = bank.hidden
    shape = (h.shape[0], h.shape[1], len(snap.streams), h.shape[3])
    if tuple(np.shape(verdict.hidden)) != shape or not np.isfinite(verdict.hidden).all():
        return f"verdict's hidden states are not finite or not of shape {shape}"
    return None


def unfit_weights(weights: dict[str, np.ndarray], model: StreamRNN) -> str | None:
    """Why ``weights`` cannot replace ``model``'s (another shape, or not finite), or None: they come
    from another process (a retrain, a fleet's champion), where a fault must never reach serving."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(np.shape(v)) for k, v in weights.items()}
    if got != want:
        return f"weights do not fit the model: {sorted(set(got.items()) ^ set(want.items()))[:4]}"
    bad = [k for k, v in weights.items() if not np.isfinite(v).all()]
    return f"weights are not finite: {bad[:4]}" if bad else None
