"""The daemon's intake: broker deliveries in, closed frames out. Each message is parsed into
readings and assembled into frames on the period grid; what is refused is counted by reason (in
plain counts of its own, which the daemon carries into its metrics) and said at a bounded rate, and
a bug in handling one message costs that message, never the daemon."""

from __future__ import annotations

import logging
from collections import Counter

from streamrnn.config import Settings
from streamrnn.delivery import Delivery
from streamrnn.engine.frame import Frame
from streamrnn.intake.frames import Assembler
from streamrnn.intake.payload import REASONS, Parser, Rejected
from streamrnn.logs import RateLimited

log = logging.getLogger(__name__)

REFUSALS = (*REASONS, "retained", "internal")  # why a message is refused

# counts of the assembler's and the engine's that are worth a (rate-limited) log line as they grow
SAID = (
    ("assembler", "overflow", "readings refused: a stream holds frames.max_pending readings for ticks still open"),
    ("assembler", "resynced", "streams restarted on their new clock: every reading late for frames.resync_after"),
    ("assembler", "stuck", "ticks closed while their stream kept sending: none closed for frames.max_open"),
    ("engine", "refused", "frames refused: streams.max_streams streams have a state"),
)


class Intake:
    """Parser and assembler of one daemon, with the counts and log lines of what they refuse:
    ``refused`` by reason (:data:`REFUSALS`), the assembler's ``counts``."""

    def __init__(self, settings: Settings, channels: tuple[str, ...], forget, limiter: RateLimited) -> None:
        """``forget(stream)``: the engine drops a stream's state (its clock restarted, or it was displaced)."""
        s, m = settings, settings.mqtt
        self.settings, self.limiter = settings, limiter
        self.refused: Counter[str] = Counter()
        self.parser = Parser(
            channels, m.sensor_topic, m.frame_topic, m.max_payload, s.frames.max_abs, s.frames.max_future, s.streams.allowed()
        )
        f, st = s.frames, s.streams
        self.assembler = Assembler(
            len(channels),
            s.features.period,
            s.lateness,
            s.max_hold,
            f.idle_close,
            st.max_streams,
            st.idle_timeout,
            max_pending=s.max_pending,
            max_open=s.max_open,
            probation=st.probation,
            resync_after=s.resync_after,
            on_drop=forget,
        )
        self._said: dict[str, int] = {}

    def ingest(self, msg: Delivery, wall: float) -> list[Frame] | None:
        """The frames a message closed; None if it was refused."""
        if msg.retain and not self.settings.mqtt.accept_retained:
            why = "a retained message is the broker's last value, replayed at subscribe: old news (mqtt.accept_retained)"
            self.refuse("retained", msg, why)
            return None
        try:
            frames: list[Frame] = []
            for reading in self.parser.parse(msg.topic, msg.payload, msg.arrival):
                frames += self.assembler.add(reading, wall)
            return frames
        except Rejected as e:
            self.refuse(e.reason, msg, str(e))
        except Exception as e:  # a bug must cost one message, never the daemon
            self.refuse("internal", msg, f"{type(e).__name__}: {e}", exc_info=True)
        return None

    def refuse(self, reason: str, msg: Delivery, detail: str, exc_info: bool = False) -> None:
        self.refused[reason] += 1
        level = logging.ERROR if exc_info else logging.WARNING
        self.limiter.log(log, level, reason, "message refused", exc_info=exc_info, reason=reason, detail=detail, topic=msg.topic[:200])

    def say(self, engine_counts: Counter[str]) -> None:
        """Say what grew of the counts worth a line."""
        for source, key, what in SAID:
            total = (self.assembler.counts if source == "assembler" else engine_counts)[key]
            if total > self._said.get(key, 0):
                self.limiter.log(log, logging.WARNING, key, what, total=total)
                self._said[key] = total
