"""One champion for a fleet of shards: fitted by one shard, served by every partition.

The shard that holds the trainer's lease (:mod:`streamrnn.fleet.fleet`) retrains as the daemon does,
in a child process, on one snapshot of the rings of all the partitions it holds: streams fall to
partitions by a hash of their id, so its share is a random sample of the fleet's streams, and a
fit costs one shard's share however large the fleet grows. A verdict that names a new model makes
it the fleet's champion, stored with its version in JetStream's object store; every shard serves it
in each of its partitions from then on, each stream's state warmed over its ring. A partition's
checkpoint carries the weights it served, so a partition that moves keeps its model until its new
shard serves the newer champion.

Why one trainer and not the challengers of every shard judged together: one fit on a sample of the
streams serves them all as well as it serves its sample (the streams of a fleet are of one kind,
or the model is shared in vain), and no judge has to gather every shard's held-out errors before a
verdict, nor wait for the slowest shard.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from streamrnn.config import Settings
from streamrnn.daemon import observe
from streamrnn.daemon.checkpoint import check_layout, layout
from streamrnn.daemon.cycle import said
from streamrnn.daemon.metrics import Metrics
from streamrnn.engine.adoption import unfit_weights
from streamrnn.engine.engine import Engine
from streamrnn.engine.model import StreamRNN
from streamrnn.engine.snapshot import Snapshot
from streamrnn.fleet.ownership import Crowned
from streamrnn.learning.retrainer import Retrainer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Champion:
    """The fleet's model: its version, weights (numpy arrays) and the linear contender fitted with it."""

    version: int
    weights: dict[str, np.ndarray]
    linear: dict | None = None

    def state(self, settings: Settings) -> dict:
        """What the object store keeps: the champion, and the layout of the engine it fits."""
        return {"version": self.version, "weights": self.weights, "linear": self.linear, "layout": layout(settings), "written": time.time()}

    @classmethod
    def from_state(cls, state: dict, settings: Settings) -> Champion:
        """Raises CheckpointMismatch for one made for another model or feature set, ValueError for one malformed."""
        check_layout(state.get("layout", {}), layout(settings), "champion")
        return cls(int(state["version"]), dict(state["weights"]), state.get("linear"))


def unfit(champion: Champion, model: StreamRNN) -> str | None:
    """Why ``champion`` cannot serve in place of ``model`` (weights that do not fit, or are not finite), or None."""
    problem = unfit_weights(champion.weights, model)
    return None if problem is None else f"its {problem}"


def accepted(item: Crowned, current: Champion, model: StreamRNN, settings: Settings) -> Champion | None:
    """The champion stored, where it is newer than ``current`` and fits ``model``; else None (one
    refused is logged: the fleet is misconfigured, or its store damaged)."""
    try:
        new = Champion.from_state(item.state, settings)
    except (KeyError, TypeError, ValueError) as e:  # another model or feature set
        log.error("champion refused: serving the one before", extra={"version": item.version, "error": str(e)})
        return None
    return fresh(new, current, model)


def fresh(new: Champion, current: Champion, model: StreamRNN) -> Champion | None:
    """``new``, where it is newer than ``current`` and fits ``model``; else None (one that does not fit is logged)."""
    problem = unfit(new, model)
    if problem is not None:
        log.error("champion refused: serving the one before", extra={"version": new.version, "error": problem})
        return None
    return new if new.version > current.version else None


def merged(snaps: list[Snapshot]) -> Snapshot:
    """The snapshots of several engines as one: their streams side by side, the first linear
    contender found (every partition serves the champion's)."""
    first = snaps[0]
    held = [s.held for s in snaps]
    return Snapshot(
        [x for s in snaps for x in s.streams],
        [x for s in snaps for x in s.values],
        [x for s in snaps for x in s.ts],
        first.holdout_fraction,
        [x for s in snaps for x in s.counts],
        np.concatenate(held) if all(h is not None for h in held) else None,
        np.concatenate([s.centre for s in snaps]) if all(h is not None for h in held) else None,
        linear=next((s.linear for s in snaps if s.linear is not None), None),
        lookback=first.lookback,
        calendar=first.calendar,
        max_examples=first.max_examples,
    )


class FleetTrainer:
    """The trainer's side of the fleet's champion: retrains on the partitions the shard holds while
    it holds the trainer's lease; a verdict that names a model is the next champion."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.retrainer = Retrainer(settings.trainer)
        self._last = time.monotonic()
        self._next = 0  # frames (over the partitions held) at which the next retrain is due

    def turn(self, training: bool, engines: list[Engine], champion: Champion) -> Champion | None:
        """One turn's share: the next champion once a retrain names one, else None. ``training``:
        the shard holds the trainer's lease; ``champion``: the one the fleet serves now."""
        done = self.retrainer.poll()
        if done is not None:
            return self._verdict(*done, champion)
        if self.retrainer.busy or not training or not engines or not any(e.retrain_ready for e in engines):
            return None
        t, frames = self.settings.trainer, sum(e.frames_seen for e in engines)
        if frames < self._next and (t.interval is None or time.monotonic() - self._last < t.interval):
            return None
        self._last = time.monotonic()
        self._next = frames + min(max(frames, 1), t.retrain_every)  # sooner while the rings fill, as the daemon
        snap = merged([e.snapshot() for e in engines])
        self.retrainer.start(snap, engines[0].spec, champion.weights, t.seed + champion.version + 1)
        self.metrics.retrain_running.set(1)
        log.info("fleet retrain started", extra={"streams": len(snap.streams), "frames": snap.frames, "champion": champion.version})
        return None

    def _verdict(self, snap: Snapshot, verdict, seconds: float, champion: Champion) -> Champion | None:
        observe.retrain(self.metrics, verdict, seconds, verdict.outcome)
        log.info("fleet retrain done", extra=said(verdict, verdict.outcome, seconds))
        if verdict.serve is None or verdict.state is None:
            return Champion(champion.version + 1, champion.weights, verdict.linear) if verdict.linear is not None else None
        return Champion(champion.version + 1, {k: np.asarray(v) for k, v in verdict.state.items()}, verdict.linear)

    def close(self) -> None:
        self.retrainer.close()


def serve(engine: Engine, champion: Champion, loaded: bool = False) -> None:
    """Have ``engine`` serve ``champion`` unless it serves that one or a newer one already: warmed
    afresh where its weights differ from those it serves; else only its linear contender and
    version. ``loaded``: the engine was just loaded from a partition's checkpoint, which leaves the
    champion's linear contender out; it serves its shard's champion whatever its version."""
    if engine.version >= champion.version and not loaded:
        return
    if any(not np.array_equal(v.detach().cpu().numpy(), champion.weights[k]) for k, v in engine.model.state_dict().items()):
        model = StreamRNN(engine.spec)
        model.load_state_dict({k: torch.as_tensor(v) for k, v in champion.weights.items()})
        engine.serve(model, champion.version)
    engine.version = champion.version
    if champion.linear is not None:
        engine.adopt_linear(champion.linear)
