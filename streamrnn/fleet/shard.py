"""A shard: the daemon on ``nats://``, serving the partitions it holds of a fleet's streams.

The loop is the daemon's (message -> frame -> engine step -> forecast -> publish), with the
messages routed to their partition's engine; claims and releases arrive in the inbox in order
with the messages (:mod:`streamrnn.fleet.fleet`). Every ``checkpoint.every`` seconds each partition
that took messages is checkpointed to the object store, which acknowledges them (the partitions in
turn, spread over the interval, not all in one turn); a partition asked back is checkpointed as it
stands and dropped. SIGTERM hands every partition back, so that the others take them at once, and
leaves the fleet.

One engine per partition: a partition's streams are stepped as one batch, and its state moves
whole. Every partition serves the fleet's champion (:mod:`streamrnn.fleet.champion`): the model a shard
started with until the shard that holds the trainer's lease stores a better one.
"""

from __future__ import annotations

import gc
import logging
import queue
import time
from collections import Counter, defaultdict

import numpy as np
import torch
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import Counter as Counted

from streamrnn import __version__
from streamrnn.config import Settings
from streamrnn.daemon import observe
from streamrnn.daemon.metrics import Metrics
from streamrnn.daemon.service import Service, take
from streamrnn.delivery import Delivery
from streamrnn.engine import forecast
from streamrnn.engine.frame import Frame
from streamrnn.engine.model import ModelSpec, StreamRNN, build, resolve_device
from streamrnn.fleet import champion, ownership
from streamrnn.fleet.champion import Champion, FleetTrainer
from streamrnn.fleet.fleet import Control, FleetLink
from streamrnn.fleet.partition import Partition
from streamrnn.logs import RateLimited
from streamrnn.transport import jetstream

log = logging.getLogger(__name__)


