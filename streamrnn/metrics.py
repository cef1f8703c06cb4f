"""Prometheus metrics, owned here, registered on a registry passed in (tests use a fresh one),
and the HTTP endpoint that serves them with ``/healthz`` and ``/readyz``.

No label takes a per-stream value: label sets stay bounded whatever the plant sends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from streamrnn.payload import REASONS

_LATENCY = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
DROP_REASONS = (*REASONS, "capacity", "late", "queue_full", "refused", "internal")


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = dict(registry=registry, namespace="streamrnn")
        self.received = Counter("messages_received", "MQTT messages taken in", **r)
        self.dropped = Counter("messages_dropped", "Messages or readings dropped, by reason", ["reason"], **r)
        for reason in DROP_REASONS:
            self.dropped.labels(reason)
        self.frames = Counter("frames_closed", "Frames closed and stepped", **r)
        self.frames_missing = Counter("frames_with_missing_values", "Closed frames with at least one feature missing", **r)
        self.streams = Gauge("streams_active", "Streams with a hidden state", **r)
        self.step = Histogram("step_duration_seconds", "One batched engine step", buckets=_LATENCY, **r)
        self.latency = Histogram("forecast_latency_seconds", "Frame close to forecast handed to the MQTT client", buckets=_LATENCY, **r)
        self.published = Counter("forecasts_published", "Forecast messages published", **r)
        self.publish_failed = Counter("publish_failures", "Forecast messages the MQTT client refused, by reason", ["reason"], **r)
        self.queue = Gauge("queue_depth", "Messages waiting between the network thread and the engine", **r)
        self.connected = Gauge("mqtt_connected", "1 while connected to the broker", **r)
        self.reconnects = Counter("mqtt_reconnects", "Connections made after the first", **r)
        self.retrains = Counter("retrains", "Retrains by outcome", ["outcome"], **r)
        for outcome in ("promoted", "rejected", "failed"):
            self.retrains.labels(outcome)
        self.retrain_seconds = Histogram("retrain_duration_seconds", "Wall time of one retrain, snapshot to verdict", buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600), **r)
        self.version = Gauge("model_version", "Version of the serving model", **r)
        self.build = Info("build", "Version and device", **r)


class HealthServer:
    """``/metrics``, ``/healthz`` (the engine loop turned recently), ``/readyz`` (``ready()`` says so)."""

    def __init__(self, metrics: Metrics, host: str, port: int, ready: Callable[[], bool], stale_after: float = 10.0) -> None:
        self.metrics, self.ready, self.stale_after = metrics, ready, stale_after
        self.beat = time.monotonic()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(outer.metrics.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = time.monotonic() - outer.beat < outer.stale_after
                    self._send(200 if ok else 503, b"ok\n" if ok else b"engine loop stalled\n")
                elif path == "/readyz":
                    ok = outer.ready()
                    self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
                else:
                    self._send(404, b"not found\n")

            def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass  # scrapes are not events

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics-http", daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> None:
        self.thread.start()

    def heartbeat(self) -> None:
        self.beat = time.monotonic()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
