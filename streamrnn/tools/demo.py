"""``streamrnn demo``: a broker, the simulated reactors and the daemon, with live forecasts in the terminal.

Each part runs as its own process, exactly as in production (the broker is an embedded amqtt
unless ``--broker`` names a real one; with ``--shards N``, a cluster of three NATS servers on
loopback and N shards, the simulator and the view on the first server's MQTT listener). The view
subscribes to the forecast and status topics and reads the retrain counts from the daemon's
/metrics. Ctrl-C, SIGTERM (``timeout``, systemd) and SIGHUP (a closing terminal) stop everything,
children by pid; a demo killed outright takes its children with it (:mod:`streamrnn.children`).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

from streamrnn import children, config
from streamrnn.engine import forecast
from streamrnn.offline import simulator
from streamrnn.tools import view
from streamrnn.tools.processes import DaemonProcess, free_port, wait_port
from streamrnn.transport.mqtt import Subscriber

OUTCOMES = ("promoted", "rejected", "failed")


class Demo:
    """The demo's processes (broker, daemon, simulator) and what the view shows of them."""

    def __init__(self, broker: str | None, streams: int, rate: float, config_path: Path | None, out: TextIO, shards: int = 0) -> None:
        self.out, self.streams, self.rate, self.config, self.shards = out, streams, rate, config_path, shards
        self.settings = config.load(config_path)
        self.broker = broker
        self.dir = Path(tempfile.mkdtemp(prefix="streamrnn-demo-"))  # kept: the logs are what to read when it misbehaves
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.daemon: DaemonProcess | None = None
        self.fleet: list[DaemonProcess] = []  # with --shards: the shards (the first is ``daemon``)
        self.servers: list = []  # ... and the NATS servers
        self.charts: dict[str, view.Stream] = {}
        self.received = 0
        self.online = "?"
        self.retrains: dict[str, int] = {}
        self.last: str | None = None  # the outcome of the last retrain seen
        self.metrics: dict[str, float] | None = None

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        with open(self.dir / f"{name}.log", "w") as log:
            # a session of its own: Ctrl-C reaches the demo, which stops each child in order
            p = children.popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, p))
        return p

    def start(self) -> None:
        if self.shards:
            self._start_fleet()
        elif self.broker is None:
            port = free_port()
            p = self._spawn("broker", "-m", "streamrnn.tools.broker", "--port", str(port))
            wait_port(port, 20, p)
            self.broker = f"mqtt://127.0.0.1:{port}"
        if not self.shards:
            self.daemon = DaemonProcess(self.dir, self.broker, config=self.config, instance="demo", session=True).launch()
        status = "streamrnn/+/status" if self.shards else "streamrnn/demo/status"
        self.view = Subscriber(self.broker, f"streamrnn-demo-view-{os.getpid()}", ["plant/+/forecast", status], qos=0)
        cfg = ["--config", str(self.config)] if self.config else []
        sim = ["-m", "streamrnn", "simulate", *cfg, "--broker", self.broker, "--streams", str(self.streams), "--rate", str(self.rate)]
        self._spawn("simulator", *sim)

    def _start_fleet(self) -> None:
        """Three NATS servers, then the shards, one on each server in turn."""
        from streamrnn.tools import natsd

        if self.broker is not None:
            raise RuntimeError("--shards starts its own NATS servers: leave --broker out")
        self.servers = natsd.cluster(self.dir / "nats", 3)
        self.broker = self.servers[0].mqtt_url
        for i in range(self.shards):
            url = self.servers[i % 3].url
            self.fleet.append(DaemonProcess(self.dir, url, config=self.config, instance=f"shard-{i}", session=True).launch())
        self.daemon = self.fleet[0]

    def header(self) -> list[str]:
        """The banner, on every screen: where things are, and how to stop."""
        port = self.daemon.metrics_port if self.daemon else 0
        logs = f"{self.dir}/"
        if len(logs) > view.WIDTH - len("logs: "):  # its end names it; the whole path is said on exit
            logs = "..." + logs[-(view.WIDTH - len("logs: ...")) :]
        via = f"{self.shards} shards on 3 NATS servers, MQTT {self.broker}" if self.shards else self.broker
        return [
            f"streamrnn demo: {self.streams} simulated reactors at {self.rate:g} frames/s via {via}",
            f"metrics: http://127.0.0.1:{port}/metrics   Ctrl-C stops everything",
            f"logs: {logs}",
            "forecasts on plant/<stream>/forecast",
        ]

    def stop(self) -> None:
        """The simulator, then the daemon (it publishes what it holds), then the broker."""
        procs = dict(self.procs)
        if "simulator" in procs:
            children.stop(procs["simulator"], 20)
        for d in self.fleet or [self.daemon]:
            if d is not None and d.proc is not None:
                children.stop(d.proc, 20)
        for s in self.servers:
            s.stop()
        if "broker" in procs:
            children.stop(procs["broker"], 20)
        if hasattr(self, "view"):
            self.view.close()

    def check(self) -> None:
        for d in self.fleet or [self.daemon]:
            if d is not None:
                d.check()
        for name, p in self.procs:
            if p.poll() is not None:
                tail = (self.dir / f"{name}.log").read_text()[-2000:]
                raise RuntimeError(f"the {name} exited with code {p.returncode}:\n{tail}")

    def poll(self) -> None:
        """Take the forecasts and statuses that arrived, and the daemon's metrics."""
        while True:
            try:
                msg = self.view.messages.get_nowait()
            except queue.Empty:
                break
            if msg.topic.endswith("/status"):
                self.online = msg.payload.decode(errors="replace")
                continue
            doc = message_doc(msg.payload)
            if doc is not None:
                self.received += 1
                self.charts.setdefault(doc["stream"], view.Stream(doc["stream"])).take(doc, simulator.KEY)
        try:
            self.metrics = self.daemon.samples(timeout=1) if self.daemon else None
        except OSError:
            return
        counts = {o: int(self.metrics.get(f'streamrnn_retrains_total{{outcome="{o}"}}', 0)) for o in OUTCOMES}
        moved = [o for o in OUTCOMES if counts[o] > self.retrains.get(o, 0)]
        if moved:
            self.last = moved[-1]
        self.retrains = counts

    def render(self) -> str:
        r = self.retrains
        done = ", ".join(f"{r.get(k, 0)} {k}" for k in OUTCOMES)
        counts = f"daemon {self.online}, {self.received} forecasts; retrains: {done}"
        if self.shards:
            counts = f"{self.shards} shards, partitions held {self._held()}, {self.received} forecasts"
        state = view.status(self.metrics, self.last, self.settings.trainer.min_frames)
        return view.screen(self.header(), state, counts, self.charts, simulator.KEY)

    def _held(self) -> str:
        out = []
        for d in self.fleet:
            try:
                out.append(str(int(d.sample("streamrnn_partitions_held"))))
            except (OSError, KeyError):
                out.append("?")
        return "/".join(out)