class Shard(Service):
    def __init__(
        self, settings: Settings, model: StreamRNN | None = None, version: int = 0, registry: CollectorRegistry | None = None
    ) -> None:
        s = settings
        spec = ModelSpec.from_settings(s)
        super().__init__(s, Metrics(registry or CollectorRegistry(), spec.targets, spec.horizon, s.daemon.stream_metrics))
        self.model, self.version = model or build(spec, seed=s.trainer.seed), version
        m = s.mqtt
        self.inbox: queue.Queue = queue.Queue(m.queue_size)
        self.link = FleetLink(s, [t for t in (m.sensor_topic, m.frame_topic) if t], self.inbox)
        device = str(resolve_device(s.device))
        self.metrics.build.info({"version": __version__, "device": device, "torch": torch.__version__, "model": s.model.kind})
        self.metrics.version.set(version)
        self.metrics.nominal.set(s.evaluator.coverage)
        r = dict(registry=self.metrics.registry, namespace="streamrnn")
        self.held = Gauge("partitions_held", "Partitions this shard serves", **r)
        self.assigned = Gauge("partitions_assigned", "Partitions the live members assign this shard: what partitions_held moves to", **r)
        self.moves = Counted("partition_moves", "Partitions claimed, released or lost (a claim lapsed)", ["how"], **r)
        self._rejects = RateLimited(burst=5, per=60.0)
        self.parts: dict[int, Partition] = {}
        self.stepped = 0  # frames stepped since the start
        self.skill: dict[str, float | None] = {}
        self._carried: dict[str, Counter[str]] = {"intake": Counter(), "assembler": Counter(), "engine": Counter(), "health": Counter()}
        self._seen: dict[tuple[int, str], Counter[str]] = {}
        if s.checkpoint.dir is not None:
            log.warning("checkpoint.dir is not used on nats://: partitions are checkpointed in JetStream's object store")
        self.champion = Champion(version, {k: v.detach().cpu().numpy() for k, v in self.model.state_dict().items()})
        self.trainer = FleetTrainer(s, self.metrics) if s.trainer.enabled else None

    def run(self) -> int:
        self._start()
        log.info("starting", extra={"version": __version__, "broker": self.settings.mqtt.url, "member": self.link.me})
        self.link.start()
        self.notify.ready(f"serving; joining the fleet at {self.settings.mqtt.url}")
        try:
            while not self.stopping.is_set() and self.link.error is None:
                self.turn(0.05)
        finally:
            code = self._shutdown()
        if self.link.error is not None:
            log.error("cannot join the fleet: %s", self.link.error)
            return 2
        return code

    def _shutdown(self) -> int:
        deadline = time.monotonic() + self.settings.daemon.grace
        self.notify.stopping()
        if self.http:
            self.http.beat(False)
        self.link.close_intake()
        while not self.inbox.empty() and time.monotonic() < deadline:
            self.turn(0.0)
        for p in list(self.parts):
            self._hand_back(p)
        if self.trainer is not None:
            self.trainer.close()
        flushed = self.link.stop(max(0.1, deadline - time.monotonic()))
        if not flushed:
            log.warning("grace period over with forecasts or checkpoints not out", extra={"grace": self.settings.daemon.grace})
        if self.http:
            self.http.close()
        self.notify.close()
        log.info("stopped", extra={"frames": self.stepped})
        return 0

    # -- the loop -------------------------------------------------------------------------------
    def turn(self, wait: float) -> int:
        """One pass: take what arrived, route it to its partition, step, publish, housekeeping."""
        items = take(self.inbox, wait)
        frames: dict[int, list[Frame]] = defaultdict(list)
        closed: dict[int, list[float]] = defaultdict(list)  # when each frame closed (perf_counter)
        taken = 0
        for item in items:
            if isinstance(item, Delivery):
                taken += item.topic != jetstream.CLOCK  # a clock tick is no sensor message
                part = self.parts.get(item.partition)
                if part is not None:  # else released: its next owner takes it from the checkpoint on
                    got = part.take(item)
                    frames[item.partition] += got
                    closed[item.partition] += [time.perf_counter()] * len(got)
            else:  # a partition moves: what it closed is served first
                self._serve(frames, closed)
                frames.clear()
                closed.clear()
                self._control(item)
        now = time.time()
        for p, part in self.parts.items():
            if part.quiet(now, self.link.drained(p)):  # a clock tick closes what waits as it comes back
                self.link.send([(jetstream.clock(p), b"")])
        if taken:
            self.metrics.received.inc(taken)
        self._serve(frames, closed)
        self._housekeeping()
        return len(items)

    def _serve(self, frames: dict[int, list[Frame]], closed: dict[int, list[float]]) -> None:
        topic, period = self.settings.mqtt.forecast_topic, self.settings.features.period
        for p, got in frames.items():
            if not got:
                continue
            t0 = time.perf_counter()
            forecasts = self.parts[p].engine.step(got, now=time.time())
            self.stepped += len(forecasts)
            self.metrics.step.observe(time.perf_counter() - t0)
            self.metrics.frames.inc(len(forecasts))
            self.metrics.frames_missing.inc(sum(1 for f in got if np.isnan(f.values).any()))
            payloads = forecast.encode_all(forecasts, period, self.skill)
            reasons = self.link.publish_many(zip([topic.format(stream=s) for s in forecasts.streams], payloads))
            when = dict(zip([(f.stream, f.ts) for f in got], closed[p]))
            observe.published(self.metrics, forecasts.streams, forecasts.ts, reasons, when, t0)

    def _control(self, item: Control) -> None:
        if isinstance(item, ownership.Crowned):  # stored by the trainer, maybe another shard
            new = champion.accepted(item, self.champion, self.model, self.settings)
            return None if new is None else self._crowned(new)
        p = item.partition
        if isinstance(item, ownership.Claimed):
            part = Partition(p, self.settings, self.model, self.version, self._rejects)
            if item.state is not None:
                try:
                    part.load(item.state, item.seq)
                except (KeyError, TypeError, ValueError, RuntimeError) as e:  # another model or layout: the fleet is misconfigured
                    log.error("partition checkpoint refused: starting it afresh", extra={"partition": p, "error": str(e)})
                    part = Partition(p, self.settings, self.model, self.version, self._rejects)
                    part.seq = part.saved = item.seq
            part.behind = item.waiting > 0
            champion.serve(part.engine, self.champion, loaded=item.state is not None)
            self.parts[p] = part
            for source, counts in sources(part):
                self._seen[(p, source)] = Counter(counts)
            self.moves.labels("claimed").inc()
            # what a partition is made of (its engine, model, rings) lives as long as it is held:
            # out of the collector's sight, a full collection no longer walks it (and stalls serving)
            gc.freeze()
        elif isinstance(item, ownership.Release):
            self._hand_back(p)
            self.moves.labels("released").inc()
        elif self.parts.pop(p, None) is not None:  # lost: its state is not ours to store any more
            self.moves.labels("lost").inc()
        self.held.set(len(self.parts))

    def _crowned(self, new: Champion) -> None:
        """The fleet's new champion serves in every partition from now on."""
        self.champion = new
        for part in self.parts.values():
            champion.serve(part.engine, new)
        self.metrics.version.set(new.version)
        log.info("champion served", extra={"model_version": new.version, "partitions": len(self.parts)})

    def _hand_back(self, p: int) -> None:
        part = self.parts.pop(p, None)
        if part is not None:
            self._count(p, part)
            self.link.hand_back(p, part.state() if part.seq > part.saved else None, part.seq)

    # -- housekeeping ---------------------------------------------------------------------------
    def _housekeeping(self) -> None:
        if self.trainer is not None:
            training = self.link.champion.training
            new = self.trainer.turn(training, [part.engine for part in self.parts.values()], self.champion)
            if new is not None and not training:
                log.warning("retrain's champion dropped: the trainer's lease passed to another shard", extra={"version": new.version})
            elif new is not None:  # served here at once: the next retrain starts from it
                self.link.soon(self.link.champion.crown(new.state(self.settings), new.version))
                if champion.fresh(new, self.champion, self.model) is not None:
                    self._crowned(new)
        if self._pulse():
            now = time.monotonic()
            for p, part in self.parts.items():
                if now - part.saved_at >= self.settings.checkpoint.every:
                    part.saved_at = now
                    if part.seq > part.saved:
                        self.link.save(p, part.state(), part.seq)
                        part.saved = part.seq

    def _readiness(self, ready: bool) -> None:
        log.info("ready" if ready else "not ready", extra={"connected": self.link.connected, "partitions": len(self.parts)})

    def _gauges(self) -> None:
        m = self.metrics
        for p, part in self.parts.items():
            self._count(p, part)
        for source, counts in self._carried.items():
            m.carry(source, counts)
        engines, s = [part.engine for part in self.parts.values()], self.settings  # as a daemon's, pooled
        self.skill = observe.engines(m, engines, s.ring.size, 10 * s.features.period)
        observe.link(m, self.link, self.inbox.qsize())
        stored = self.link.checkpoints
        while stored is not None and stored.written:  # the partitions' checkpoints, as the daemon's file
            m.checkpoint_written(*stored.written.popleft())
        self.held.set(len(self.parts))
        self.assigned.set(self.link.assigned)

    def _count(self, p: int, part: Partition) -> None:
        for source, counts in sources(part):
            grown(counts, self._seen.setdefault((p, source), Counter()), self._carried[source])


def sources(part: Partition) -> list[tuple[str, Counter[str]]]:
    """The counts a partition keeps, by the metrics' name for each (:meth:`Metrics.carry`)."""
    return [
        ("intake", part.intake.refused),
        ("assembler", part.assembler.counts),
        ("engine", part.engine.counts),
        ("health", part.engine.health.counts),
    ]


def grown(counts: Counter[str], seen: Counter[str], into: Counter[str]) -> None:
    """Add what ``counts`` grew by since ``seen`` to ``into``: a partition's counts move with it,
    and its next owner carries on from the ones it brought."""
    for key, n in counts.items():
        if n > seen[key]:
            into[key] += n - seen[key]
            seen[key] = n
