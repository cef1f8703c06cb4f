"""``streamrnn replay``: a CSV through the engine, in order, one frame at a time, retraining as in production.

The file is read in full first (it is a file, not a stream), but the engine sees each row only
when its turn comes: no forecast is made with a value from a later row.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import numpy as np

from streamrnn.atomic import replacing, write_text
from streamrnn.config import Settings
from streamrnn.engine import model
from streamrnn.engine.engine import Engine
from streamrnn.engine.forecast import Forecast
from streamrnn.engine.frame import Frame
from streamrnn.engine.scores import finite_or_none
from streamrnn.learning import judge


@dataclass
class Table:
    """A CSV as columns: event times, stream ids and the numeric columns (NaN where empty)."""

    ts: np.ndarray
    streams: list[str]
    columns: list[str]
    values: np.ndarray  # (rows, columns)
    period: float
    dropped: list[str] = field(default_factory=list)  # numeric-looking columns left out, and why


def _time(cell: str) -> float:
    """Unix seconds or an ISO 8601 time; NaN for a cell that is neither."""
    try:
        return float(cell)
    except ValueError:
        try:
            dt = datetime.fromisoformat(cell.strip())
        except ValueError:
            return math.nan
        return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _number(cell: str) -> float:
    cell = cell.strip()
    return float(cell) if cell and cell.lower() not in ("nan", "na", "null", "none") else math.nan


def read_table(
    path: str | Path, time_column: str | None = "", stream_column: str | None = None, period: float | None = None, sampled: list[str] = ()
) -> Table:
    """Read ``path``; ``time_column`` '' means the first column, None means rows are ``period`` apart.

    Columns in ``sampled`` are sample-and-hold instruments (analysers): a value equal to the row
    before it in the same stream is not a new measurement and becomes missing. A column with a cell
    that is not a number is left out, and ``dropped`` says which cell (file row numbers from 1, the
    header being row 1).
    """
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise ValueError(f"{path}: no data rows")
    header = [h.strip() for h in rows[0]]
    numbered = [(n, r) for n, r in enumerate(rows[1:], start=2) if r]
    body = [r for _, r in numbered]
    guessed = time_column == ""  # the first column, taken for the time: checked that it is one
    if guessed:
        time_column = header[0]
    for name in (time_column, stream_column):
        if name is not None and name not in header:
            raise ValueError(f"{path}: no column {name!r} (columns: {', '.join(header)})")
    cols, values, dropped = _numeric(header, numbered, {time_column, stream_column})
    streams = [r[header.index(stream_column)] for r in body] if stream_column else ["stream"] * len(body)
    ts = _times(body, header, time_column, streams, period)
    if time_column is not None:
        _check_times(path, numbered, ts, streams, header.index(time_column), time_column, guessed)
    if not period:
        diffs = np.diff(np.unique(ts))
        if not len(diffs):
            raise ValueError(f"{path}: cannot infer the period from one time stamp; give --period")
        period = float(np.median(diffs))
    unknown = [c for c in sampled if c not in cols]
    if unknown:
        raise ValueError(f"--sampled names columns that are not numeric columns of {path}: {unknown}")
    for c in sampled:
        _sample_and_hold(values[:, cols.index(c)], streams)
    return Table(ts, streams, cols, values, period, dropped)


def _numeric(header: list[str], numbered: list[tuple[int, list[str]]], skip: set) -> tuple[list[str], np.ndarray, list[str]]:
    """The columns whose every cell is a number (or empty), as (names, values (rows, columns));
    and, for each column left out although some of its cells are numbers, where and why."""
    cols, numeric, dropped = [], [], []
    for i, h in enumerate(header):
        if h in skip:
            continue
        col, bad = [], None
        for n, r in numbered:
            try:
                col.append(_number(r[i]))
            except (ValueError, IndexError):
                bad = (n, r[i] if i < len(r) else None)
                break
        if bad is None:
            cols.append(h)
            numeric.append(col)
        elif any(math.isfinite(x) for x in col):  # a numeric column spoilt by a cell, not a text column
            cell = "no cell" if bad[1] is None else f"{bad[1]!r}"
            dropped.append(f"column {h!r} left out: row {bad[0]} has {cell}, not a number (empty, nan or na mean missing)")
    values = np.array(numeric, dtype=np.float64).T.reshape(len(numbered), len(cols))
    return cols, values, dropped


def _times(body: list[list[str]], header: list[str], time_column: str | None, streams: list[str], period: float | None) -> np.ndarray:
    """Each row's event time: from its time column, else its place in its stream, ``period`` apart."""
    if time_column is not None:
        ti = header.index(time_column)
        return np.array([_time(r[ti]) for r in body])
    if not period:
        raise ValueError("--period is needed when the file has no time column")
    per_stream: dict[str, int] = {}
    ts = np.empty(len(body))
    for j, s in enumerate(streams):
        n = per_stream.get(s, 0)
        ts[j], per_stream[s] = n * period, n + 1
    return ts


