"""The MQTT link's own process (``python -m streamrnn.transport.mqtt.child --link-fd N``, started by
:class:`streamrnn.transport.mqtt.process.LinkProcess` only).

paho parses every packet in Python on its network thread; in the daemon's interpreter that thread
and the engine's took turns at the interpreter lock, and under load each step waited for it. Here
the :class:`~streamrnn.transport.mqtt.link.Link` runs alone: its network thread parses, and each
time it has parsed all that one read of the socket gave, hands the messages over in one piece; the
main thread does what the daemon says (acknowledge, publish, start, close intake, stop) and reports
the connection's state when it changes. Everything over the link is :mod:`marshal`-ed tuples of
plain values (nothing on it is code, and nothing is run as it is read).

It ignores SIGINT and SIGTERM, which a terminal or systemd sends to the daemon's whole group: the
daemon stops it over the link once its last forecasts are handed over. If the daemon dies, the link
closes and this process exits at once; the broker then says ``offline`` for it (the will).
"""

from __future__ import annotations

import argparse
import logging
import marshal
import os
import signal
import sys
import threading
from collections import Counter
from multiprocessing.connection import Connection

from streamrnn import logs
from streamrnn.config import MqttSettings
from streamrnn.delivery import Delivery
from streamrnn.transport.mqtt.link import Link

log = logging.getLogger("streamrnn.transport.mqtt")
TICK = 0.1  # seconds between two looks at the connection's state when the daemon says nothing
HELD = 8192  # messages parsed and not yet written to the daemon before paho's thread waits (the broker holds the rest)


class Sender:
    """The one writer to the daemon: messages (up to ``HELD`` waiting, then the network thread
    waits: back-pressure down to the broker), the latest state, and the last word."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.rows: list[tuple] = []
        self.state: tuple | None = None
        self.last: tuple | None = None  # the final message: after everything else
        self.cond = threading.Condition()

    def messages(self, rows: list[tuple]) -> None:
        with self.cond:
            while len(self.rows) >= HELD and self.last is None:
                self.cond.wait()
            self.rows += rows
            self.cond.notify_all()

    def report(self, state: tuple) -> None:
        with self.cond:
            if state != self.state:
                self.state = state
                self.cond.notify_all()

    def finish(self, last: tuple) -> None:
        with self.cond:
            self.last = last
            self.cond.notify_all()

    def run(self) -> None:
        sent = None
        try:
            while True:
                with self.cond:
                    while not self.rows and self.state == sent and self.last is None:
                        self.cond.wait()
                    rows, self.rows, state, last = self.rows, [], self.state, self.last
                    self.cond.notify_all()
                if rows:
                    self.conn.send_bytes(marshal.dumps(("m", rows)))
                if state != sent:
                    self.conn.send_bytes(marshal.dumps(("s", *state)))
                    sent = state
                if last is not None:
                    self.conn.send_bytes(marshal.dumps(last))
                    return
        except OSError:
            os._exit(0)  # the daemon is gone


class Handover:
    """The inbox, as the link in this process sees it: what paho parsed, as rows of a
    :class:`Delivery`'s fields, handed to the :class:`Sender` after each read of the socket."""

    def __init__(self, sender: Sender) -> None:
        self.sender, self.rows = sender, []

    def put(self, m: Delivery, timeout: float | None = None) -> None:
        self.rows.append((m.topic, m.payload, m.arrival, m.mid, m.qos, m.session, m.retain))

    def flush(self) -> None:
        if self.rows:
            rows, self.rows = self.rows, []
            self.sender.messages(rows)


def serve(conn: Connection, link: Link, handover: Handover, sender: Sender) -> None:
    """Do what the daemon says until it says stop; report the state as it changes."""
    refused: Counter[str] = Counter()  # publish_<reason>: forecasts the client refused

    def state() -> tuple:
        return link.connected, link.subscribed, link.pending, {**link.counts, **refused}  # a copy in one step: paho's thread adds keys

    while True:
        if conn.poll(TICK):
            kind, *said = marshal.loads(conn.recv_bytes())
            if kind == "ack":
                link.acknowledge(said[0])
            elif kind == "pub":
                refused.update(f"publish_{r}" for r in link.publish_many(said[0], said[1]) if r is not None)
            elif kind == "start":
                link.start()
            elif kind == "close":
                link.close_intake()
            elif kind == "stop":
                link.close_intake()  # and its own "offline", heard back, is not said over
                flushed = link.stop(said[0])
                handover.flush()
                sender.finish(("x", flushed, *state()))
                return
        sender.report(state())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m streamrnn.transport.mqtt.child")
    p.add_argument("--link-fd", type=int, required=True)
    args = p.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    conn = Connection(args.link_fd)
    try:
        settings, subscriptions, session, log_format, log_level = marshal.loads(conn.recv_bytes())
    except EOFError:
        return 0
    logs.setup(log_format, log_level)
    sender = Sender(conn)
    handover = Handover(sender)
    link = Link(MqttSettings.model_validate(settings), subscriptions, handover, session=session)
    link.client.after_read = handover.flush
    writer = threading.Thread(target=sender.run, name="to-daemon", daemon=True)
    writer.start()
    try:
        serve(conn, link, handover, sender)
    except (EOFError, OSError):
        sys.stderr.flush()
        os._exit(0)  # the daemon is gone: so is this, and the broker says offline for it
    writer.join(10.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
