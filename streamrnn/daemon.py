"""The daemon: wiring and lifecycle. MQTT message -> payload -> frame -> engine step -> forecast -> MQTT.

One engine thread owns the engine and runs the loop below; paho's network thread only fills the
inbox; the trainer runs in a child process and its verdict is adopted between two steps. SIGTERM or
SIGINT closes intake, finishes the frames in hand, publishes them, says ``offline`` and returns 0.
"""

from __future__ import annotations

import logging
import math
import queue
import signal
import threading
import time
from collections import Counter

import numpy as np
import torch
from prometheus_client import CollectorRegistry

from streamrnn import __version__, message
from streamrnn.config import Settings
from streamrnn.engine import Engine, Frame
from streamrnn.frames import Assembler
from streamrnn.logs import RateLimited
from streamrnn.endpoint import Endpoint
from streamrnn.metrics import Metrics
from streamrnn.model import StreamRNN
from streamrnn.mqtt import Link, Message
from streamrnn.notify import Notifier
from streamrnn.payload import Parser, Rejected, subscription
from streamrnn.retrainer import Retrainer

log = logging.getLogger(__name__)

_BATCH = 10_000  # messages taken per turn at most: bounds the time between two wall-clock checks
_EVERY = 1.0  # seconds between slow housekeeping (skill, gauges)


