"""``streamrnn demo``: a broker, the simulated reactors and the daemon, with live forecasts in the terminal.

Each part runs as its own process, exactly as in production (the broker is an embedded amqtt
unless ``--broker`` names a real one). The view subscribes to the forecast and status topics and
reads the retrain counts from the daemon's /metrics. Ctrl-C, SIGTERM (``timeout``, systemd) and
SIGHUP (a closing terminal) stop everything, children by pid; a demo killed outright takes its
children with it (:mod:`streamrnn.children`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import TextIO

from prometheus_client.parser import text_string_to_metric_families

from streamrnn import children, forecast, simulator
from streamrnn.mqtt import Subscriber
from streamrnn.tools.processes import free_port, wait_port


class Demo:
    def __init__(self, broker: str | None, streams: int, rate: float, config: Path | None, out: TextIO) -> None:
        self.out, self.streams, self.rate, self.config = out, streams, rate, config
        self.broker = broker
        self.metrics_port = free_port()
        self.dir = tempfile.TemporaryDirectory(prefix="streamrnn-demo-")
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.latest: dict[str, dict] = {}
        self.received = 0
        self.status = "?"

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        with open(Path(self.dir.name) / f"{name}.log", "w") as log:
            # a session of its own: Ctrl-C reaches the demo, which stops each child in order
            p = children.popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, p))
        return p

    def start(self) -> None:
        if self.broker is None:
            port = free_port()
            p = self._spawn("broker", "-m", "streamrnn.tools.broker", "--port", str(port))
            wait_port(port, 20, p)
            self.broker = f"mqtt://127.0.0.1:{port}"
        cfg = ["--config", str(self.config)] if self.config else []
        self._spawn(
            "daemon",
            "-m",
            "streamrnn",
            "run",
            *cfg,
            "--broker",
            self.broker,
            "--metrics-port",
            str(self.metrics_port),
            "--instance",
            "demo",
        )
        self.view = Subscriber(self.broker, f"streamrnn-demo-view-{os.getpid()}", ["plant/+/forecast", "streamrnn/demo/status"])
        self._spawn(
            "simulator",
            "-m",
            "streamrnn",
            "simulate",
            *cfg,
            "--broker",
            self.broker,
            "--streams",
            str(self.streams),
            "--rate",
            str(self.rate),
        )
        self.out.write(
            f"streamrnn demo: {self.streams} simulated reactors at {self.rate:g} frames/s -> {self.broker}\n"
            f"  metrics: http://127.0.0.1:{self.metrics_port}/metrics   logs: {self.dir.name}/\n"
            f"  forecasts on plant/<stream>/forecast; Ctrl-C stops everything\n"
        )
        self.out.flush()

    def stop(self) -> None:
        for _, p in reversed(self.procs):
            children.stop(p, 20)
        if hasattr(self, "view"):
            self.view.close()
        self.dir.cleanup()

    def check(self) -> None:
        for name, p in self.procs:
            if p.poll() is not None:
                tail = (Path(self.dir.name) / f"{name}.log").read_text()[-2000:]
                raise RuntimeError(f"the {name} exited with code {p.returncode}:\n{tail}")

    def poll(self) -> None:
        while True:
            try:
                msg = self.view.messages.get_nowait()
            except queue.Empty:
                return
            if msg.topic.endswith("/status"):
                self.status = msg.payload.decode(errors="replace")
                continue
            doc = message_doc(msg.payload)
            if doc is not None:
                self.received += 1
                self.latest[doc["stream"]] = doc

    def retrains(self) -> dict[str, int]:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=1).read().decode()
        except OSError:
            return {}
        out = {}
        for fam in text_string_to_metric_families(text):
            if fam.name == "streamrnn_retrains":
                for s in fam.samples:
                    if s.name.endswith("_total"):
                        out[s.labels["outcome"]] = int(s.value)
        return out

    def render(self) -> str:
        r = self.retrains()
        lines = [
            f"daemon {self.status}   forecasts received {self.received}   retrains: "
            + (", ".join(f"{r.get(k, 0)} {k}" for k in ("promoted", "rejected", "failed")) if r else "(metrics not up yet)"),
            f"{'stream':<12} {'sim time':<19} {'model':>5} {'skill':>7}  {simulator.KEY}: now | forecast [band] at +1, +H/2, +H steps",
        ]
        for name in sorted(self.latest):
            d = self.latest[name]
            t = d["targets"].get(simulator.KEY) or next(iter(d["targets"].values()))
            h = d["horizon"]
            when = dt.datetime.fromtimestamp(d["ts"], dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
            steps = sorted({1, max(1, h // 2), h})
            cells = "  ".join(f"+{k} {_num(t['values'][k - 1])} [{_num(t['lower'][k - 1])}, {_num(t['upper'][k - 1])}]" for k in steps)
            skill = "   n/a" if t["skill"] is None else f"{t['skill']:+.3f}"
            lines.append(f"{name:<12} {when:<19} {'v' + str(d['model']['version']):>5} {skill:>7}  now {_num(t['now'])} | {cells}")
        if not self.latest:
            lines.append("(waiting for the first forecasts ...)")
        return "\n".join(lines) + "\n"


def message_doc(payload: bytes) -> dict | None:
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and doc.get("schema") == forecast.SCHEMA_ID else None


def _num(x: float | None) -> str:
    return "   -  " if x is None else f"{x:.4g}"


class _Stopped(Exception):
    """SIGTERM or SIGHUP: stop as Ctrl-C does."""


def _stop(signum: int, frame: object) -> None:
    raise _Stopped(signal.Signals(signum).name)


def run(broker: str | None, streams: int, rate: float, duration: float | None, config: Path | None, out: TextIO = sys.stdout) -> int:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop)
    demo = Demo(broker, streams, rate, config, out)
    tty = out.isatty()
    started = time.monotonic()
    try:
        demo.start()
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
    return 0