def _check_times(
    path: str | Path, numbered: list[tuple[int, list[str]]], ts: np.ndarray, streams: list[str], at: int, name: str, guessed: bool
) -> None:
    """Raise ValueError where the time column is no time: a cell that is not one, or (the first
    column, taken for the time) one that goes back within a stream."""
    hint = "name the time column with --time-column NAME, or give --time-column none --period SECONDS for rows a period apart"
    what = f"{path}: column {name!r}" + (" (the first, taken for the time)" if guessed else "")
    bad = np.flatnonzero(~np.isfinite(ts))
    if len(bad):
        n, row = numbered[bad[0]]
        raise ValueError(f"{what} is not a time: row {n} has {row[at]!r}; {hint}")
    if guessed:
        last: dict[str, float] = {}
        for (n, _), t, s in zip(numbered, ts, streams):
            if t < last.get(s, -math.inf):
                where = f" in stream {s!r}" if len(set(streams)) > 1 else ""
                raise ValueError(f"{what} does not look like a time: row {n} goes back from {last[s]:g} to {t:g}{where}; {hint}")
            last[s] = t


def _sample_and_hold(column: np.ndarray, streams: list[str]) -> None:
    """A value equal to its stream's last one is no new measurement: missing, in place."""
    last: dict[str, float] = {}
    for r, s in enumerate(streams):
        v = column[r]
        if v == last.get(s):
            column[r] = math.nan
        elif not math.isnan(v):
            last[s] = v


def _progress(done: int, total: int, start: float, out: TextIO) -> None:
    width = 30
    fill = int(width * done / max(total, 1))
    rate = done / max(time.perf_counter() - start, 1e-9)
    out.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {done}/{total} frames {rate:,.0f}/s")
    out.flush()


def replay(
    table: Table,
    settings: Settings,
    out: str | Path | None = None,
    progress: bool = False,
    save_model: str | Path | None = None,
    start: model.StreamRNN | None = None,
    version: int = 0,
    on_forecast: Callable[[Forecast], None] | None = None,
) -> dict:
    """Stream ``table`` through a fresh engine (serving ``start`` first, if given); write forecasts
    to ``out`` and hand each to ``on_forecast``; return the report. ``save_model``: where to write the
    final serving model."""
    engine = Engine(settings, start, version)
    t0 = time.perf_counter()
    with replacing(out) if out else nullcontext() as sink:  # all of it, or the file as it was (Ctrl-C)
        writer = csv.writer(sink) if sink else None
        if writer:
            writer.writerow(["stream", "ts", "target", "step", "value", "lower", "upper"])
        _run(engine, table, writer, progress, on_forecast)
    if save_model:
        model.save(save_model, engine.model, engine.version)
    return report(engine, time.perf_counter() - t0)


def _run(engine: Engine, table: Table, writer, progress: bool, on_forecast: Callable[[Forecast], None] | None) -> None:
    """Every frame of ``table`` through ``engine``, retraining in line; each forecast written and handed on."""
    start, last_draw, total = time.perf_counter(), 0.0, len(table.ts)
    for done, frames in _ticks(table, engine.channels):
        for fc in engine.step(frames):
            if writer:
                _write(writer, fc)
            if on_forecast:
                on_forecast(fc)
        if engine.retrain_due:
            judge.in_line(engine)
        elif engine.linear_due:
            judge.linear_in_line(engine)
        if progress and time.perf_counter() - last_draw > 0.2:
            _progress(done, total, start, sys.stderr)
            last_draw = time.perf_counter()
    if progress:
        _progress(total, total, start, sys.stderr)
        sys.stderr.write("\n")


