"""The daemon: wiring and lifecycle. MQTT message -> payload -> frame -> engine step -> forecast -> MQTT.

One engine thread owns the engine and runs the loop below; the MQTT client runs in a process of its
own, and a thread of the daemon's fills the inbox with what it parsed; the trainer runs in a child
process and its verdict is adopted between two steps. SIGTERM, SIGHUP or SIGINT closes intake,
finishes the frames in hand, publishes them, says ``offline`` and returns 0.

With ``checkpoint.dir`` set, nothing acknowledged is lost (:mod:`streamrnn.daemon.durability`): a start
restores the newest sound checkpoint, replays the journal after it, then takes what the broker kept
for its session.
"""

from __future__ import annotations

import gc
import logging
import time

import numpy as np
import torch
from prometheus_client import CollectorRegistry

from streamrnn import __version__
from streamrnn.config import ConfigError, MqttSettings, Settings
from streamrnn.daemon import journal, observe
from streamrnn.daemon.cycle import Cycle
from streamrnn.daemon.durability import Durability
from streamrnn.daemon.metrics import Metrics
from streamrnn.daemon.service import BATCH, Service
from streamrnn.delivery import Delivery
from streamrnn.engine import forecast
from streamrnn.engine.engine import Engine
from streamrnn.engine.frame import Frame
from streamrnn.engine.model import StreamRNN
from streamrnn.intake.intake import Intake
from streamrnn.intake.payload import stream_key, subscription
from streamrnn.logs import RateLimited
from streamrnn.transport.inbox import FairInbox
from streamrnn.transport.mqtt.process import LinkProcess

log = logging.getLogger(__name__)

_SERVE_AFTER = 0.005  # seconds a closed frame waits at most for the messages behind it before it is served
# messages taken from the inbox at a time, more as the turn goes on: a turn that serves early puts
# back what it took and did not use, which cost a quarter of a behind daemon's time at 10,000 a take
_CHUNK = 256


