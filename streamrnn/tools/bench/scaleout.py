"""``bench scaleout``: the fleet on NATS JetStream with 1, 2 and 3 shards beside the single MQTT
daemon, in one run on this machine: the same load published over MQTT to each (mosquitto, or the
NATS server's MQTT listener), its forecasts read back over MQTT.

Every configuration runs in turn on the same cores, so that what it shows is the cost of each
path and of each shard more, not the throughput of more machines: on a box of 2 cores a second
shard has at most what the server and the first leave it."""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from streamrnn.fleet import ownership
from streamrnn.tools.bench.ingest import ForecastTap, run_load
from streamrnn.tools.bench.latency import histogram_quantiles, round_trips
from streamrnn.tools.bench.report import table
from streamrnn.tools.broker import Mosquitto
from streamrnn.tools.natsd import NatsServer
from streamrnn.tools.processes import DaemonProcess

_TOPIC = "plant/{stream}/sensors/{feature}"
_WARM = 24  # ticks sent first at a gentle rate: every forecast step scored, every band there


class Fleet:
    """The single daemon on mosquitto (``shards`` 0), or ``shards`` shards on one NATS server with
    JetStream and its MQTT listener; each a process of its own, stopped by pid."""

    def __init__(self, work: Path, shards: int, env: dict[str, str]) -> None:
        self.shards = shards
        self.server: Mosquitto | NatsServer
        if shards:
            self.server = NatsServer(work / "nats").start().ready()
            url, self.mqtt_url = self.server.url, self.server.mqtt_url
        else:
            self.server = Mosquitto(work / "broker").start()
            url = self.mqtt_url = self.server.url
        names = [f"shard-{i}" for i in range(shards)] or ["bench"]
        self.workers = [DaemonProcess(work, url, instance=name, env=env).launch() for name in names]

    def settle(self, partitions: int, timeout: float = 60.0) -> None:
        """Until every worker is ready and each shard holds its share of the partitions."""
        for w in self.workers:
            w.ready(timeout)
        if not self.shards:
            return
        names = [w.instance for w in self.workers]
        want = {w.instance: float(len(ownership.owned(w.instance, partitions, names))) for w in self.workers}
        deadline = time.monotonic() + timeout
        while {w.instance: w.sample("streamrnn_partitions_held") for w in self.workers} != want:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the shards did not settle on their partitions in {timeout:g} s; logs in {self.workers[0].dir}")
            time.sleep(0.2)

    def samples(self) -> list[dict[str, float]]:
        """Each worker's /metrics, rendered afresh (the endpoint serves a rendering up to 1 s old)."""
        time.sleep(1.1)
        return [w.samples(timeout=10) for w in self.workers]

    def cpu(self) -> tuple[float, float]:
        """CPU seconds the workers together, and the broker (mosquitto or nats-server), have used."""
        return sum(_cpu(w.proc) for w in self.workers), _cpu(self.server.proc)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        for w in self.workers:
            if w.proc is not None:
                w.terminate(30)
        self.server.stop()


def scaleout(
    shards: tuple[int, ...] = (1, 2, 3),
    streams: int = 100,
    ticks: int = 100,
    rounds: int = 3,
    rate_msgs: float = 2000.0,
    seconds: float = 20.0,
) -> dict:
    """Per configuration (the MQTT daemon, then 1, 2, 3 shards): ``rounds`` bursts of ``streams x 14
    x ticks`` QoS 1 sensor messages (messages per second to the last forecast received, and CPU per
    message of the workers and of the broker), then a steady ``rate_msgs`` for ``seconds`` (frame
    closed -> forecast published, and closing sensor published -> forecast received); what a shard
    costs idle (CPU, memory)."""
    from streamrnn.config import Settings

    s = Settings()
    rate = min(10.0, rate_msgs / (14 * streams))  # ticks per second of the steady phase
    env = {"STREAMRNN_TRAINER__ENABLED": "false", "STREAMRNN_FRAMES__IDLE_CLOSE": str(max(2.0, 2.5 / rate))}
    rows = []
    with tempfile.TemporaryDirectory(prefix="streamrnn-bench-") as tmp:
        for n in (0, *shards):
            with Fleet(Path(tmp) / f"shards-{n}", n, env) as fleet:
                fleet.settle(s.shards.partitions)
                rows.append(_measure(fleet, streams, ticks, rounds, rate, seconds, s.features.period))
    base = rows[0]
    for r in rows:
        r["vs_daemon"] = r["messages_per_s"] / base["messages_per_s"]
    return {"streams": streams, "ticks": ticks, "rounds": rounds, "rate_msgs": rate * 14 * streams, "cpus": os.cpu_count(), "rows": rows}