def _ticks(table: Table, channels: tuple[str, ...]) -> Iterator[tuple[int, list[Frame]]]:
    """The table's rows as frames of ``channels``, a tick's worth at a time in time order (ties in
    file order), with the rows done so far."""
    index = [table.columns.index(c) for c in channels]
    order = np.lexsort((np.arange(len(table.ts)), table.ts))
    i, total = 0, len(order)
    while i < total:
        j, tick = i, table.ts[order[i]]
        while j < total and table.ts[order[j]] == tick:
            j += 1
        yield j, [Frame(table.streams[r], float(table.ts[r]), table.values[r, index]) for r in order[i:j]]
        i = j


def _write(writer: csv.writer, fc: Forecast) -> None:
    for j, target in enumerate(fc.targets):
        for k in range(fc.values.shape[0]):
            cells = (fc.values[k, j], fc.lower[k, j], fc.upper[k, j])
            writer.writerow([fc.stream, f"{fc.ts:.6f}", target, k + 1, *("" if math.isnan(c) else f"{c:.7g}" for c in cells)])


def report(engine: Engine, seconds: float) -> dict:
    """The replay's report: frames, time, retrain outcomes and per-target scores by horizon."""
    sc = engine.scores()
    h = engine.spec.horizon
    targets = {}
    for j, name in enumerate(engine.spec.targets):
        col = lambda key: [finite_or_none(x) for x in sc[key][:, j]]
        targets[name] = {
            "horizons": list(range(1, h + 1)),
            "n": [int(x) for x in sc["n"][:, j]],
            "mse": col("mse"),
            "mae": col("mae"),
            "persistence_mse": col("persistence_mse"),
            "persistence_mae": col("persistence_mae"),
            "skill": col("skill"),
            "coverage": col("coverage"),
        }
    outcomes = {k: engine.counts[f"retrain_{k}"] for k in ("promoted", "rejected", "failed")}
    return {
        "frames": engine.frames_seen,
        "seconds": round(seconds, 3),
        "frames_per_second": round(engine.frames_seen / max(seconds, 1e-9), 1),
        "streams": len(engine.streams),
        "model": {"kind": engine.spec.kind, "version": engine.version},
        "retrains": outcomes,
        "retrain_seconds": round(sum(r.report.seconds for r in engine.results), 3),
        "coverage_nominal": engine.settings.evaluator.coverage,
        "targets": targets,
    }


def mean_skill(rep: dict, target: str) -> float:
    """Skill of ``target`` averaged over the horizons that were scored."""
    vals = [s for s in rep["targets"][target]["skill"] if s is not None]
    return float(np.mean(vals)) if vals else math.nan


def format_table(rep: dict) -> str:
    """A plain-text table of skill per target and horizon."""
    lines = [
        f"{rep['frames']} frames in {rep['seconds']:.1f} s ({rep['frames_per_second']:,.0f}/s); "
        f"retrains: {rep['retrains']['promoted']} promoted, {rep['retrains']['rejected']} rejected, "
        f"{rep['retrains']['failed']} failed; model {rep['model']['kind']} v{rep['model']['version']}"
    ]
    fmt = lambda x, p=4: "-" if x is None else f"{x:.{p}g}"
    for name, t in rep["targets"].items():
        lines.append("")
        lines.append(f"{name}: mean skill {mean_skill(rep, name):+.3f}")
        lines.append(f"  {'step':>4} {'n':>7} {'MSE':>10} {'persist.MSE':>11} {'skill':>7} {'coverage':>8}")
        for k, h in enumerate(t["horizons"]):
            skill = t["skill"][k]
            lines.append(
                f"  {h:>4} {t['n'][k]:>7} {fmt(t['mse'][k]):>10} {fmt(t['persistence_mse'][k]):>11} "
                f"{'-' if skill is None else f'{skill:+.3f}':>7} {fmt(t['coverage'][k], 3):>8}"
            )
    return "\n".join(lines)


def write_report(path: str | Path, rep: dict) -> None:
    write_text(path, json.dumps(rep, indent=2) + "\n")
