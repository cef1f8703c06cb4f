"""Seconds-long runs of the durability benchmarks: they measure what they say (the figures
themselves come from the full commands, see the README)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.broker


def bench(*args: str) -> tuple[int, dict]:
    r = subprocess.run([sys.executable, "-m", "streamrnn", "bench", *args, "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode in (0, 1), r.stderr[-3000:]
    return r.returncode, json.loads(r.stdout)


def test_bench_journal_smoke():
    _, r = bench("journal", "--streams", "2", "--seconds", "3", "--rounds", "1")
    assert r["off"]["messages_per_s"] > 0 and r["on"]["messages_per_s"] > 0
    assert r["on"]["records_per_sync"] >= 1 and r["on"]["journal_sync_ms"] > 0  # the journal was written and synced
    assert r["off"]["journal_sync_ms"] != r["off"]["journal_sync_ms"]  # NaN: no journal in the 'off' daemon
    assert r["cpu_ratio"] > 0 and r["latency_ratio"] > 0


def test_bench_soak_smoke():
    code, r = bench("soak", "--streams", "2", "--minutes", "0.3", "--warmup", "0.1")
    assert r["frames"] > 0 and r["checkpoints"] >= 0 and len(r["samples"]) >= 2
    assert r["rss_min_mb"] > 50 and r["spread"] >= 0 and code == (0 if r["flat"] else 1)
