"""``bench latency``: frame close -> forecast published, and sensor published -> forecast received,
per number of streams at a steady rate, idle and retraining back to back."""

from __future__ import annotations

import math
import statistics
import tempfile
from pathlib import Path

from streamrnn.tools.bench.ingest import ForecastTap, run_load
from streamrnn.tools.bench.report import table
from streamrnn.tools.bench.stack import Stack


def histogram_quantiles(before: dict[str, float], after: dict[str, float], name: str, qs: tuple[float, ...]) -> list[float]:
    """Quantiles of a Prometheus histogram's increase between two scrapes, linear within a bucket."""
    buckets = sorted(
        (float(k.split('le="')[1].rstrip('"}')), after[k] - before.get(k, 0.0)) for k in after if k.startswith(f"{name}_bucket")
    )
    total = buckets[-1][1] if buckets else 0.0
    out = []
    for q in qs:
        if not total:
            out.append(float("nan"))
            continue
        want, lo, below = q * total, 0.0, 0.0
        for le, cum in buckets:
            if cum >= want:
                out.append(le if math.isinf(le) else lo + (le - lo) * (want - below) / max(cum - below, 1e-12))
                break
            lo, below = le, cum
    return out


# retraining back to back on short windows, so that a fit is under way all through the phase

_RETRAIN = {
    "STREAMRNN_TRAINER__ENABLED": "true",
    "STREAMRNN_TRAINER__MIN_FRAMES": "20",
    "STREAMRNN_TRAINER__WINDOW": "8",
    "STREAMRNN_TRAINER__SEGMENT_WINDOWS": "1",
    "STREAMRNN_TRAINER__BURN_IN": "0",
    "STREAMRNN_TRAINER__INTERVAL": "0.5",
    "STREAMRNN_TRAINER__RETRAIN_EVERY": "1",
}


def latency(
    counts: tuple[int, ...] = (1, 100, 1000), seconds: float = 20.0, rate_msgs: float = 3500.0, rounds: int = 3, min_ticks: int = 30
) -> dict:
    """Frame close -> forecast published (the daemon's histogram) and sensor publish -> forecast
    received (the reading that closed the frame, through the broker and back), per number of
    streams at a steady rate, with the trainer off and retraining back to back: ``rounds`` of each,
    alternating, and their medians. A phase lasts ``seconds`` or ``min_ticks`` ticks, whichever is
    longer: a p99 over fewer ticks is their slowest one, and two such phases alike in every way
    can differ severalfold."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="streamrnn-bench-") as tmp:
        for n in counts:
            runs: dict[str, list[dict]] = {"idle": [], "retrain": []}
            for i in range(rounds):
                for phase in runs:
                    runs[phase].append(_latency_phase(Path(tmp) / f"{phase}-{n}-{i}", n, phase, seconds, rate_msgs, min_ticks))
            for phase, got in runs.items():
                row = {k: statistics.median(x[k] for x in got) for k in got[0] if k.endswith("_ms")}
                row.update(
                    streams=n,
                    phase=phase,
                    ticks_per_s=got[0]["ticks_per_s"],
                    ticks=got[0]["ticks"],
                    forecasts=sum(x["forecasts"] for x in got),
                    retrains=sum(x["retrains"] for x in got),
                )
                row["rtt_max_ms"] = max(x["rtt_max_ms"] for x in got)
                row["backlog_s"] = max(x["backlog_s"] for x in got)
                row["rounds"] = got
                rows.append(row)
    for r in rows:
        idle = next(x for x in rows if x["streams"] == r["streams"] and x["phase"] == "idle")
        r["close_p99_vs_idle"] = r["close_p99_ms"] / idle["close_p99_ms"]
        r["rtt_p99_vs_idle"] = r["rtt_p99_ms"] / idle["rtt_p99_ms"]
        r["close_p99_vs_idle_rounds"] = [x["close_p99_ms"] / y["close_p99_ms"] for x, y in zip(r["rounds"], idle["rounds"])]
    return {"seconds": seconds, "rounds": rounds, "rows": rows}


def _latency_phase(work: Path, n: int, phase: str, seconds: float, rate_msgs: float, min_ticks: int) -> dict:
    """One daemon, ``n`` streams, ``seconds`` (at least ``min_ticks`` ticks) of load at a steady
    rate after the same warm-up."""
    from streamrnn.config import Settings

    period = Settings().features.period
    rate = min(10.0, rate_msgs / (14 * n))  # ticks per second: at most rate_msgs sensor messages/s
    ticks = max(min_ticks, int(seconds * rate))
    work.mkdir(parents=True)
    # each frame closes when its stream's next tick comes, never by the wall clock: at 0.25 ticks a
    # second the default idle_close (2 s) closed them all by the clock, with no reading to time from
    env = {"STREAMRNN_FRAMES__IDLE_CLOSE": str(max(2.0, 2.5 / rate)), **(_RETRAIN if phase == "retrain" else {})}
    stack = Stack(work, n, 0, env, simulate=False)
    fc = None
    try:
        stack.ready()
        fc = ForecastTap(stack.broker.url)
        # the same history in both phases, so that they differ only in the retrain: enough frames
        # for the first fit, and past the horizon, so that every forecast step is scored and has
        # its band (a daemon that has just started does less per frame)
        warm = 24
        run_load(stack.broker.url, "plant/{stream}/sensors/{feature}", n, warm, 1, rate=min(rate * 4, 20.0))
        fc.take(n * (warm - 1), 60)
        if phase == "retrain":
            stack.wait_for("streamrnn_retrain_running", 0.5, 60)
        before = stack.metrics()
        load = run_load(stack.broker.url, "plant/{stream}/sensors/{feature}", n, ticks, warm + 1, rate=rate)
        seen = fc.take(n * ticks, ticks / rate + 30)
        after = stack.metrics()
    finally:
        if fc is not None:
            fc.close()
        stack.close()
    rtt, backlog = round_trips(seen, load["started"], period)
    q = lambda p: 1e3 * rtt[min(len(rtt) - 1, int(p * len(rtt)))] if rtt else float("nan")
    p50, p99 = histogram_quantiles(before, after, "streamrnn_forecast_latency_seconds", (0.5, 0.99))
    retrains = sum(after.get(k, 0) - before.get(k, 0) for k in after if k.startswith("streamrnn_retrains_total"))
    return {
        "ticks_per_s": rate,
        "ticks": ticks,
        "forecasts": len(rtt),
        "retrains": retrains,
        "close_p50_ms": 1e3 * p50,
        "close_p99_ms": 1e3 * p99,
        "rtt_p50_ms": q(0.5),
        "rtt_p99_ms": q(0.99),
        "rtt_max_ms": 1e3 * rtt[-1] if rtt else float("nan"),
        "backlog_s": backlog,
    }


def round_trips(seen: list[tuple[float, str, float]], started: dict, period: float) -> tuple[list[float], float]:
    """Each forecast's round trip, sorted, and how much later the last ticks were answered than the
    first. A frame is closed by its stream's first reading of the next tick: the round trip runs
    from when that stream's part of that tick was sent. A daemon that keeps up answers the last ticks
    as soon as the first; one that does not falls further behind each tick, and its latency is then
    its queue's."""
    from streamrnn.tools.loadgen import T0

    by_tick: dict[int, list[float]] = {}
    for a, stream, ts in seen:
        k = round((ts - T0) / period) + 1
        if k in started:
            by_tick.setdefault(k, []).append(a - started[k][int(stream[1:])])
    ends = [statistics.median(by_tick[k]) for k in sorted(by_tick)]
    backlog = statistics.median(ends[-3:]) - statistics.median(ends[:3]) if ends else float("nan")
    return sorted(x for v in by_tick.values() for x in v), backlog


