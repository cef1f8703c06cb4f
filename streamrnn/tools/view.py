"""The demo's live view: per stream, a chart of the key variable's recent values and its forecast
fan with the band, and a line that says what the model is doing; plain text, at most 79 columns.

Drawn by hand in a few dozen lines rather than with a terminal chart library: the demo installs
nothing more, and the view's width is exact, so it never wraps in an 80-column terminal.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

WIDTH = 79  # columns: an 80-column terminal never wraps a line this long
GUTTER = 10  # the y axis: a number in 8 columns, a space, the axis
ROWS = 5  # of a chart
FUTURE = 20  # columns of forecast steps at most; longer horizons are shown at evenly spread steps
HISTORY = WIDTH - GUTTER - 1  # the most past values a chart can hold (with a one-step forecast)


@dataclass
class Stream:
    """What the view keeps of one stream: its recent values of the key variable (measured or
    nowcast), and its latest forecast."""

    name: str
    past: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    values: list[float | None] = field(default_factory=list)
    lower: list[float | None] = field(default_factory=list)
    upper: list[float | None] = field(default_factory=list)
    version: int = 0
    skill: float | None = None
    ts: float = float("nan")

    def take(self, doc: dict, target: str) -> None:
        """A forecast message (as the schema has it) of this stream."""
        t = doc["targets"].get(target) or next(iter(doc["targets"].values()))
        self.past.append(math.nan if t["now"] is None else t["now"])
        self.values, self.lower, self.upper = t["values"], t["lower"], t["upper"]
        self.version, self.skill, self.ts = doc["model"]["version"], t["skill"], doc["ts"]


def number(x: float | None, width: int = 8) -> str:
    """``x`` in exactly ``width`` columns, 4 significant digits where they fit."""
    if x is None or not math.isfinite(x):
        return "-".rjust(width)
    for digits in (4, 3, 2, 1):
        s = f"{x:.{digits}g}"
        if len(s) <= width:
            return s.rjust(width)
    return f"{x:.0e}"[:width].rjust(width)


def _steps(horizon: int) -> list[int]:
    """The forecast steps (0-based) drawn, one a column: all of them up to FUTURE."""
    if horizon <= FUTURE:
        return list(range(horizon))
    return sorted({round(i * (horizon - 1) / (FUTURE - 1)) for i in range(FUTURE)})


def chart(s: Stream, target: str) -> list[str]:
    """The stream's title line, its chart rows, and the time axis below them."""
    steps = _steps(len(s.values))
    width = WIDTH - GUTTER - len(steps) - 1  # past columns, then the column of 'now', then the steps
    past = list(s.past)[-width:]
    fc = [s.values[k] for k in steps]
    lo, hi = [s.lower[k] for k in steps], [s.upper[k] for k in steps]
    seen = [x for x in past + fc + lo + hi if x is not None and math.isfinite(x)]
    k = steps[len(steps) // 2] + 1 if steps else 0
    mid = s.values[k - 1] if steps else None
    lo_k, hi_k = (s.lower[k - 1], s.upper[k - 1]) if steps else (None, None)
    half = (hi_k - lo_k) / 2 if lo_k is not None and hi_k is not None else None  # the band is symmetric
    skill = "   -  " if s.skill is None else f"{s.skill:+.3f}"
    title = f"{s.name:<12.12} v{s.version:<3} skill {skill}  now {number(past[-1] if past else None).strip()}"
    title += f"  +{k} {number(mid).strip()} ±{number(half).strip()}"
    if not seen:
        return [title[:WIDTH], "(no values yet)"]
    bottom, top = min(seen), max(seen)
    if top - bottom < 1e-12 * max(1.0, abs(top)):
        bottom, top = bottom - 0.5, top + 0.5
    rows = [[" "] * (width + 1 + len(steps)) for _ in range(ROWS)]

    def row(x: float | None) -> int | None:
        if x is None or not math.isfinite(x):
            return None
        return min(ROWS - 1, max(0, round((top - x) / (top - bottom) * (ROWS - 1))))

    for r in range(ROWS):
        rows[r][width] = "│"
    for c, x in enumerate(past, start=width - len(past)):
        if (r := row(x)) is not None:
            rows[r][c] = "•"
    for i, (f, a, b) in enumerate(zip(fc, lo, hi)):
        c = width + 1 + i
        ra, rb = row(b), row(a)  # the upper bound is drawn higher
        if ra is not None and rb is not None:
            for r in range(ra, rb + 1):
                rows[r][c] = "░"
        if (r := row(f)) is not None:
            rows[r][c] = "*"
    labels = {0: top, ROWS - 1: bottom, (ROWS - 1) // 2: (top + bottom) / 2}
    lines = [title[:WIDTH]]
    lines += [f"{number(labels.get(r)) if r in labels else ' ' * 8} ┤{''.join(cells)}" for r, cells in enumerate(rows)]
    right = "now" + f"+{len(s.values)}".rjust(len(steps) - 1)  # 'now' under the axis' mark, the last step under its column
    if len(right) > len(steps) + 2:  # a horizon of a step or two: no room between them
        right = f"now +{len(s.values)}"
    axis = f"-{len(past)} steps".ljust(width + 1 + len(steps) - len(right)) + right
    lines.append(" " * (GUTTER - 1) + "└" + "─" * width + "┴" + "─" * len(steps))
    lines.append((" " * GUTTER + axis)[:WIDTH])
    return lines


def status(m: dict[str, float] | None, last: str | None, min_frames: int) -> list[str]:
    """What the model is doing, in a line or two, from the daemon's metrics (None before they are
    up) and the outcome of the last retrain seen (``promoted``, ``rejected``, ``failed`` or None)."""
    if m is None:
        return ["status: starting (the daemon loads its model)"]
    version = int(m.get("streamrnn_model_version", 0))
    serving = f"model v{version} serves" if version else "persistence serves (no model has won yet)"
    held = [m.get(f'streamrnn_holdout_error{{model="{k}"}}', math.nan) for k in ("challenger", "champion", "persistence")]
    why = "        held-out error: challenger {:.3f}, champion {:.3f}, persistence {:.3f}".format(*held)
    if m.get("streamrnn_retrain_running", 0) >= 1:
        return [f"status: training a challenger; {serving}"]
    if last == "rejected":
        return [f"status: {serving}; challenger rejected", why]
    if last == "promoted":
        return [f"status: {serving}, promoted", why]
    if last == "failed":
        return [f"status: {serving}; retrain failed, see its log"]
    streams = max(1.0, m.get("streamrnn_streams_active", 0.0))
    frames = m.get("streamrnn_ring_frames", 0.0) / streams
    return [f"status: warming up, {frames:.0f} of {min_frames} frames a stream before the first fit", f"        {serving}"]


def screen(header: list[str], state: list[str], counts: str, streams: dict[str, Stream], target: str) -> str:
    """A whole screen: the header, the status and counts, a chart per stream; no line over WIDTH."""
    legend = f"{target}: measured or estimated •, forecast *, its band ░; v: model version"
    lines = [*header, *state, counts, legend, ""]
    for name in sorted(streams):
        lines += chart(streams[name], target) + [""]
    if not streams:
        lines.append("(waiting for the first forecasts ...)")
    return "\n".join(line[:WIDTH] for line in lines) + "\n"
