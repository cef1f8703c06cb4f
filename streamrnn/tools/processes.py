"""A daemon as a child process on loopback, and what the demo, the benchmarks and the tests ask of
it: start it, wait until it is online or ready, read its ``/metrics``, stop it by its pid."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from streamrnn import children


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Until something listens on 127.0.0.1:``port``; raises if ``proc`` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[2:4]} exited with code {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


def samples(text: str) -> dict[str, float]:
    """Every sample of a Prometheus text exposition, keyed ``name{k="v",...}`` (labels sorted)."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


class DaemonProcess:
    """``python -m streamrnn run`` as a child process on loopback, its output in a log file.

    ``env`` is added to this process's environment; ``client`` is the MqttSettings (TLS,
    credentials) of the clients that watch its status; ``session``: a process group of its own,
    so that a Ctrl-C in the terminal reaches only the parent, which stops it in order."""

    def __init__(
        self,
        workdir: Path,
        broker_url: str,
        config: Path | None = None,
        model: Path | None = None,
        instance: str = "test",
        env: dict[str, str] | None = None,
        client=None,
        session: bool = False,
    ) -> None:
        self.dir, self.url, self.instance, self.env, self.session = workdir, broker_url, instance, env, session
        self.client = client
        self.metrics_port = free_port()
        self.log_path = workdir / f"daemon-{instance}.log"
        args = [
            sys.executable,
            "-m",
            "streamrnn",
            "run",
            "--broker",
            broker_url,
            "--metrics-port",
            str(self.metrics_port),
            "--instance",
            instance,
        ]
        if config:
            args += ["--config", str(config)]
        if model:
            args += ["--model", str(model)]
        self.args = args
        self.proc: subprocess.Popen | None = None

    def launch(self) -> DaemonProcess:
        """Start the process; do not wait for it to get online."""
        with open(self.log_path, "a") as log:
            env = {**os.environ, **self.env} if self.env else None
            self.proc = children.popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=self.session)
        return self

    def start(self, timeout: float = 60.0) -> DaemonProcess:
        """Start the process and wait for its retained status to say ``online``."""
        from streamrnn.transport.mqtt import Subscriber

        status = Subscriber(
            self.url, f"t-status-{self.instance}-{time.monotonic_ns()}", [f"streamrnn/{self.instance}/status"], cfg=self.client
        )
        self.launch()
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                self.check()
                try:
                    msg = status.messages.get(timeout=0.2)
                except Exception:
                    continue
                if msg.payload == b"online":
                    return self
            raise TimeoutError(f"daemon not online after {timeout} s:\n{self.log()}")
        finally:
            status.close()

    def ready(self, timeout: float = 60.0) -> DaemonProcess:
        """Until ``/readyz`` says the daemon is connected and subscribed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=5).status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"daemon not ready in {timeout:g} s; log in {self.log_path}")

    def check(self) -> None:
        """Raises if the process has exited, with the end of its log."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()[-4000:]}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def metrics(self, timeout: float = 5.0) -> str:
        """The text of ``/metrics``."""
        return urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=timeout).read().decode()

    def samples(self, timeout: float = 5.0) -> dict[str, float]:
        """Every sample of ``/metrics``, keyed as :func:`samples` keys them."""
        return samples(self.metrics(timeout))

    def sample(self, name: str, **labels: str) -> float:
        """One sample of ``/metrics`` by name and labels; KeyError where it is not exported."""
        for fam in text_string_to_metric_families(self.metrics()):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return s.value
        raise KeyError(f"{name}{labels} not exported")

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, and its exit code; killed (-9) if it has not ended within ``timeout``."""
        assert self.proc is not None
        return children.stop(self.proc, timeout)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
