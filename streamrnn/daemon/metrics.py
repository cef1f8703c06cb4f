"""Prometheus metrics, all owned here and registered on a registry passed in (tests use a fresh one).

Names follow the Prometheus conventions: the ``streamrnn_`` prefix, base units, ``_total`` counters,
``_seconds`` histograms. Label values come from closed sets (reasons, outcomes, targets and steps
of the configuration), never from what the plant sends; the one exception, a series per stream, is
off unless ``daemon.stream_metrics`` asks for it, and then capped at that many streams.
"""

from __future__ import annotations

import time
from collections import Counter as PlainCounter
from collections.abc import Iterable

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info, disable_created_metrics
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from streamrnn.engine import gate, health
from streamrnn.intake.intake import REFUSALS
from streamrnn.intake.payload import REASONS

_LATENCY = (0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
disable_created_metrics()  # no *_created series: a start time per counter is what process_start_time_seconds says once

DROP_REASONS = (*REASONS, "retained", "capacity", "overflow", "late", "queue_full", "rate", "refused", "internal")
PUBLISH_FAILURES = ("queue_full", "no_connection")
OUTCOMES = ("promoted", "rejected", "failed")


class Metrics:
    def __init__(self, registry: CollectorRegistry, targets: Iterable[str] = (), horizon: int = 0, stream_cap: int = 0) -> None:
        self.registry = registry
        if registry is not REGISTRY:  # the default one has them already
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        r = dict(registry=registry, namespace="streamrnn")
        # intake
        self.received = Counter("messages_received", "MQTT messages taken in", **r)
        self.dropped = Counter("messages_dropped", "Messages or readings dropped, by reason", ["reason"], **r)
        self.queue = Gauge("queue_depth", "Messages waiting between the MQTT client's process and the engine", **r)
        # frames and steps
        self.frames = Counter("frames_closed", "Frames closed and stepped", **r)
        self.frames_late = Counter("frames_late", "Frames that came after a later frame of their stream had been stepped", **r)
        self.frames_missing = Counter("frames_with_missing_values", "Closed frames with at least one feature missing", **r)
        self.streams = Gauge("streams_active", "Streams with a hidden state", **r)
        self.quiet = Gauge("streams_quiet", "Streams held that sent no frame for over 10 periods (evicted at streams.idle_timeout)", **r)
        self.stream_resets = Counter(
            "streams_reset",
            "Streams dropped and started afresh: displaced (a probationer, at streams.max_streams) or "
            "resynced (its clock moved: frames.resync_after)",
            ["reason"],
            **r,
        )
        self.stuck_closes = Counter(
            "ticks_stuck_closed",
            "Ticks closed because their stream kept sending while none closed for frames.max_open seconds (a stuck sensor clock)",
            **r,
        )
        for reason in ("displaced", "resynced"):
            self.stream_resets.labels(reason)
        self.ring_frames = Gauge("ring_frames", "Frames held in the ring buffers of all streams", **r)
        self.ring_fill = Gauge("ring_fill_ratio", "Mean fraction of a stream's ring buffer that is filled", **r)
        self.step = Histogram(
            "step_duration_seconds", "One batched engine step over the frames closed together (its _count: steps)", buckets=_LATENCY, **r
        )
        # output
        self.latency = Histogram(
            "forecast_latency_seconds", "Frame closed to its forecast handed to the MQTT client, per forecast", buckets=_LATENCY, **r
        )
        self.published = Counter("forecasts_published", "Forecast messages handed to the MQTT client", **r)
        self.publish_failed = Counter("publish_failures", "Forecast messages the MQTT client refused, by reason", ["reason"], **r)
        self.pending = Gauge("publish_pending", "Published messages the broker has not acknowledged yet", **r)
        self.connected = Gauge("mqtt_connected", "1 while connected to the broker", **r)
        self.subscribed = Gauge("mqtt_subscribed", "1 while the sensor subscriptions are active", **r)
        self.reconnects = Counter("mqtt_reconnects", "Connections made after the first", **r)
        self.status_reasserted = Counter(
            "status_reasserted", "Times another client overwrote the daemon's status topic while it served, and it said online again", **r
        )
        # forecast quality, live (exponentially weighted over evaluator.live_window scored forecasts)
        labels = ["target", "horizon"]
        quality = {
            "mse": Gauge("forecast_mse", "Live mean squared error of the forecast, engineering units squared", labels, **r),
            "persistence_mse": Gauge("persistence_mse", "Live mean squared error of persistence (the last observed value)", labels, **r),
            "skill": Gauge("forecast_skill_ratio", "Live skill 1 - MSE/MSE_persistence: above 0 beats persistence", labels, **r),
            "coverage": Gauge("interval_coverage_ratio", "Live fraction of truths inside the forecast's band", labels, **r),
        }
        self.nominal = Gauge("interval_coverage_nominal_ratio", "The band's nominal coverage (evaluator.coverage)", **r)
        targets = list(targets)
        self._quality = {  # the children, made once: (target, step) -> gauge
            key: [[gauge.labels(t, str(k)) for t in targets] for k in range(1, horizon + 1)] for key, gauge in quality.items()
        }
        for rows in self._quality.values():
            for row in rows:
                for child in row:
                    child.set(float("nan"))
        # model and retraining
        self.retrains = Counter("retrains", "Retrains by outcome", ["outcome"], **r)
        self.retrain_seconds = Histogram(
            "retrain_duration_seconds", "Wall time of a retrain, snapshot to verdict", buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600), **r
        )
        self.retrain_running = Gauge("retrain_running", "1 while a retrain runs in the trainer process", **r)
        self.version = Gauge("model_version", "Version of the serving model: 0 at start, +1 per model swapped in", **r)
        self.train_loss = Gauge("training_loss", "Last successful fit's training loss (normalised: about 1 - skill)", **r)
        self.val_loss = Gauge("validation_loss", "Last successful fit's validation loss (normalised)", **r)
        self.holdout_error = Gauge(
            "holdout_error",
            "Last retrain's error on the held-out tail, by model (normalised: persistence's is about 1); the challenger serves only "
            "below both others",
            ["model"],
            **r,
        )
        for g in (self.train_loss, self.val_loss, *(self.holdout_error.labels(m) for m in ("challenger", "champion", "persistence"))):
            g.set(float("nan"))
        self.linear_fits = Counter("linear_fits", "Fits of the linear contender (in retrains and alone), by outcome", ["outcome"], **r)
        for outcome in ("fitted", "failed"):
            self.linear_fits.labels(outcome)
        self.gate_weight = Gauge(
            "gate_weight_ratio",
            "Each contender's share of the served forecast, averaged over targets and steps, in calm and in wild moments",
            ["regime", "contender"],
            **r,
        )
        self.suspect = Gauge("channels_suspect", "Streams in which this feature's sensor looks broken now (health.py)", ["feature"], **r)
        self.suspect_spells = Counter("suspect_spells", "Spells of a channel looking broken, by what made it suspect", ["reason"], **r)
        for reason in health.REASONS[1:]:
            self.suspect_spells.labels(reason)
        self._gate = [[self.gate_weight.labels(regime, c) for c in gate.CONTENDERS] for regime in gate.REGIMES]
        for outcome in OUTCOMES:
            self.retrains.labels(outcome)
        for reason in DROP_REASONS:
            self.dropped.labels(reason)
        for reason in PUBLISH_FAILURES:
            self.publish_failed.labels(reason)
        # durability: checkpoints and the journal (checkpoint.dir)
        self.checkpoints = Counter("checkpoints", "Checkpoints written, by outcome (failed: e.g. a full disk)", ["outcome"], **r)
        self.checkpoint_seconds = Histogram(
            "checkpoint_duration_seconds",
            "Encoding and writing one checkpoint, off the engine thread",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            **r,
        )
        self.checkpoint_bytes = Gauge("checkpoint_size_bytes", "Size of the last checkpoint written", **r)
        self.checkpoint_last = Gauge("checkpoint_last_success_timestamp_seconds", "Unix time of the last checkpoint written", **r)
        self.checkpoints_skipped = Counter("checkpoints_skipped", "Checkpoints refused at start or claim (torn, altered, unsound)", **r)
        self.champions_refused = Counter("champions_refused", "Stored champions a shard could not read (no version, no checkpoint)", **r)
        self.replayed = Counter("journal_replayed_records", "Journal records replayed at start, after the checkpoint restored", **r)
        self.journal_records = Counter("journal_records", "Records written to the journal", **r)
        self.journal_errors = Counter(
            "journal_write_errors", "Journal writes that failed (messages then acknowledged without a durable record)", **r
        )
        self.journal_sync = Histogram(
            "journal_sync_duration_seconds", "Writing and fsyncing one batch of journal records", buckets=_LATENCY, **r
        )
        for outcome in ("written", "failed"):
            self.checkpoints.labels(outcome)
        self.endpoint_restarts = Counter("endpoint_restarts", "Restarts of the HTTP endpoint's process", **r)
        self.client_restarts = Counter("mqtt_client_restarts", "Restarts of the MQTT client's process (one that died)", **r)
        self.build = Info("build", "Version, device, torch and model kind", **r)
        # opt-in, capped: the last frame time of each of the first stream_cap streams
        self.stream_cap = stream_cap
        self.stream_last = (
            Gauge(
                "stream_last_frame_timestamp_seconds",
                "Timestamp of a stream's last frame (first daemon.stream_metrics streams only)",
                ["stream"],
                **r,
            )
            if stream_cap
            else None
        )
        self._stream_shown: set[str] = set()
        self._carried: dict[str, PlainCounter[str]] = {}

    def carry(self, source: str, counts: PlainCounter[str]) -> None:
        """Carry the increments of the plain counts another part keeps (``link``, ``assembler``,
        ``engine``, ``journal``: it owns no metrics) into their Prometheus counters."""
        seen = self._carried.setdefault(source, PlainCounter())
        for key, metric in self._carries(source).items():
            delta = counts[key] - seen[key]
            if delta > 0:
                metric.inc(delta)
                seen[key] = counts[key]

    def _carries(self, source: str) -> dict:
        """Which of a part's counts feeds which counter."""
        drop, reset = self.dropped.labels, self.stream_resets.labels
        return {
            "link": {
                "queue_full": drop("queue_full"),
                "reconnects": self.reconnects,
                "restarts": self.client_restarts,
                "status_reasserted": self.status_reasserted,
                **{f"publish_{r}": self.publish_failed.labels(r) for r in ("queue_full", "no_connection", "other")},  # the link process's
                "checkpoints_failed": self.checkpoints.labels("failed"),  # a shard's partitions (written: checkpoint_written)
                "checkpoints_unusable": self.checkpoints_skipped,
                "champions_refused": self.champions_refused,
            },
            "assembler": {
                **{r: drop(r) for r in ("late", "overflow")},
                **{r: reset(r) for r in ("displaced", "resynced")},
                "stuck": self.stuck_closes,
            },
            "intake": {reason: drop(reason) for reason in REFUSALS},
            "engine": {"refused": drop("refused"), "late": self.frames_late},
            "journal": {"records": self.journal_records, "errors": self.journal_errors},
            "health": {reason: self.suspect_spells.labels(reason) for reason in health.REASONS[1:]},
        }[source]

    def checkpoint_written(self, seconds: float | None, size: int) -> None:
        """A checkpoint written (the daemon's file, or a shard's partition in the object store):
        ``seconds`` to encode and write it (None: not timed), its size."""
        self.checkpoints.labels("written").inc()
        if seconds is not None:
            self.checkpoint_seconds.observe(seconds)
        self.checkpoint_bytes.set(size)
        self.checkpoint_last.set(time.time())

    def set_gate(self, weights: np.ndarray) -> None:
        """Export the gate's weights (regimes, contenders, H, targets) as their means per contender."""
        for children, w in zip(self._gate, weights.mean(axis=(2, 3)).tolist()):
            for child, x in zip(children, w):
                child.set(x)

    def set_quality(self, scores: dict[str, np.ndarray]) -> None:
        """Export the evaluator's live scores, each (H, targets) in the order of the configuration."""
        for key, rows in self._quality.items():
            for row, values in zip(rows, scores[key].tolist()):
                for child, v in zip(row, values):
                    child.set(v)

    def set_streams(self, last: dict[str, float]) -> None:
        """Per-stream series, for at most ``stream_cap`` streams; streams that left lose theirs."""
        if self.stream_last is None:
            return
        for gone in self._stream_shown - last.keys():
            self.stream_last.remove(gone)
            self._stream_shown.discard(gone)
        for stream, ts in last.items():
            if stream in self._stream_shown or len(self._stream_shown) < self.stream_cap:
                self._stream_shown.add(stream)
                self.stream_last.labels(stream).set(ts)
