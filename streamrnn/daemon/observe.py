"""How the parts' state reaches the metrics (:mod:`streamrnn.daemon.metrics` declares them): the engines'
live scores, gate, streams and rings, the transport's connection and counts, the journal's, each
forecast published and each retrain's verdict. Read once a second, or at the event, by the daemon
and a shard alike."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from streamrnn.daemon.metrics import Metrics
from streamrnn.engine.scores import scored

if TYPE_CHECKING:
    from streamrnn.daemon.journal import Journal
    from streamrnn.engine.engine import Engine
    from streamrnn.engine.snapshot import Verdict
    from streamrnn.transport.base import Transport


def engines(m: Metrics, engines: list[Engine], ring_size: int, quiet_after: float = float("inf")) -> dict[str, float | None]:
    """The engines' live scores (pooled: the streams of a shard's partitions count as one
    engine's would), gate, streams and rings, as of their last scoring pass (never scoring
    early: that would move the bands); one path for a daemon's one engine and a shard's many.
    Returns each target's live skill, the mean over its steps, as the forecast messages carry it.
    Their counts are the caller's to carry (a shard's partitions move, with their counts)."""
    if not engines:  # a shard that holds no partition
        for gauge in (m.streams, m.quiet, m.ring_frames, m.ring_fill):
            gauge.set(0)
        return {}
    first = engines[0]
    scores = scored({k: sum(e.evaluator.live[k] for e in engines) for k in first.evaluator.live})
    m.set_quality(scores)
    m.set_gate(np.mean([e.gate_weights()[0][1] for e in engines], axis=0))
    m.streams.set(sum(len(e.streams) for e in engines))
    now = time.time()
    m.quiet.set(sum(int((now - e.bank.last_seen[list(e.bank.rows.values())] > quiet_after).sum()) for e in engines if e.bank.rows))
    held = [n for e in engines for n in e.ring_frames()]
    m.ring_frames.set(sum(held))
    m.ring_fill.set(sum(held) / (len(held) * ring_size) if held else 0.0)
    if m.stream_last is not None:
        m.set_streams({name: e.last_ts(name) for e in engines for name in e.streams})
    for name, n in zip(first.channels, sum(e.health.suspects() for e in engines)):
        m.suspect.labels(name).set(int(n))
    skill = {}
    for name, col in zip(first.spec.targets, scores["skill"].T):
        col = col[np.isfinite(col)]
        skill[name] = round(float(col.mean()), 4) if len(col) else None
    return skill


def link(m: Metrics, link: Transport, queued: int) -> None:
    """The broker connection's state and counts, and the messages waiting for the engine."""
    m.queue.set(queued)
    m.connected.set(1 if link.connected else 0)
    m.subscribed.set(1 if link.subscribed else 0)
    m.pending.set(link.pending)
    m.carry("link", link.counts)


def journal(m: Metrics, journal: Journal) -> None:
    """The journal's counts and its syncs' durations since the last call."""
    m.carry("journal", journal.counts)
    while journal.sync_seconds:
        m.journal_sync.observe(journal.sync_seconds.popleft())


def published(m: Metrics, streams: list[str], ts: list[float], reasons: list[str | None], closed: dict, default: float) -> None:
    """Forecasts just handed to the broker's client: each counted, with its latency from when its
    frame closed (``closed`` by (stream, ts), else ``default``; perf_counter), or its refusal."""
    sent, published = time.perf_counter(), 0
    for key, reason in zip(zip(streams, ts), reasons):
        if reason is None:
            published += 1
            m.latency.observe(sent - closed.get(key, default))
        else:
            m.publish_failed.labels(reason).inc()
    m.published.inc(published)


def retrain(m: Metrics, verdict: Verdict, seconds: float, outcome: str) -> None:
    """A retrain's verdict: its outcome and duration, and, where it fitted, its losses and the
    held-out errors it was judged by."""
    m.retrains.labels(outcome).inc()
    m.retrain_seconds.observe(seconds)
    m.retrain_running.set(0)
    if verdict.outcome != "failed":
        m.train_loss.set(verdict.report.train_loss)
        m.val_loss.set(verdict.report.val_loss)
        for model in ("challenger", "champion", "persistence"):
            m.holdout_error.labels(model).set(getattr(verdict, f"{model}_error"))
