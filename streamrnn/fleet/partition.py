"""One partition as a shard serves it: an engine and an intake of its own for the streams that
map to it, and where it is in the sensor stream. It is the unit that moves between shards: its
checkpoint holds everything (hidden states, rings, running means, evaluator, frames still open) so
that the next owner goes on exactly where it stood, from the message after ``seq``."""

from __future__ import annotations

import copy
import math
import time
from collections import OrderedDict

from streamrnn import __version__
from streamrnn.config import Settings
from streamrnn.daemon.checkpoint import check_layout, layout
from streamrnn.delivery import Delivery
from streamrnn.engine.engine import Engine
from streamrnn.engine.frame import Frame
from streamrnn.engine.model import StreamRNN
from streamrnn.intake.frames import Assembler
from streamrnn.intake.intake import Intake
from streamrnn.logs import RateLimited
from streamrnn.transport import jetstream

_QUIET = 5.0  # seconds without any message that tell a quiet partition from a stalled transport (an election)
_FRESH = 3.0  # seconds for which JetStream's word that nothing waits holds: a feed that stalls says nothing more


class Partition:
    def __init__(self, number: int, settings: Settings, model: StreamRNN, version: int, limiter: RateLimited) -> None:
        self.number, self.settings = number, settings
        self.engine = Engine(settings, copy.deepcopy(model), version)
        self.intake = Intake(settings, self.engine.channels, self.engine.forget, limiter)
        self.assembler = self.intake.assembler
        self.seq = 0  # the stream sequence of the last message taken
        self.saved = 0  # ... and of the last checkpoint's
        # when it was last checkpointed (monotonic): staggered, so that a shard's partitions are
        # checkpointed evenly over checkpoint.every, not all in one turn (a stall of them all)
        self.saved_at = time.monotonic() - settings.checkpoint.every * number / settings.shards.partitions
        self.arrival = time.time()  # when the last message taken reached JetStream
        self.behind = False  # more of its messages wait in JetStream: a replay, whose ticks close by event time only
        self.asked = math.nan  # the arrival after which a clock tick was last asked for

    def take(self, msg: Delivery) -> list[Frame]:
        """The frames the message closed (none for one refused or taken before), and those of the
        streams silent for ``frames.idle_close`` by the clock of the messages: JetStream's time
        of storing each, so a replay closes the very same ticks, and a transport that stalls
        (a leader being elected) makes no stream silent. A clock tick (:meth:`quiet`) is a
        message with no readings: only that time."""
        if msg.seq <= self.seq:
            return []
        self.seq, self.arrival, self.behind = msg.seq, msg.arrival, msg.behind
        frames = [] if msg.topic == jetstream.CLOCK else self.intake.ingest(msg, msg.arrival) or []
        for stream, tick in self.assembler.due(msg.arrival):
            frames += self.assembler.close(stream, tick)
        return frames

    def quiet(self, now: float, drained: float) -> bool:
        """Whether to store a clock tick in the partition's stream (:mod:`streamrnn.transport.jetstream`),
        whose coming back closes what waits: readings are in hand, and nothing arrived for
        ``frames.idle_close`` + ``_QUIET`` seconds while JetStream says nothing waits
        (``drained``: when it last said so, after the last message taken and within ``_FRESH``
        seconds: a feed cut off by a server's failure hears nothing, and a stall is not quiet).
        Once per silence. The wall clock only asks: the close is made by the tick, where it
        stands among the readings, so a replay makes it again."""
        if self.behind or self.asked == self.arrival or now - self.arrival < self.settings.frames.idle_close + _QUIET:
            return False
        if not self.arrival < drained or now - drained > _FRESH:
            return False
        self.asked = self.arrival  # asked, or nothing to ask for, until the next message
        return any(st.pending for st in self.assembler.streams.values())

    def state(self) -> dict:
        """The checkpoint: copies, so that another thread may encode it while the engine steps on.
        The linear contender is left out: every partition serves the fleet champion's."""
        return {
            "streamrnn": __version__,
            "partition": self.number,
            "partitions": self.settings.shards.partitions,
            "seq": self.seq,
            "arrival": self.arrival,
            "written": time.time(),
            "layout": layout(self.settings),
            "engine": {**self.engine.state(), "linear": None},  # the champion's: stored once, beside it
            "assembler": self.assembler.state(),
            "clocks": clocks(self.assembler),
        }

    def load(self, state: dict, seq: int) -> None:
        """Go on from a checkpoint's ``state``, after message ``seq`` (what comes next is replayed:
        the time the partition spent moving is not silence). Raises
        ValueError (or CheckpointMismatch) for one made for another partition, partition count or model."""
        if (state.get("partition"), state.get("partitions")) != (self.number, self.settings.shards.partitions):
            raise ValueError(f"checkpoint of partition {state.get('partition')} of {state.get('partitions')}")
        check_layout(state.get("layout", {}), layout(self.settings), f"partition-{self.number}")
        self.arrival = float(state["arrival"])
        self.engine.load_state(state["engine"], now=self.arrival)
        self.assembler.load_state(state["assembler"], self.arrival)
        if "clocks" in state:
            set_clocks(self.assembler, state["clocks"])
        self.seq = self.saved = seq


def clocks(a: Assembler) -> dict:
    """What an assembler's checkpoint leaves out, for a daemon's restart measures silence afresh,
    and a partition replayed on the clock of its messages needs as it was: each stream's silence
    and lateness clocks, and the streams yet to be named silent or stuck, in their order."""
    return {
        "streams": {name: (st.wall, st.late_since, st.late_ts) for name, st in a.streams.items()},
        "heard": list(a._heard),
        "open": list(a._open.items()),
    }


def set_clocks(a: Assembler, saved: dict) -> None:
    """Set an assembler loaded from a checkpoint's state to the clocks :func:`clocks` saved with it."""
    for name, (wall, since, ts) in saved["streams"].items():
        st = a.streams[name]
        st.wall, st.late_since, st.late_ts = float(wall), since, float(ts)
    a._heard = OrderedDict((name, a.streams[name]) for name in saved["heard"])
    a._open = OrderedDict((name, float(since)) for name, since in saved["open"])
    a._forget_at = min((st.wall + a.forget_after for name, st in a.streams.items() if name not in a._heard), default=math.inf)
