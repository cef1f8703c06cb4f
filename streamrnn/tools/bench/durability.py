"""``bench journal`` and ``bench soak``: what durability costs, and a long run's memory.

- ``journal``: the daemon's CPU per message, its step time and its frame-to-forecast latency, with
  the journal off and on, in alternating daemons on the same simulated load; and the journal's own
  write-and-fsync time per batch.
- ``soak``: a long run at a steady rate, journal and retraining on, resident memory sampled every
  ten seconds: after the warm-up it must stay flat (the mean of the last five minutes within 5 % of
  the mean of the first five), the momentary spread reported beside it.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from streamrnn.tools.bench.stack import Stack, phase


def journal(streams: int = 20, rate: float = 20.0, seconds: float = 10.0, rounds: int = 3) -> dict:
    """The journal's cost: daemons without and with it, alternating, on the same simulated load."""
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="streamrnn-bench-") as tmp:
        for i in range(rounds):
            for mode in ("off", "on"):
                env = {"STREAMRNN_CHECKPOINT__DIR": str(Path(tmp) / f"state-{i}")} if mode == "on" else {}
                work = Path(tmp) / f"{mode}-{i}"
                work.mkdir()
                stack = Stack(work, streams, rate, env)
                try:
                    stack.wait_for("streamrnn_frames_closed_total", streams * rate * 3, 90)
                    runs[mode].append(phase(stack, seconds))
                finally:
                    stack.close()
    keys = ("messages_per_s", "cpu_us_per_message", "step_ms_per_frame", "latency_ms", "journal_sync_ms", "records_per_sync")
    med = {mode: {k: statistics.median(p[k] for p in phases) for k in keys} for mode, phases in runs.items()}
    return {
        "streams": streams,
        "rate": rate,
        "seconds": seconds,
        "rounds": rounds,
        "off": med["off"],
        "on": med["on"],
        "runs": runs,
        "cpu_ratio": med["on"]["cpu_us_per_message"] / med["off"]["cpu_us_per_message"],
        "latency_ratio": med["on"]["latency_ms"] / med["off"]["latency_ms"],
        "step_ratio": med["on"]["step_ms_per_frame"] / med["off"]["step_ms_per_frame"],
    }


def format_journal(r: dict) -> str:
    out = [
        f"journal cost: {r['streams']} streams x 14 sensors at {r['rate']:g} frames/s; {r['rounds']} "
        f"daemons each way, {r['seconds']:g} s measured; medians",
        f"{'journal':<9}{'msg/s':>8}{'cpu us/msg':>12}{'step ms/frame':>15}{'latency ms':>12}{'sync ms':>9}{'records/sync':>14}",
    ]
    for mode in ("off", "on"):
        p = r[mode]
        out.append(
            f"{mode:<9}{p['messages_per_s']:>8.0f}{p['cpu_us_per_message']:>12.1f}{p['step_ms_per_frame']:>15.3f}{p['latency_ms']:>12.3f}{p['journal_sync_ms']:>9.3f}{p['records_per_sync']:>14.1f}"
        )
    out.append(
        f"on / off: CPU per message {r['cpu_ratio']:.3f}, step time per frame {r['step_ratio']:.3f}, "
        f"mean frame-to-forecast latency {r['latency_ratio']:.3f}"
    )
    return "\n".join(out)


def soak(minutes: float = 30.0, warmup: float = 5.0, streams: int = 10, rate: float = 10.0, every: float = 10.0) -> dict:
    """Resident memory of the daemon over a long run at ``streams * rate`` frames/s, journal and
    retraining on: its spread after ``warmup`` minutes, relative to its level then."""
    samples: list[tuple[float, float, float]] = []  # (minutes, rss bytes, frames)
    with tempfile.TemporaryDirectory(prefix="streamrnn-soak-") as tmp:
        env = {"STREAMRNN_CHECKPOINT__DIR": str(Path(tmp) / "state"), "STREAMRNN_TRAINER__ENABLED": "true"}
        stack = Stack(Path(tmp), streams, rate, env)
        try:
            start = time.monotonic()
            while (t := (time.monotonic() - start) / 60) < minutes:
                m = stack.metrics()
                samples.append((t, m["process_resident_memory_bytes"], m.get("streamrnn_frames_closed_total", 0.0)))
                time.sleep(every)
            final = stack.metrics()
        finally:
            stack.close()
    after = [rss for t, rss, _ in samples if t >= warmup]
    base = after[0] if after else float("nan")
    n = max(1, int(5 * 60 / every))  # five minutes of samples
    first, last = statistics.fmean(after[:n]) if after else float("nan"), statistics.fmean(after[-n:]) if after else float("nan")
    return {
        "minutes": minutes,
        "warmup": warmup,
        "streams": streams,
        "rate": rate,
        "frames": final.get("streamrnn_frames_closed_total", 0.0),
        "retrains": {o: final.get(f'streamrnn_retrains_total{{outcome="{o}"}}', 0.0) for o in ("promoted", "rejected", "failed")},
        "checkpoints": final.get('streamrnn_checkpoints_total{outcome="written"}', 0.0),
        "rss_at_warmup_mb": base / 1e6,
        "rss_min_mb": min(after) / 1e6 if after else float("nan"),
        "rss_max_mb": max(after) / 1e6 if after else float("nan"),
        "rss_last_mb": after[-1] / 1e6 if after else float("nan"),
        "spread": (max(after) - min(after)) / base if after else float("nan"),
        "first_5min_mb": first / 1e6,
        "last_5min_mb": last / 1e6,
        "trend": (last - first) / first if after else float("nan"),
        "flat": bool(after) and abs(last - first) / first <= 0.05,
        "samples": samples,
    }


def format_soak(r: dict) -> str:
    return "\n".join(
        [
            f"soak: {r['minutes']:g} min at {r['streams'] * r['rate']:g} frames/s ({r['streams']} streams), journal and retraining on",
            f"frames {r['frames']:.0f}, retrains {r['retrains']}, checkpoints {r['checkpoints']:.0f}",
            f"resident memory after the {r['warmup']:g} min warm-up: {r['rss_at_warmup_mb']:.1f} MB then, "
            f"min {r['rss_min_mb']:.1f}, max {r['rss_max_mb']:.1f}, last {r['rss_last_mb']:.1f}",
            f"mean of the first 5 min after it {r['first_5min_mb']:.1f} MB, of the last 5 min {r['last_5min_mb']:.1f} "
            f"MB: trend {100 * r['trend']:+.2f} %  -> {'flat' if r['flat'] else 'NOT flat'} (limit 5 %)",
            f"momentary spread (max - min) / at warm-up: {100 * r['spread']:.2f} % (checkpoint copies and verdicts come and go)",
        ]
    )
