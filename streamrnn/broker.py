"""An embedded MQTT broker for the demo, so that nothing but pip is needed: amqtt on loopback.

For production and tests use a real broker (Eclipse Mosquitto, see deploy/mosquitto.conf). Run
as ``python -m streamrnn.broker --port N``; it serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal


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
    p = argparse.ArgumentParser(prog="python -m streamrnn.broker")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
