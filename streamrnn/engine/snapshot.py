"""What crosses to the trainer's process and back: a snapshot of the rings, and the verdict on the
challenger fitted on it, with the fit's report. Plain arrays and numbers, so that they pickle
cheaply and nothing of the serving engine travels."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class Snapshot:
    """Copies of the rings at one moment: per stream, values (n, C) float32 with NaN where missing."""

    streams: list[str]
    values: list[np.ndarray]
    ts: list[np.ndarray]
    holdout_fraction: float = 0.15
    counts: list[int] = field(default_factory=list)  # frames ever appended to each ring, at the snapshot
    held: np.ndarray | None = None  # (streams, C): the serving values held and running means, at the snapshot
    centre: np.ndarray | None = None
    linear: dict | None = None  # the linear contender's state (OnlineRidge.state), None before its first fit
    lookback: int = 0  # the linear contender's lookback; 0: it is off
    calendar: bool = False  # and whether it reads the time of day and of the week
    max_examples: int = 8192  # examples it learns from this snapshot at most
    recurrent: bool = True  # fit the recurrent model too; False: the linear contender alone

    @property
    def frames(self) -> int:
        return sum(len(v) for v in self.values)

    def split(self, i: int) -> int:
        """Frames of stream ``i`` before its held-out tail."""
        n = len(self.values[i])
        return n - max(1, int(round(n * self.holdout_fraction)))

    def __getstate__(self) -> dict:
        """Pickled with the streams' frames end to end in one array each for values and times: a
        pipe to the trainer then carries two large buffers, written with the GIL released, instead of
        two per stream pickled under it (thousands at 1,000 streams, stalling serving)."""
        state = dict(self.__dict__)
        state["lengths"] = np.array([len(v) for v in self.values], dtype=np.int64)
        state["values"] = np.concatenate(self.values) if self.values else np.zeros((0, 0), np.float32)
        state["ts"] = np.concatenate(self.ts) if self.ts else np.zeros(0)
        return state

    def __setstate__(self, state: dict) -> None:
        lengths = state.pop("lengths")
        cuts = np.cumsum(lengths)[:-1]
        for name in ("values", "ts"):
            state[name] = np.split(state[name], cuts) if len(lengths) else []
        self.__dict__.update(state)


@dataclass
class TrainReport:
    status: str = "failed"  # "ok" or "failed"
    error: str | None = None
    frames: int = 0
    epochs: int = 0
    steps: int = 0
    seconds: float = 0.0
    train_loss: float = float("nan")
    val_loss: float = float("nan")
    initial_val_loss: float = float("nan")
    history: list[float] = field(default_factory=list)
    calibration: list[float] = field(default_factory=list)  # mean shrink per step, 0 = persistence
    linear: dict = field(default_factory=dict)  # the linear contender's fit: examples, penalty, seconds, error

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Verdict:
    """What one retrain concluded, in plain arrays so that it can cross a process boundary.

    ``serve`` names the model to swap in ("challenger", or "persistence" when the champion fell
    behind it), None to keep the champion; ``state`` holds its weights and ``hidden`` its recurrent
    state at the end of the snapshot, (state_layers, layers, streams, hidden), streams in snapshot order.
    """

    outcome: str  # "promoted", "rejected" or "failed"; "linear" for a fit of the linear contender alone
    report: TrainReport
    serve: str | None = None
    state: dict[str, np.ndarray] | None = None
    hidden: np.ndarray | None = None
    champion_error: float = float("nan")
    challenger_error: float = float("nan")
    persistence_error: float = float("nan")
    linear: dict | None = None  # the linear contender's new state, whatever became of the recurrent fit


@dataclass
class RetrainResult:
    """What adopting a verdict did: its outcome, the errors it was judged by, the version it serves as."""

    outcome: str  # "promoted", "rejected" or "failed"
    report: TrainReport
    champion_error: float = float("nan")
    challenger_error: float = float("nan")
    version: int = 0
    extra: dict = field(default_factory=dict)
