"""Channel health: per stream and channel, whether its sensor looks broken, judged as each frame closes.

A process engineer's checks, each relative to what that stream's channel has shown while healthy
(never an absolute limit, so they carry from plant to plant):

- out of range: further beyond the channel's healthy envelope (its recent extremes, fading with
  ``memory``) than ``range`` times the envelope's width (at least eight typical changes): a broken
  4-20 mA loop, a failed transmitter, a wrong unit;
- frozen: one value repeated ``frozen`` times longer than the channel's longest healthy run (and at
  least ``min_frozen`` times) while other channels of the stream move: a transmitter holding its
  last output (a frame that repeats the one before in every value is a gateway or historian
  repeating itself, and moves no run on);
- a spike: a move of more than ``spike`` typical changes away from both the last healthy value and
  the value before; the next value ends it (back near the old level: it was a spike; near the new
  one: a step, confirmed, and taken from there: the caller moves the channel's running mean by the
  step, so the model reads a new level as it reads the old one, not as a deviation);
- noisy: recent changes (a fast average) ``noisy`` times the channel's typical change: a loose
  connection, interference;
- silent: no value for as long as eight of its values were due (by the share of frames it sends
  a value in): a dead transmitter or link.

A channel that never moved is not judged: there is nothing to judge it against. A suspect channel is
healthy again after ``recover`` healthy-looking values in a row. A value out of range that holds
steady for ``accept_after`` frames, or moves there as the channel moves (the process noise alive)
for ``accept_moving`` frames, is the new level (a recalibration, a new operating point): the
envelope takes it in, and the caller re-centres the channel. A transmitter that failed sits still
where it failed; a process at a new operating point goes on moving. Only values that arrived enter
any judgement, so health, like every forecast, depends on nothing that had not arrived.

What the engine does with it: a suspect value is missing for the ring the trainer learns from and
for the evaluator's truth; the model and the linear contender read it as the forecast served for it
at the frame before where it is a target (:meth:`impute`), else as missing; and a suspect target's
forecast is its held value, persistence, until the channel is healthy again. While a channel of a
stream is suspect (an incident; not for a spike, nor for the first ``accept_moving`` frames of a
level out of range that may yet prove a new operating point), the stream's other targets are held
at the steps where the served forecast is not far better than holding (:meth:`hold`): the model and
the linear contender were fitted with the channel there, and a target that leans on it is forecast
worse than its held value while it is missing (docs/model.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np

from streamrnn.config import HealthSettings
from streamrnn.engine.channelstats import Stats

REASONS = ("healthy", "range", "frozen", "noisy", "spike", "silent")
HEALTHY, RANGE, FROZEN, NOISY, SPIKE, SILENT = range(len(REASONS))
_SILENT = 8  # values a channel is expected to have sent, missing in a row: it went silent
_FAST = 1.0 - 0.5 ** (1.0 / 8)  # the recent changes' average: a half-life of 8 values
_FLOOR = 8.0  # the envelope's width counts as at least this many typical changes


class Health(Stats):
    """Per bank row and channel: each channel's state, judged from its statistics while healthy;
    what the engine reads and serves in place of a suspect value."""

    def __init__(self, channels: int, cfg: HealthSettings) -> None:
        super().__init__(channels)
        self.cfg = cfg
        self._incident = np.zeros(0, bool)  # of the rows judged last: in an incident
        self._slow = 1.0 - 0.5 ** (1.0 / cfg.memory)
        self.counts: Counter[str] = Counter()  # suspect spells begun, by reason

    def judge(self, rows: np.ndarray, values: np.ndarray, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`check` as the engine serves it: the values with suspect ones missing, and which
        are suspect (None where none is); a value accepted at a new level becomes its channel's
        running mean in ``centre`` (the bank's, rows x channels), so the model reads it as familiar,
        and a confirmed step moves the mean with it: one sensor's sudden step is as likely a
        recalibration or a bias as a process that moved, and the other targets, reading its
        deviation from the mean, would follow it at once."""
        clean, suspect, level, step = self.check(rows, values)
        if level.any():
            centre[rows] = np.where(level, values, centre[rows])
        if step.any():
            centre[rows] += step
        # a spike, or a level out of range that may yet prove a new operating point, starts no incident
        state, young = self.state[rows], self.age[rows] < self.cfg.accept_moving
        self._incident = (suspect & (state != SPIKE) & ~((state == RANGE) & young)).any(axis=1)
        return clean, suspect if suspect.any() else None

    def hold(
        self,
        rows: np.ndarray,
        bad: np.ndarray,
        targets: np.ndarray,
        served: np.ndarray,
        now: np.ndarray,
        soft: np.ndarray,
        skill: Callable[[], np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, Callable[..., np.ndarray]]:
        """Serve the frames :meth:`judge` judged: suspect targets (``bad``, (B, T)) as held (their
        forecasts ``served``, (B, H, T), the value that arrived last), and so every other target of a
        stream in an incident at the steps where the served forecast's recent ``skill()`` over
        holding (H, T) is below ``health.incident_skill``: where it is far better, a missing input
        may cost it much and it still beats holding. A suspect target's ``now`` too, except a key
        variable's nowcast (``soft``: the soft sensor stands in for a broken analyser). Returns those, and how
        to blank the suspect targets of anything the evaluator keeps, so that none of it is scored:
        ``unscored(a, part, panel)`` for a (B, H, ..., T) array (``part``: which of axis 2; a
        ``panel`` of the batch's rows)."""
        held = self.raw[rows].take(targets, axis=1)  # (B, T)
        hold = bad[:, None, :]
        if self._incident.any():  # the skill is read only then
            keep = skill() >= self.cfg.incident_skill if skill is not None else False  # NaN: not known yet
            hold = hold | (self._incident[:, None, None] & ~np.asarray(keep))
        served = np.where(hold, held[:, None, :].astype(served.dtype), served)
        now = np.where(bad & ~soft, held, now)

        def unscored(a: np.ndarray, part: int | None = None, panel: np.ndarray | slice = slice(None)) -> np.ndarray:
            at = bad[panel][:, None, :]
            if a.ndim == 4:  # (B, H, parts, T): blank one part
                a = a.copy()
                a[:, :, part] = np.where(at, np.float32(np.nan), a[:, :, part])
                return a
            return np.where(at, np.float32(np.nan), a)

        return served, now, unscored

    def expected(self, rows: np.ndarray, ticks: np.ndarray, forecast: np.ndarray, targets: np.ndarray) -> None:
        """Keep the forecast served for each row's next tick (B, T; step 1, before any hold) of the
        ``targets`` (channel indices): what :meth:`impute` reads a suspect value as."""
        self._fit(rows)
        self.expect[rows[:, None], targets] = forecast
        self.due[rows] = ticks[:, None] + 1

    def impute(self, rows: np.ndarray, ticks: np.ndarray, values: np.ndarray, suspect: np.ndarray) -> np.ndarray:
        """The values (B, C) as the forecasters read them: a suspect value of a target that was
        forecast for this very tick is that forecast (the channel goes on as the process around it
        moves, instead of falling silent in the inputs every other target leans on); any other
        suspect value stays missing. Nothing imputed is learnt from or scored."""
        expect = self.expect[rows]
        ok = suspect & (self.due[rows] == ticks[:, None]) & np.isfinite(expect)
        return np.where(ok, expect, values)

    def check(self, rows: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Judge the values (B, C) that arrived for ``rows`` (distinct; NaN: none arrived). Returns
        the values with suspect ones as missing, which channels are suspect (B, C), which were just
        accepted at a new level (B, C), for the caller to re-centre, and the steps just confirmed
        (B, C; 0 where none): a spike that the next value showed to be a step, by how far the level
        moved from the last healthy value before it."""
        self._fit(rows)
        v = self._gather(rows)
        x, fresh = values, np.isfinite(values)
        was = v.state != HEALTHY
        spiked, before, peak = v.state == SPIKE, v.last.copy(), v.raw.copy()
        with np.errstate(invalid="ignore"):
            reason, outside, step, moved = self._judge(v, x, fresh, was)
            accept = self._move(v, reason, outside, step, fresh, was)
            confirmed = spiked & fresh & (v.state == HEALTHY) & (np.abs(x - peak) < np.abs(x - before))
        suspect = v.state != HEALTHY
        self._learn(v, x, fresh & ~suspect, moved & ~was, accept)
        v.raw = np.where(fresh, x, v.raw)
        self._put(rows, v)
        return np.where(suspect, np.nan, x), suspect, accept, np.where(confirmed, x - before, 0.0)

    def _judge(self, v: SimpleNamespace, x: np.ndarray, fresh: np.ndarray, was: np.ndarray) -> tuple[np.ndarray, ...]:
        """What is wrong with each value, if anything: the reason (B, C), out of range, the step
        from the value before, whether it moved; the runs and recent changes moved on."""
        cfg = self.cfg
        step = np.abs(x - v.raw)
        same = fresh & (step == 0)
        moved = fresh & ~same & (step == step)  # a change from the value before
        v.longest = np.where(moved & ~was, np.maximum(v.longest, v.run), v.longest)  # a healthy run ended
        # a frame whose every value is the one before is a gateway or historian repeating its last
        # frame, not a sensor holding its output: it moves no channel's run on
        repeat = (same | ~fresh).all(axis=1, keepdims=True) & (fresh.sum(axis=1, keepdims=True) > 1)
        v.run = np.where(fresh & ~repeat, np.where(same, v.run + 1, 0), v.run)
        judged = (v.seen >= cfg.warmup) & (v.change > 0)
        margin = cfg.range * np.maximum(v.high - v.low, _FLOOR * v.change)
        outside = fresh & judged & ((x > v.high + margin) | (x < v.low - margin))
        # a sudden move away from both the last healthy value and the one before, large beside the
        # channel's typical change and its recent ones, beyond its recent trend: a spike, or a step
        # that the next value confirms
        lately = np.maximum(v.change, v.fast)
        away = x - v.last
        spike = fresh & judged & (np.abs(away) > cfg.spike * lately) & (np.abs(x - v.raw - v.trend) > cfg.spike * lately)
        # the recent changes between values in range (from the last healthy one after a suspect one)
        jump = np.where((v.state == RANGE) | (v.state == SPIKE), away, x - v.raw)
        into = fresh & ~outside & ~spike & (jump == jump)
        v.fast = np.where(into, np.where(np.isnan(v.fast), np.abs(jump), v.fast + _FAST * (np.abs(jump) - v.fast)), v.fast)
        v.trend = np.where(into, np.where(np.isnan(v.trend), jump, v.trend + _FAST * (jump - v.trend)), v.trend)
        frozen = judged & (v.run >= np.maximum(cfg.frozen * v.longest, cfg.min_frozen))
        noisy = fresh & judged & (v.fast - np.abs(v.trend) > cfg.noisy * v.change)  # a ramp is no noise
        # no value for as long as _SILENT of them were due: the sensor or its link went silent
        v.frames = v.frames + 1
        v.rate = np.where(np.isnan(v.rate), fresh, v.rate + np.maximum(self._slow, 1.0 / v.frames) * (fresh - v.rate))
        v.gap = np.where(fresh, 0, v.gap + 1)
        silent = judged & (v.gap * v.rate >= _SILENT)
        # the first reason that holds, in this order (np.select's order, without its cost)
        reasons = np.where(
            outside, RANGE, np.where(frozen, FROZEN, np.where(spike, SPIKE, np.where(noisy, NOISY, np.where(silent, SILENT, HEALTHY))))
        )
        return reasons, outside, step, moved

    def _move(
        self, v: SimpleNamespace, reason: np.ndarray, outside: np.ndarray, step: np.ndarray, fresh: np.ndarray, was: np.ndarray
    ) -> np.ndarray:
        """Each channel's state after these values: a spell begins with its reason and keeps it until
        ``recover`` healthy-looking values in a row (one, after a spike) or a new level ends it.
        Returns which were accepted at a new level (or as noise that goes on: the new normal)."""
        bad = reason != HEALTHY
        v.calm = np.where(fresh, np.where(bad, 0, v.calm + 1), v.calm)
        holds = np.where(v.state == NOISY, bad, outside & (step <= _FLOOR * v.change))
        v.steady = np.where(fresh & was, np.where(holds, v.steady + 1, 0), v.steady)
        # out of range and moving as the channel moves: the process is there, at a new operating point
        lives = outside & (step > 0) & (step <= self.cfg.spike * v.change)
        v.alive = np.where(fresh & was, np.where(lives, v.alive + 1, np.where(outside, v.alive, 0)), v.alive)
        accept = was & ((v.steady >= self.cfg.accept_after) | (v.alive >= self.cfg.accept_moving))
        v.change = np.where(accept & (v.state == NOISY), v.fast, v.change)  # the new normal's changes
        recover = np.where(v.state == SPIKE, 1, self.cfg.recover)
        # a spell begins with its reason; a spike that the next value shows to be something else
        # (out of range, say) goes on for that reason
        begin = bad & (~was | ((v.state == SPIKE) & (reason != SPIKE)))
        v.state = np.where(begin, reason, np.where(accept | (~bad & (v.calm >= recover)), HEALTHY, v.state))
        v.steady, v.alive = np.where(accept, 0, v.steady), np.where(accept, 0, v.alive)
        v.age = np.where(v.state == HEALTHY, 0, v.age + 1)  # frames into the spell
        for code in reason[begin]:
            self.counts[REASONS[code]] += 1
        return accept

    def _learn(self, v: SimpleNamespace, x: np.ndarray, ok: np.ndarray, moved: np.ndarray, accept: np.ndarray) -> None:
        """The healthy values' statistics: the typical change of a value that changed (``moved``,
        from a healthy one), the envelope and its centre, which a new level joins."""
        a = np.maximum(self._slow, 1.0 / (v.seen + 1))  # a plain mean until the memory is full
        d = np.abs(x - v.last)
        grow = ok & moved & np.isfinite(v.last)
        v.change = np.where(grow, np.where(np.isnan(v.change), d, v.change + a * (d - v.change)), v.change)
        start = ok & np.isnan(v.mean)
        v.mean = np.where(start | accept, x, np.where(ok, v.mean + a * (x - v.mean), v.mean))
        v.high = np.where(start, x, np.where(ok, np.maximum(x, v.high - a * (v.high - v.mean)), v.high))
        v.low = np.where(start, x, np.where(ok, np.minimum(x, v.low + a * (v.mean - v.low)), v.low))
        v.seen = v.seen + (ok & moved)  # healthy changes: a channel that never moved is never judged
        v.last = np.where(ok, x, v.last)

    def suspects(self) -> np.ndarray:
        """Per channel, the streams in which it is suspect now (C,)."""
        return (self.state != HEALTHY).sum(axis=0)
