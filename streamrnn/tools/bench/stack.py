"""mosquitto, a daemon and the simulator, each a process of its own, for the benchmarks that run them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from streamrnn import children
from streamrnn.tools.broker import Mosquitto
from streamrnn.tools.processes import DaemonProcess, wait_port


class Stack:
    """mosquitto, the daemon and the simulator, each a process of its own, stopped by pid."""

    def __init__(self, workdir: Path, streams: int, rate: float, env: dict[str, str] | None = None, simulate: bool = True) -> None:
        self.dir = workdir
        self.broker = Mosquitto(workdir / "broker").start()
        self.daemon = DaemonProcess(
            workdir, self.broker.url, instance="bench", env={"STREAMRNN_TRAINER__ENABLED": "false", **(env or {})}
        ).launch()
        self.port = self.daemon.metrics_port
        self.procs: list[subprocess.Popen] = []
        wait_port(self.port, 60, self.daemon.proc)
        if simulate:
            with open(workdir / "simulator.log", "w") as log:
                sim = [
                    sys.executable,
                    "-m",
                    "streamrnn",
                    "simulate",
                    "--broker",
                    self.broker.url,
                    "--streams",
                    str(streams),
                    "--rate",
                    str(rate),
                ]
                self.procs.append(children.popen(sim, stdout=log, stderr=subprocess.STDOUT))

    def metrics(self) -> dict[str, float]:
        """Every sample of the daemon's /metrics, keyed ``name{k="v",...}``."""
        return self.daemon.samples(timeout=10)

    def wait_for(self, name: str, above: float, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.daemon.check()
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[1:4]} exited with code {p.returncode}; logs in {self.dir}")
            try:
                if self.metrics().get(name, 0.0) > above:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{name} did not pass {above} in {timeout:g} s; logs in {self.dir}")

    def ready(self, timeout: float = 60.0) -> None:
        """Until ``/readyz`` says the daemon is connected and subscribed."""
        self.daemon.ready(timeout)

    def close(self) -> None:
        for p in reversed(self.procs):
            children.stop(p, 20)
        if self.daemon.proc is not None:
            children.stop(self.daemon.proc, 20)
        self.broker.stop()


def phase(stack: Stack, seconds: float) -> dict[str, float]:
    a = stack.metrics()
    time.sleep(seconds)
    b = stack.metrics()
    d = lambda k: b.get(k, 0.0) - a.get(k, 0.0)
    steps = d("streamrnn_step_duration_seconds_count")
    frames = d("streamrnn_frames_closed_total")
    msgs = d("streamrnn_messages_received_total")
    syncs = d("streamrnn_journal_sync_duration_seconds_count")
    return {
        "messages_per_s": msgs / seconds,
        "cpu_us_per_message": 1e6 * d("process_cpu_seconds_total") / msgs if msgs else float("nan"),
        "journal_sync_ms": 1e3 * d("streamrnn_journal_sync_duration_seconds_sum") / syncs if syncs else float("nan"),
        "records_per_sync": d("streamrnn_journal_records_total") / syncs if syncs else float("nan"),
        "steps": steps,
        "frames": frames,
        "step_ms": 1e3 * d("streamrnn_step_duration_seconds_sum") / steps if steps else float("nan"),
        "step_ms_per_frame": 1e3 * d("streamrnn_step_duration_seconds_sum") / frames if frames else float("nan"),
        "latency_ms": 1e3 * d("streamrnn_forecast_latency_seconds_sum") / d("streamrnn_forecast_latency_seconds_count")
        if steps
        else float("nan"),
    }