class Daemon:
    def __init__(self, settings: Settings, model: StreamRNN | None = None, version: int = 0, registry: CollectorRegistry | None = None) -> None:
        self.settings = s = settings
        self.engine = Engine(settings, model, version)
        m = s.mqtt
        self.parser = Parser(self.engine.channels, m.sensor_topic, m.frame_topic, m.max_payload, s.frames.max_abs)
        self.assembler = Assembler(len(self.engine.channels), s.features.period, s.lateness, s.max_hold, s.frames.idle_close, s.streams.max_streams, s.streams.idle_timeout)
        self.inbox: queue.Queue[Message] = queue.Queue(m.queue_size)
        subs = [subscription(m.sensor_topic)] + ([subscription(m.frame_topic)] if m.frame_topic else [])
        self.link = Link(m, subs, self.inbox)
        self.retrainer = Retrainer(s.trainer) if s.trainer.enabled else None
        spec = self.engine.spec
        self.metrics = Metrics(registry or CollectorRegistry(), spec.targets, spec.horizon, s.daemon.stream_metrics)
        self.metrics.build.info({"version": __version__, "device": str(self.engine.device), "torch": torch.__version__, "model": s.model.kind})
        self.metrics.version.set(version)
        self.metrics.nominal.set(s.evaluator.coverage)
        self.http = Endpoint(self.metrics.registry, s.daemon.metrics_host, s.daemon.metrics_port, s.daemon.metrics_max_rate) if s.daemon.metrics_port is not None else None
        self.notify = Notifier.from_env()
        self.stopping = threading.Event()
        self.forecast_topic = m.forecast_topic
        self.skill: dict[str, float | None] = {}
        self._rejects = RateLimited(burst=5, per=60.0)
        self._synced: dict[str, Counter[str]] = {}
        self._last_slow = -math.inf
        self._last_retrain = time.monotonic()
        self._was_ready = False

    def ready(self) -> bool:
        """Connected and subscribed, and not stopping (the model is loaded before we connect): ``/readyz``."""
        return self.link.ready and not self.stopping.is_set()

    def stop(self) -> None:
        self.stopping.set()

    # -- lifecycle ------------------------------------------------------------------------
    def run(self) -> int:
        if threading.current_thread() is threading.main_thread():
            self._install_signals()
        if self.http:
            self.http.start()
        log.info("starting", extra={"version": __version__, "device": str(self.engine.device), "broker": self.settings.mqtt.url, "metrics_port": self.http.port if self.http else None})
        self.link.start()
        self.notify.ready(f"serving; connecting to {self.settings.mqtt.url}")
        try:
            while not self.stopping.is_set():
                self.turn(0.05)
        finally:
            code = self._shutdown()
        return code

    def _install_signals(self) -> None:
        def handler(signum: int, frame: object) -> None:
            if self.stopping.is_set():
                log.warning("second signal: exiting at once")
                raise SystemExit(130)
            log.info("stopping", extra={"signal": signal.Signals(signum).name})
            self.stopping.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def _shutdown(self) -> int:
        deadline = time.monotonic() + self.settings.daemon.grace
        self.notify.stopping()
        if self.http:
            self.http.beat(False)  # unready at once: no new traffic, please
        self.link.close_intake()
        while not self.inbox.empty() and time.monotonic() < deadline:
            self.turn(0.0)  # what was received
        self._serve(self.assembler.flush())  # and what was still waiting for late readings
        if self.retrainer:
            self.retrainer.close()
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
        msgs = self._take(wait)
        wall = time.time()
        frames: list[Frame] = []
        for msg in msgs:
            self.link.ack(msg)
            frames += self._ingest(msg, wall)
        frames += self.assembler.expire(wall)
        if msgs:
            self.metrics.received.inc(len(msgs))
        if frames:
            self._serve(frames)
        self._housekeeping()
        return len(msgs)

    def _take(self, wait: float) -> list[Message]:
        try:
            out = [self.inbox.get(timeout=wait) if wait > 0 else self.inbox.get_nowait()]
        except queue.Empty:
            return []
        try:
            while len(out) < _BATCH:
                out.append(self.inbox.get_nowait())
        except queue.Empty:
            pass  # drained
        return out

    def _ingest(self, msg: Message, wall: float) -> list[Frame]:
        try:
            frames: list[Frame] = []
            for reading in self.parser.parse(msg.topic, msg.payload, msg.arrival):
                frames += self.assembler.add(reading, wall)
            return frames
        except Rejected as e:
            self._refuse(e.reason, msg, str(e))
        except Exception as e:  # a bug must cost one message, never the daemon
            self._refuse("internal", msg, f"{type(e).__name__}: {e}", exc_info=True)
        return []

    def _refuse(self, reason: str, msg: Message, detail: str, exc_info: bool = False) -> None:
        self.metrics.dropped.labels(reason).inc()
        suppressed = self._rejects.allow(reason)
        if suppressed is not None:
            level = logging.ERROR if exc_info else logging.WARNING
            log.log(level, "message refused", exc_info=exc_info, extra={"reason": reason, "detail": detail, "topic": msg.topic[:200], "suppressed_before": suppressed})

    def _serve(self, frames: list[Frame]) -> None:
        if not frames:
            return
        t0 = time.perf_counter()
        forecasts = self.engine.step(frames)
        t1 = time.perf_counter()
        self.metrics.step.observe(t1 - t0)
        self.metrics.frames.inc(len(forecasts))
        self.metrics.frames_missing.inc(sum(1 for f in frames if np.isnan(f.values).any()))
        period = self.settings.features.period
        for fc in forecasts:
            payload = message.encode(fc, period, self.skill)
            reason = self.link.publish(self.forecast_topic.format(stream=fc.stream), payload)
            if reason is None:
                self.metrics.published.inc()
            else:
                self.metrics.publish_failed.labels(reason).inc()
        self.metrics.latency.observe(time.perf_counter() - t0)

    def _housekeeping(self) -> None:
        if self.retrainer:
            self._retrain()
        self.notify.watchdog()
        ready = self.ready()
        if ready != self._was_ready:  # said at once, not at the next slow pass
            log.info("ready" if ready else "not ready", extra={"connected": self.link.connected, "subscribed": self.link.subscribed})
            self.notify.status(f"ready: serving {len(self.engine.streams)} streams" if ready else f"not ready: broker {self.settings.mqtt.url} {'connected, subscribing' if self.link.connected else 'unreachable'}")
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

    def _gauges(self) -> None:
        m, e = self.metrics, self.engine
        scores = e.evaluator.scores(live=True)
        m.set_quality(scores)
        self._refresh_skill(scores["skill"])
        m.queue.set(self.inbox.qsize())
        m.streams.set(len(e.streams))
        m.connected.set(1 if self.link.connected else 0)
        m.subscribed.set(1 if self.link.subscribed else 0)
        m.pending.set(self.link.pending)
        held = [len(r) for r in e.rings.values()]
        m.ring_frames.set(sum(held))
        m.ring_fill.set(sum(held) / (len(held) * self.settings.ring.size) if held else 0.0)
        if m.stream_last is not None:
            m.set_streams({name: e.last_ts(name) for name in e.streams})
        self._sync("link", self.link.counts, {"queue_full": m.dropped.labels("queue_full"), "reconnects": m.reconnects})
        self._sync("assembler", self.assembler.counts, {"late": m.dropped.labels("late")})
        self._sync("engine", e.counts, {"refused": m.dropped.labels("refused"), "late": m.frames_late})

    def _sync(self, name: str, source: Counter[str], targets: dict) -> None:
        """Carry the increments of a plain Counter kept by another part into Prometheus counters."""
        seen = self._synced.setdefault(name, Counter())
        for key, metric in targets.items():
            delta = source[key] - seen[key]
            if delta > 0:
                metric.inc(delta)
                seen[key] = source[key]

    def _refresh_skill(self, sc: np.ndarray) -> None:
        """The mean live skill per target over the steps, carried in each forecast message."""
        for j, name in enumerate(self.engine.spec.targets):
            col = sc[:, j]
            col = col[np.isfinite(col)]
            self.skill[name] = round(float(col.mean()), 4) if len(col) else None

    def _retrain(self) -> None:
        assert self.retrainer is not None
        done = self.retrainer.poll()
        if done is not None:
            snap, verdict, seconds = done
            result = self.engine.adopt(snap, verdict)
            self.metrics.retrains.labels(result.outcome).inc()
            self.metrics.retrain_seconds.observe(seconds)
            self.metrics.version.set(self.engine.version)
            self.metrics.retrain_running.set(0)
            if verdict.outcome != "failed":
                self.metrics.train_loss.set(verdict.report.train_loss)
                self.metrics.val_loss.set(verdict.report.val_loss)
            log.info("retrain done", extra={"outcome": result.outcome, "seconds": round(seconds, 2), "model_version": self.engine.version, "error": verdict.report.error})
            return
        if self.retrainer.busy or self.stopping.is_set():
            return
        interval = self.settings.trainer.interval
        due = self.engine.retrain_due or (interval is not None and time.monotonic() - self._last_retrain >= interval and self.engine.retrain_ready)
        if due:
            self._last_retrain = time.monotonic()
            snap = self.engine.snapshot()
            champion = {k: v.numpy() for k, v in self.engine.state_dict().items()}
            self.retrainer.start(snap, self.engine.spec, champion, self.engine.next_seed())
            self.metrics.retrain_running.set(1)
