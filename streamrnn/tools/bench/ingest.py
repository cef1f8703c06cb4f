"""``bench ingest``: a raw publisher (loadgen.py) against the daemon and a bare subscriber, and the
load and forecast tap that ``bench latency`` shares."""

from __future__ import annotations

import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from streamrnn import children
from streamrnn.tools.bench.stack import Stack


def run_load(url: str, topic: str, streams: int, ticks: int, first_tick: int, rate: float | None = None) -> dict:
    from streamrnn.config import Settings

    s = Settings()  # the daemon's channels and period
    args = [
        "-m",
        "streamrnn.tools.loadgen",
        "publish",
        "--broker",
        url,
        "--topic",
        topic,
        "--channels",
        ",".join(s.channels),
        "--period",
        str(s.features.period),
        "--streams",
        str(streams),
        "--ticks",
        str(ticks),
        "--first-tick",
        str(first_tick),
    ]
    out = subprocess.run([sys.executable, *args, *(["--rate", str(rate)] if rate else [])], capture_output=True, text=True, timeout=900)
    if out.returncode:
        raise RuntimeError(f"load generator failed: {out.stderr[-500:]}")
    r = json.loads(out.stdout)
    r["started"] = {int(k): v for k, v in r["started"].items()}
    return r


class ForecastTap:
    """The forecasts the daemon publishes, each stamped with its arrival here."""

    def __init__(self, url: str) -> None:
        from streamrnn.transport.mqtt import Subscriber

        self.sub = Subscriber(url, f"bench-forecasts-{os.getpid()}", ["plant/+/forecast"], qos=0)

    def take(self, count: int, timeout: float) -> list[tuple[float, str, float]]:
        """(arrival, stream, ts) of ``count`` forecasts (fewer if ``timeout`` passes first)."""
        import orjson

        out, deadline = [], time.monotonic() + timeout
        while len(out) < count and time.monotonic() < deadline:
            try:
                m = self.sub.messages.get(timeout=0.2)
            except queue.Empty:
                continue
            doc = orjson.loads(m.payload)
            out.append((m.arrival, doc["stream"], doc["ts"]))
        return out

    def drain(self) -> None:
        while not self.sub.messages.empty():
            self.sub.messages.get_nowait()

    def close(self) -> None:
        self.sub.close()


def ingest(streams: int = 10, ticks: int = 1000, rounds: int = 3) -> dict:
    """Messages per second through the daemon (parsed, assembled, stepped, forecast published) and
    through a bare paho subscriber doing only ``json.loads``, on one broker, alternating rounds of
    the same burst of ``streams * 14 * ticks`` QoS 1 sensor messages."""
    count = streams * 14 * ticks
    runs: dict[str, list[float]] = {"bare": [], "daemon": []}
    dropped = 0.0
    with tempfile.TemporaryDirectory(prefix="streamrnn-bench-") as tmp:
        stack = Stack(Path(tmp), streams, 0, simulate=False)
        fc = None
        try:
            stack.ready()
            fc = ForecastTap(stack.broker.url)
            tick = 1
            for _ in range(rounds):
                runs["bare"].append(_bare(stack.broker.url, streams, ticks, tick))
                fc.drain()
                load = run_load(stack.broker.url, "plant/{stream}/sensors/{feature}", streams, ticks, tick)
                want = streams * (ticks - 1)  # each tick closes when the next one's first reading comes
                seen = fc.take(want, 600)
                if len(seen) < want:
                    raise RuntimeError(f"{len(seen)} of {want} forecasts; logs in {tmp}")
                runs["daemon"].append(count / (max(a for a, _, _ in seen) - load["started"][tick]))
                tick += ticks + 1
            m = stack.metrics()
            dropped = sum(v for k, v in m.items() if k.startswith("streamrnn_messages_dropped_total"))
        finally:
            if fc is not None:
                fc.close()
            stack.close()
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "streams": streams,
        "ticks": ticks,
        "messages": count,
        "rounds": rounds,
        "runs": runs,
        "bare_per_s": med["bare"],
        "daemon_per_s": med["daemon"],
        "ratio": med["daemon"] / med["bare"],
        "dropped": dropped,
    }


def _bare(url: str, streams: int, ticks: int, tick: int) -> float:
    """Messages per second that a bare paho subscriber (``json.loads`` only) takes of one burst."""
    count = streams * 14 * ticks
    cmd = [sys.executable, "-m", "streamrnn.tools.loadgen", "bare", "--broker", url, "--topic", "bare/+/sensors/+", "--count", str(count)]
    rx = children.popen(cmd, stdout=subprocess.PIPE, text=True)
    if rx.stdout is None or rx.stdout.readline().strip() != "ready":
        raise RuntimeError("bare subscriber did not start")
    load = run_load(url, "bare/{stream}/sensors/{feature}", streams, ticks, tick)
    got = json.loads(rx.communicate(timeout=600)[0].splitlines()[-1])
    return count / (got["last"] - load["started"][tick])


def format_ingest(r: dict) -> str:
    return "\n".join(
        [
            f"ingest: bursts of {r['messages']} QoS 1 sensor messages ({r['streams']} streams x 14 sensors "
            f"x {r['ticks']} ticks), {r['rounds']} rounds each, medians",
            f"bare paho subscriber (json.loads only): {r['bare_per_s']:>8.0f} msg/s   runs {[round(x) for x in r['runs']['bare']]}",
            f"daemon (to the last forecast received): {r['daemon_per_s']:>8.0f} msg/s   runs {[round(x) for x in r['runs']['daemon']]}",
            f"daemon / bare: {r['ratio']:.2f}  (target >= 0.95); messages dropped by the daemon: {r['dropped']:.0f}",
        ]
    )
