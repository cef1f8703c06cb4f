"""One partition as a shard serves it: an engine and an intake of its own for the streams that
map to it, and where it is in the sensor stream. It is the unit that moves between shards: its
checkpoint holds everything (hidden states, rings, running means, evaluator, frames still open) so
that the next owner goes on exactly where it stood, from the message after ``seq``."""

from __future__ import annotations

import copy
import time

from streamrnn import __version__
from streamrnn.checkpoint import check_layout, layout
from streamrnn.config import Settings
from streamrnn.engine import Engine
from streamrnn.frames import Frame
from streamrnn.intake import Intake
from streamrnn.logs import RateLimited
from streamrnn.metrics import Metrics
from streamrnn.model import StreamRNN
from streamrnn.transport import Delivery


class Partition:
    def __init__(self, number: int, settings: Settings, model: StreamRNN, version: int, metrics: Metrics, limiter: RateLimited) -> None:
        self.number, self.settings = number, settings
        self.engine = Engine(settings, copy.deepcopy(model), version)
        self.intake = Intake(settings, self.engine.channels, self.engine.forget, metrics, limiter)
        self.assembler = self.intake.assembler
        self.seq = 0  # the stream sequence of the last message taken
        self.saved = 0  # ... and of the last checkpoint's
        self.arrival = time.time()  # when the last message taken reached JetStream: the clock of a replay
        self.behind = False  # more of its messages wait in JetStream: replaying, silence measured on their clock

    def take(self, msg: Delivery) -> list[Frame]:
        """The frames the message closed (none for one refused or taken before)."""
        if msg.seq <= self.seq:
            return []
        self.seq, self.arrival, self.behind = msg.seq, msg.arrival, msg.behind
        return self.intake.ingest(msg, msg.arrival) or []

    def state(self) -> dict:
        """The checkpoint: copies, so that another thread may encode it while the engine steps on."""
        return {
            "streamrnn": __version__,
            "partition": self.number,
            "partitions": self.settings.shards.partitions,
            "seq": self.seq,
            "arrival": self.arrival,
            "written": time.time(),
            "layout": layout(self.settings),
            "engine": self.engine.state(),
            "assembler": self.assembler.state(),
        }

    def load(self, state: dict, seq: int) -> None:
        """Go on from a checkpoint's ``state``, after message ``seq``, on the clock of the messages
        (what comes next is replayed: the time the partition spent moving is not silence). Raises
        ValueError (or CheckpointMismatch) for one made for another partition, partition count or model."""
        if (state.get("partition"), state.get("partitions")) != (self.number, self.settings.shards.partitions):
            raise ValueError(f"checkpoint of partition {state.get('partition')} of {state.get('partitions')}")
        check_layout(state.get("layout", {}), layout(self.settings), f"partition-{self.number}")
        self.arrival = float(state["arrival"])
        self.engine.load_state(state["engine"], now=self.arrival)
        self.assembler.load_state(state["assembler"], self.arrival)
        self.seq = self.saved = seq