def format_latency(r: dict) -> str:
    per_round = [
        f"{x['streams']}: {' '.join(f'{v:.2f}' for v in x['close_p99_vs_idle_rounds'])}" for x in r["rows"] if x["phase"] == "retrain"
    ]
    return table(
        f"latency: {r['rounds']} round(s) of {r['seconds']:g} s per phase at a steady rate (each stream's "
        "sensors together, the streams spread evenly over each tick), idle and retrain alternating, "
        "medians over the rounds; close = frame closed -> forecast handed to MQTT (daemon histogram, "
        "interpolated); rtt = closing sensor published -> forecast received",
        [
            ("streams", ">8", "streams"),
            ("phase", ">9", "phase"),
            ("ticks/s", ">9.2f", "ticks_per_s"),
            ("ticks", ">7", "ticks"),
            ("forecasts", ">10", "forecasts"),
            ("retrains", ">9.0f", "retrains"),
            ("close p50", ">10.2f", "close_p50_ms"),
            ("close p99", ">10.2f", "close_p99_ms"),
            ("rtt p50", ">9.2f", "rtt_p50_ms"),
            ("rtt p99", ">9.2f", "rtt_p99_ms"),
            ("rtt max", ">9.1f", "rtt_max_ms"),
            ("behind s", ">9.1f", "backlog_s"),
            ("p99/idle", ">9.2f", "close_p99_vs_idle"),
        ],
        r["rows"],
        "targets: close p99 <= 5 ms (1 stream), <= 20 ms (1,000 streams); retrain p99 / idle p99 <= 1.5 (ms)"
        + "\nbehind s: how much later the last ticks were answered than the first (rtt, the most of "
        "the rounds): well above zero, the daemon did not keep up with the rate, and the latencies "
        "are its queue's" + f"\nretrain p99 / idle p99, round by round, per streams: {'; '.join(per_round)}",
    )