class Daemon(Service):
    def __init__(
        self, settings: Settings, model: StreamRNN | None = None, version: int = 0, registry: CollectorRegistry | None = None
    ) -> None:
        s = settings
        self.engine = Engine(settings, model, version)
        super().__init__(settings, _metrics(s, self.engine, registry or CollectorRegistry()))
        m = s.mqtt
        templates = [m.sensor_topic] + ([m.frame_topic] if m.frame_topic else [])
        self.inbox = FairInbox(m.queue_size, stream_key(templates))  # round-robin over the streams
        subs = [subscription(t) for t in templates]
        self.link = _transport(m, subs, self.inbox, s.daemon.log_format)
        self._per_stream = 2 * len(s.channels)  # messages of a stream a turn takes: a frame's sensors, twice
        self.cycle = Cycle(s, self.engine, self.metrics) if s.trainer.enabled else None
        self._rejects = RateLimited(burst=5, per=60.0)
        self.intake = Intake(s, self.engine.channels, self.engine.forget, self._rejects)
        self.assembler, self.parser = self.intake.assembler, self.intake.parser
        self.durability = Durability(s, self.metrics, self.link.ack_many, self._rejects) if s.checkpoint.dir is not None else None
        self.forecast_topic = m.forecast_topic
        self.skill: dict[str, float | None] = {}

    # -- lifecycle ------------------------------------------------------------------------
    def run(self) -> int:
        self._start()
        log.info(
            "starting",
            extra={
                "version": __version__,
                "device": str(self.engine.device),
                "broker": self.settings.mqtt.url,
                "metrics_port": self.http.port if self.http else None,
            },
        )
        if self.durability is not None:  # before connecting: the forecasts it makes wait in the client's queue
            self.durability.restore(
                self.engine, self.assembler, lambda msg: self.intake.ingest(msg, msg.arrival), self._serve, self._replaying
            )
        # what the start made (torch, the model, settings, restored state) lives as long as the
        # process: out of the collector's sight, a full collection no longer walks it
        gc.freeze()
        self.link.start()
        self.notify.ready(f"serving; connecting to {self.settings.mqtt.url}")
        try:
            while not self.stopping.is_set():
                self.turn(0.05)
        finally:
            code = self._shutdown()
        return code

    def _shutdown(self) -> int:
        deadline = time.monotonic() + self.settings.daemon.grace
        self.notify.stopping()
        if self.http:
            self.http.beat(False)  # unready at once: no new traffic, please
        self.link.close_intake()
        while not self.inbox.empty() and time.monotonic() < deadline:
            self.turn(0.0)  # what was received
        if self.cycle:
            self.cycle.close()
        if self.engine.catch_up():  # a verdict's model still catching up serves, and is checkpointed
            self.metrics.version.set(self.engine.version)
        if self.durability is not None:
            # the readings in hand go into the checkpoint, the rest wait at the broker: the next
            # start goes on exactly where this one stopped
            self.durability.checkpoint(self.engine, self.assembler, wait=True)
            self.durability.close(max(0.1, deadline - time.monotonic()))
        else:
            self._serve(self.assembler.flush())  # the frames still waiting for late readings
        flushed = self.link.stop(max(0.0, deadline - time.monotonic()))
        if not flushed:
            log.warning("grace period over with forecasts unpublished", extra={"grace": self.settings.daemon.grace})
        if self.http:
            self.http.close()
        self.notify.close()
        log.info("stopped", extra={"frames": self.engine.frames_seen, "model_version": self.engine.version})
        return 0

    # -- the loop -------------------------------------------------------------------------
    def turn(self, wait: float) -> int:
        """One pass: take what arrived, assemble, step, publish, then housekeeping. Returns messages taken."""
        frames: list[Frame] = []
        closed: list[float] = []  # when each frame closed (perf_counter)
        taken = self._take(wait, frames, closed)
        # silence is measured on the arrival clock: with messages still waiting in the inbox we
        # only know it up to the earliest of them, and a stream whose next reading sits in that
        # backlog has not gone quiet
        wall = time.time()
        waiting = self.inbox.oldest()
        if waiting is not None:
            wall = min(wall, waiting)
        log_ = self.durability.journal if self.durability is not None else None
        for stream, last in self.assembler.due(wall):
            if log_ is not None:
                log_.close_tick(stream, last, wall)
            got = self.assembler.close(stream, last)
            frames += got
            closed += [time.perf_counter()] * len(got)
        if taken:
            self.metrics.received.inc(taken)
        if frames:
            self._serve(frames, closed)
        self._housekeeping()
        return taken

    def _take(self, wait: float, frames: list[Frame], closed: list[float]) -> int:
        """Take what arrived into the frames, until 5 ms after the first of them closed (the rest
        waits for the next turn); adds each frame and when it closed. Returns messages taken."""
        log_ = self.durability.journal if self.durability is not None else None
        # a stream steps one frame a turn: the rest of its messages wait at the head of its queue, so
        # that a stream sending far faster than its period costs each turn one step, not a hundred,
        # while every other stream is served (a backlog of many streams still goes one frame each)
        stepped: set[str] = set()
        back: list[Delivery] = []
        acks: list[Delivery] = []  # acknowledged together, after the loop
        count, cut = 0, False
        while not cut and count < BATCH:
            msgs = self.inbox.take(min(_CHUNK, BATCH - count), self._per_stream, 0 if count else wait, stepped)
            if not msgs:
                break
            count += len(msgs)
            for i, msg in enumerate(msgs):
                if stepped and self.inbox.key(msg.topic) in stepped:
                    back.append(msg)
                    continue
                got = self.intake.ingest(msg, msg.arrival)
                if got is not None and log_ is not None:
                    log_.append(journal.MESSAGE, msg.arrival, msg.topic, msg.payload, msg)  # acknowledged once on disk
                else:
                    acks.append(msg)
                if got:
                    frames += got
                    closed += [time.perf_counter()] * len(got)
                    stepped.update(f.stream for f in got)
                if closed and time.perf_counter() - closed[0] > _SERVE_AFTER:
                    back += msgs[i + 1 :]  # serve what closed; the rest next turn, the streams in turn again
                    cut = True
                    break
        self.inbox.requeue(back)
        self.link.ack_many(acks)
        return count - len(back)

    def _serve(self, frames: list[Frame], closed: list[float] | None = None) -> None:
        """Step the frames, publish their forecasts; ``closed`` says when each frame closed
        (perf_counter), for the frame-to-forecast latency."""
        if not frames:
            return
        t0 = time.perf_counter()
        forecasts = self.engine.step(frames, now=time.time())
        self.metrics.step.observe(time.perf_counter() - t0)
        self.metrics.frames.inc(len(forecasts))
        self.metrics.frames_missing.inc(sum(1 for f in frames if np.isnan(f.values).any()))
        when = dict(zip([(f.stream, f.ts) for f in frames], closed or []))
        topic = self.forecast_topic
        payloads = forecast.encode_all(forecasts, self.settings.features.period, self.skill)
        reasons = self.link.publish_many(zip([topic.format(stream=s) for s in forecasts.streams], payloads))
        observe.published(self.metrics, forecasts.streams, forecasts.ts, reasons, when, t0)

    def _housekeeping(self) -> None:
        if self.cycle and self.cycle.turn(self.stopping.is_set()):
            self._served()
        if self._pulse() and self.durability is not None and self.durability.due():
            self.durability.checkpoint(self.engine, self.assembler)

    def _readiness(self, ready: bool) -> None:
        log.info("ready" if ready else "not ready", extra={"connected": self.link.connected, "subscribed": self.link.subscribed})
        self.notify.status(
            f"ready: serving {len(self.engine.streams)} streams"
            if ready
            else f"not ready: broker {self.settings.mqtt.url} {'connected, subscribing' if self.link.connected else 'unreachable'}"
        )

    def _gauges(self) -> None:
        m, e = self.metrics, self.engine
        self.skill = observe.engines(m, [e], self.settings.ring.size, quiet_after=10 * self.settings.features.period)
        m.carry("engine", e.counts)
        m.carry("intake", self.intake.refused)
        m.carry("assembler", self.intake.assembler.counts)
        m.carry("health", e.health.counts)
        self.link.check()
        observe.link(m, self.link, self.inbox.qsize())
        if shed := self.inbox.take_shed():
            m.dropped.labels("rate").inc(shed.total())
            top = ", ".join(f"{stream[:64]} {n}" for stream, n in shed.most_common(3))
            self._rejects.log(log, logging.WARNING, "rate", "streams shed: each held far more of the full inbox than its share", shed=top)
        self.intake.say(e.counts)
        if self.durability is not None and self.durability.journal is not None:
            observe.journal(m, self.durability.journal)

    def _served(self) -> None:
        """An adopted model serves from now on: say so, and checkpoint it so that it survives a crash."""
        self.metrics.version.set(self.engine.version)
        log.info("model served", extra={"model_version": self.engine.version})
        if self.durability is not None:
            self.durability.checkpoint(self.engine, self.assembler)

    def _replaying(self) -> None:
        """A long journal replay at start is work, not a hang: tell the watchdog, stay unready."""
        self.notify.watchdog()
        if self.http:
            self.http.beat(False)


def _metrics(settings: Settings, engine: Engine, registry: CollectorRegistry) -> Metrics:
    """The daemon's metrics, with what is known at start: build, model version, nominal coverage."""
    spec = engine.spec
    metrics = Metrics(registry, spec.targets, spec.horizon, settings.daemon.stream_metrics)
    metrics.build.info({"version": __version__, "device": str(engine.device), "torch": torch.__version__, "model": settings.model.kind})
    metrics.version.set(engine.version)
    metrics.nominal.set(settings.evaluator.coverage)
    return metrics


def _transport(cfg: MqttSettings, subscriptions: list[str], inbox: FairInbox, log_format: str) -> LinkProcess:
    """The transport for ``cfg.url``'s scheme, not started."""
    scheme = cfg.url.split("://", 1)[0].lower()
    if scheme in ("mqtt", "mqtts", "tcp", "ssl"):
        return LinkProcess(cfg, subscriptions, inbox, log_format=log_format)
    raise ConfigError(f"mqtt.url: no transport for {scheme}:// (mqtt://, mqtts://; nats:// runs a shard)")
