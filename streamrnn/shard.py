"""A shard: the daemon on ``nats://``, serving the partitions it holds of a fleet's streams.

The loop is the daemon's (message -> frame -> engine step -> forecast -> publish), with the
messages routed to their partition's engine; claims and releases arrive in the inbox in order
with the messages (:mod:`streamrnn.fleet`). Every ``checkpoint.every`` seconds each partition
that took messages is checkpointed to the object store, which acknowledges them; a partition
asked back is checkpointed as it stands and dropped. SIGTERM hands every partition back, so that
the others take them at once, and leaves the fleet.

One engine per partition: a partition's streams are stepped as one batch, and its state moves
whole. The model's weights are the ones the shard started with (or that a partition's checkpoint
holds); retraining a fleet's champion is not done on ``nats://`` yet.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, defaultdict

import numpy as np
import torch
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import Counter as Counted

from streamrnn import __version__, forecast, ownership
from streamrnn.config import Settings
from streamrnn.daemon import _stop_on_signals, _take
from streamrnn.endpoint import Endpoint
from streamrnn.fleet import FleetLink
from streamrnn.frames import Frame
from streamrnn.logs import RateLimited
from streamrnn.metrics import Metrics
from streamrnn.model import ModelSpec, StreamRNN, build, resolve_device
from streamrnn.notify import Notifier
from streamrnn.partition import Partition
from streamrnn.transport import Delivery

log = logging.getLogger(__name__)

_EVERY = 1.0  # seconds between slow housekeeping


class Shard:
    def __init__(
        self, settings: Settings, model: StreamRNN | None = None, version: int = 0, registry: CollectorRegistry | None = None
    ) -> None:
        self.settings = s = settings
        spec = ModelSpec.from_settings(s)
        self.model, self.version = model or build(spec, seed=s.trainer.seed), version
        m = s.mqtt
        self.inbox: queue.Queue = queue.Queue(m.queue_size)
        self.link = FleetLink(s, [t for t in (m.sensor_topic, m.frame_topic) if t], self.inbox)
        self.metrics = Metrics(registry or CollectorRegistry(), spec.targets, spec.horizon, s.daemon.stream_metrics)
        device = str(resolve_device(s.device))
        self.metrics.build.info({"version": __version__, "device": device, "torch": torch.__version__, "model": s.model.kind})
        self.metrics.version.set(version)
        self.metrics.nominal.set(s.evaluator.coverage)
        r = dict(registry=self.metrics.registry, namespace="streamrnn")
        self.held = Gauge("partitions_held", "Partitions this shard serves", **r)
        self.moves = Counted("partition_moves", "Partitions claimed, released or lost (a claim lapsed)", ["how"], **r)
        d = s.daemon
        self.http = None
        if d.metrics_port is not None:
            self.http = Endpoint(self.metrics.registry, d.metrics_host, d.metrics_port, d.metrics_max_rate, log_format=d.log_format)
        self.notify = Notifier.from_env()
        self._rejects = RateLimited(burst=5, per=60.0)
        self.parts: dict[int, Partition] = {}
        self.stepped = 0  # frames stepped since the start
        self.stopping = threading.Event()
        self.skill: dict[str, float | None] = {}
        self._carried: dict[str, Counter[str]] = {"assembler": Counter(), "engine": Counter()}
        self._seen: dict[tuple[int, str], Counter[str]] = {}
        self._last_slow = self._last_save = time.monotonic()
        self._was_ready = False
        if s.checkpoint.dir is not None:
            log.warning("checkpoint.dir is not used on nats://: partitions are checkpointed in JetStream's object store")
        if s.trainer.enabled:
            log.warning("trainer: a fleet's champion is not retrained on nats:// yet; serving the model the shard started with")

    def ready(self) -> bool:
        return self.link.ready and not self.stopping.is_set()

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> int:
        if threading.current_thread() is threading.main_thread():
            _stop_on_signals(self.stopping)
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        if self.http:
            self.http.start()
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
        items = _take(self.inbox, wait)
        frames: dict[int, list[Frame]] = defaultdict(list)
        taken = 0
        for item in items:
            if isinstance(item, Delivery):
                taken += 1
                part = self.parts.get(item.partition)
                if part is not None:  # else released: its next owner takes it from the checkpoint on
                    frames[item.partition] += part.take(item)
            else:  # a partition moves: what it closed is served first
                self._serve(frames)
                frames.clear()
                self._control(item)
        now = time.time()
        for p, part in self.parts.items():
            frames[p] += part.quiet(now, self.link.drained(p))
        if taken:
            self.metrics.received.inc(taken)
        self._serve(frames)
        self._housekeeping()
        return len(items)

    def _serve(self, frames: dict[int, list[Frame]]) -> None:
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
            self.metrics.set_published(forecasts.streams, forecasts.ts, reasons, {}, t0)

    def _control(self, item: ownership.Claimed | ownership.Release | ownership.Lost) -> None:
        p = item.partition
        if isinstance(item, ownership.Claimed):
            part = Partition(p, self.settings, self.model, self.version, self.metrics, self._rejects)
            if item.state is not None:
                try:
                    part.load(item.state, item.seq)
                except (KeyError, TypeError, ValueError, RuntimeError) as e:  # another model or layout: the fleet is misconfigured
                    log.error("partition checkpoint refused: starting it afresh", extra={"partition": p, "error": str(e)})
                    part = Partition(p, self.settings, self.model, self.version, self.metrics, self._rejects)
                    part.seq = part.saved = item.seq
            part.behind = item.waiting > 0
            self.parts[p] = part
            self._seen[(p, "assembler")] = Counter(part.assembler.counts)
            self._seen[(p, "engine")] = Counter(part.engine.counts)
            self.moves.labels("claimed").inc()
        elif isinstance(item, ownership.Release):
            self._hand_back(p)
            self.moves.labels("released").inc()
        elif self.parts.pop(p, None) is not None:  # lost: its state is not ours to store any more
            self.moves.labels("lost").inc()
        self.held.set(len(self.parts))

    def _hand_back(self, p: int) -> None:
        part = self.parts.pop(p, None)
        if part is not None:
            self._count(p, part)
            self.link.hand_back(p, part.state() if part.seq > part.saved else None, part.seq)

    # -- housekeeping ---------------------------------------------------------------------------
    def _housekeeping(self) -> None:
        self.notify.watchdog()
        ready = self.ready()
        if ready != self._was_ready:
            log.info("ready" if ready else "not ready", extra={"connected": self.link.connected, "partitions": len(self.parts)})
            self._was_ready = ready
            if self.http:
                self.http.beat(ready)
        now = time.monotonic()
        if now - self._last_slow < _EVERY:
            return
        self._last_slow = now
        if self.http:
            self.http.beat(ready)
            if self.http.check():
                self.metrics.endpoint_restarts.inc()
        self._gauges()
        if now - self._last_save >= self.settings.checkpoint.every:
            self._last_save = now
            for p, part in self.parts.items():
                if part.seq > part.saved:
                    self.link.save(p, part.state(), part.seq)
                    part.saved = part.seq

    def _gauges(self) -> None:
        m = self.metrics
        for p, part in self.parts.items():
            self._count(p, part)
        m.carry("assembler", self._carried["assembler"])
        m.carry("engine", self._carried["engine"])
        m.streams.set(sum(len(part.engine.streams) for part in self.parts.values()))
        m.observe_link(self.link, self.inbox.qsize())
        self.held.set(len(self.parts))

    def _count(self, p: int, part: Partition) -> None:
        for source, counts in (("assembler", part.assembler.counts), ("engine", part.engine.counts)):
            grown(counts, self._seen.setdefault((p, source), Counter()), self._carried[source])


def grown(counts: Counter[str], seen: Counter[str], into: Counter[str]) -> None:
    """Add what ``counts`` grew by since ``seen`` to ``into``: a partition's counts move with it,
    and its next owner carries on from the ones it brought."""
    for key, n in counts.items():
        if n > seen[key]:
            into[key] += n - seen[key]
            seen[key] = n
