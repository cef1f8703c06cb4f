"""The brokers streamrnn starts itself, always on loopback.

- :class:`Mosquitto`: a real mosquitto on a free port, for the tests and benchmarks.
- :func:`serve`: an embedded amqtt for the demo, so that nothing but pip is needed. Run as
  ``python -m streamrnn.tools.broker --port N``; it serves until SIGTERM or SIGINT.

For production use a real broker (Eclipse Mosquitto, see deploy/mosquitto.conf).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import shutil
import signal
import subprocess
from pathlib import Path

from streamrnn import children
from streamrnn.tools.processes import free_port, wait_port


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None
    )


class Mosquitto:
    """A mosquitto on a free loopback port, with persistence in ``workdir``; stopped by pid."""

    def __init__(self, workdir: Path, listener: str = "allow_anonymous true\n", tls: bool = False) -> None:
        """``listener``: the lines that follow the listener's (TLS files, password and ACL files)."""
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls = tls
        self.proc: subprocess.Popen | None = None
        conf = self.dir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n{listener}set_tcp_nodelay true\n"
            f"persistence true\npersistence_location {self.dir}/\nautosave_interval 1\n"
            "max_queued_messages 0\nmax_inflight_messages 1000\nlog_dest stderr\n"
            f"user {getpass.getuser()}\n"  # as root, mosquitto would drop to a user that cannot write here
        )
        self.conf = conf

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto is not installed: apt-get install mosquitto")
        with open(self.dir / "mosquitto.log", "a") as log:
            self.proc = children.popen([binary, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        wait_port(self.port, 10.0, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            children.stop(self.proc, 10)
        self.proc = None


async def serve(host: str, port: int) -> None:
    try:
        from amqtt.broker import Broker
    except ImportError as e:  # the optional 'demo' extra
        raise SystemExit("the embedded broker needs amqtt: pip install 'streamrnn[demo]', or pass --broker mqtt://host:port") from e
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    broker = Broker(config)
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"broker listening on mqtt://{host}:{port}", flush=True)
    await stop.wait()
    await broker.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m streamrnn.tools.broker")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