def _measure(fleet: Fleet, streams: int, ticks: int, rounds: int, rate: float, seconds: float, period: float) -> dict:
    idle = _idle(fleet, 3.0)
    fc = ForecastTap(fleet.mqtt_url)
    try:
        run_load(fleet.mqtt_url, _TOPIC, streams, _WARM, 1, rate=min(4 * rate, 20.0))
        _forecasts(fc, streams * (_WARM - 1), (1, _WARM - 1), period, 60)
        tick, runs, cpu = _WARM + 1, [], []
        count = streams * 14 * ticks
        for _ in range(rounds):
            before = fleet.cpu()
            load = run_load(fleet.mqtt_url, _TOPIC, streams, ticks, tick)
            seen = _forecasts(fc, streams * (ticks - 1), (tick, tick + ticks - 2), period, 600)
            runs.append(count / (max(a for a, _, _ in seen) - load["started"][tick]))
            cpu.append([(b - a) / count for a, b in zip(before, fleet.cpu())])
            tick += ticks + 1
        steady = max(8, int(seconds * rate))
        before = fleet.samples()
        load = run_load(fleet.mqtt_url, _TOPIC, streams, steady, tick, rate=rate)
        seen = _forecasts(fc, streams * (steady - 1), (tick, tick + steady - 2), period, steady / rate + 60)
        after = fleet.samples()
    finally:
        fc.close()
    rtt, behind = round_trips(seen, load["started"], period)
    close = histogram_quantiles(_summed(before), _summed(after), "streamrnn_forecast_latency_seconds", (0.5, 0.99))
    q = lambda p: 1e3 * rtt[min(len(rtt) - 1, int(p * len(rtt)))]
    return {
        "shards": fleet.shards,
        "path": f"NATS, {fleet.shards} shard{'s' * (fleet.shards > 1)}" if fleet.shards else "MQTT daemon",
        "runs": runs,
        "messages_per_s": statistics.median(runs),
        "worker_us_per_msg": 1e6 * statistics.median(x[0] for x in cpu),
        "server_us_per_msg": 1e6 * statistics.median(x[1] for x in cpu),
        "close_p50_ms": 1e3 * close[0],
        "close_p99_ms": 1e3 * close[1],
        "rtt_p50_ms": q(0.5),
        "rtt_p99_ms": q(0.99),
        "behind_s": behind,
        **idle,
    }


def _idle(fleet: Fleet, seconds: float) -> dict:
    """What a worker costs with no load: CPU (% of a core) and resident memory, of the median worker."""
    before = [_cpu(w.proc) for w in fleet.workers]
    time.sleep(seconds)
    cpu = [100 * (_cpu(w.proc) - a) / seconds for w, a in zip(fleet.workers, before)]
    rss = [x["process_resident_memory_bytes"] / 2**20 for x in fleet.samples()]
    return {"idle_cpu_pct": statistics.median(cpu), "rss_mb": statistics.median(rss)}


def _forecasts(fc: ForecastTap, want: int, ticks: tuple[int, int], period: float, timeout: float) -> list[tuple[float, str, float]]:
    """The forecasts of ticks ``ticks[0]..ticks[1]`` (the last tick of a load closes only by the
    clock, and may come in among the next load's); raises unless all ``want`` came in time."""
    from streamrnn.tools.loadgen import T0

    lo, hi = T0 + ticks[0] * period - period / 2, T0 + ticks[1] * period + period / 2
    out, deadline = [], time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        out += [x for x in fc.take(want - len(out), max(0.1, deadline - time.monotonic())) if lo <= x[2] <= hi]
    if len(out) < want:
        raise RuntimeError(f"{len(out)} of {want} forecasts in {timeout:g} s")
    return out


def _cpu(proc: subprocess.Popen | None) -> float:
    """CPU seconds a child process has used, from /proc (as Prometheus' process collector reads them)."""
    assert proc is not None
    with open(f"/proc/{proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _summed(samples: list[dict[str, float]]) -> dict[str, float]:
    """The workers' samples added up, as one process's (histogram buckets add)."""
    out: dict[str, float] = {}
    for x in samples:
        for k, v in x.items():
            out[k] = out.get(k, 0.0) + v
    return out


def format_scaleout(r: dict) -> str:
    return table(
        f"scaleout: {r['streams']} streams on {r['cpus']} cores; {r['rounds']} bursts of {r['streams'] * 14 * r['ticks']} QoS 1 "
        f"sensor messages (median msg/s to the last forecast received), then a steady {r['rate_msgs']:.0f} msg/s "
        "(close = frame closed -> forecast published, summed histograms of the workers; rtt = closing sensor "
        "published -> forecast received over MQTT); the shards on one NATS server (JetStream, its MQTT listener)",
        [
            ("path", "<16", "path"),
            ("msg/s", ">9.0f", "messages_per_s"),
            ("vs daemon", ">10.2f", "vs_daemon"),
            ("worker us/msg", ">14.1f", "worker_us_per_msg"),
            ("server us/msg", ">14.1f", "server_us_per_msg"),
            ("close p50", ">10.2f", "close_p50_ms"),
            ("close p99", ">10.2f", "close_p99_ms"),
            ("rtt p50", ">9.2f", "rtt_p50_ms"),
            ("rtt p99", ">9.2f", "rtt_p99_ms"),
            ("behind s", ">9.1f", "behind_s"),
            ("idle cpu%", ">10.1f", "idle_cpu_pct"),
            ("rss MB", ">8.0f", "rss_mb"),
        ],
        r["rows"],
        "worker us/msg: CPU of the daemon or of all shards together per sensor message; server: of "
        "mosquitto or nats-server. idle cpu% and rss MB: one worker with no load (the median worker): "
        "what each shard more costs before it takes a message. Every path ran on the same cores in "
        "turn: more shards on one box share its CPUs, they do not add any",
    )