def message_doc(payload: bytes) -> dict | None:
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and doc.get("schema") == forecast.SCHEMA_ID else None


class _Stopped(Exception):
    """SIGTERM or SIGHUP: stop as Ctrl-C does."""


def _stop(signum: int, frame: object) -> None:
    raise _Stopped(signal.Signals(signum).name)


def run(
    broker: str | None,
    streams: int,
    rate: float,
    duration: float | None,
    config_path: Path | None,
    out: TextIO = sys.stdout,
    shards: int = 0,
) -> int:
    """Start everything, show the view until ``duration`` seconds or a signal, stop everything."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop)
    demo = Demo(broker, streams, rate, config_path, out, shards)
    tty = out.isatty()
    started = time.monotonic()
    try:
        demo.start()
        if not tty:
            out.write("\n".join(demo.header()) + "\n")
        last_print = 0.0
        while duration is None or time.monotonic() - started < duration:
            time.sleep(0.5)
            demo.check()
            demo.poll()
            now = time.monotonic()
            if tty:
                out.write("\x1b[H\x1b[J" + demo.render())
            elif now - last_print >= 5:
                out.write(f"--- {now - started:.0f} s\n" + demo.render())
                last_print = now
            out.flush()
        if not tty:
            out.write(f"--- {time.monotonic() - started:.0f} s, done\n" + demo.render())
    except (KeyboardInterrupt, _Stopped):
        out.write("\nstopping ...\n")
    finally:
        for sig in (signal.SIGTERM, signal.SIGHUP):  # a second one must not cut the stop short
            signal.signal(sig, signal.SIG_IGN)
        demo.stop()
        out.write(f"logs kept in {demo.dir}/\n")
        out.flush()
    return 0
