"""``streamrnn replay --fault-report``: what broken sensors do to the forecasts, per fault window.

The file is replayed twice, as it is and with the faults injected (:mod:`streamrnn.offline.faults`); in
the window of each fault (the forecasts made in the ``WINDOW`` rows from its onset) it scores the served forecast,
persistence (the held value) and each contender, on the faulted channel and on every other one,
steps 1..``STEPS``, in squared spreads (each column's deviation over the first 20 % of the rows, as
``--protocol online-tsf`` normalises). Beside them the bounds a fault must keep to:

- the faulted channel: served MSE at most persistence's plus ``SLACK`` times that channel's
  persistence MSE outside the fault windows;
- every other channel: served MSE at most ``OTHERS`` times the larger of its persistence MSE in
  the same rows and its served MSE there in the fault-free run;
- after the fault, from two lookbacks on, the faulted channel's served MSE is back to the
  fault-free run's (``RECOVERED`` times it, at most, or its persistence's);
- the faulted file as a whole: the served forecast below persistence at H = 1, 24, 48 (protocol).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from streamrnn.config import Settings
from streamrnn.engine.forecast import Forecast
from streamrnn.offline import faults, protocol, replay

STEPS, WINDOW, LOOKBACK = 24, 200, 96
SLACK, OTHERS, RECOVERED = 0.25, 1.05, 1.05
NAMES = ("served", "persistence", "recurrent", "linear")
KINDS_ONSETS = (0.4, 0.6, 0.8)  # where the standard suite puts its three onsets, as shares of the rows


def suite(kind: str, table: replay.Table, channels: list[str], seed: int = 0) -> list[faults.Fault]:
    """One kind at three onsets, each on another channel drawn by ``seed`` (one channel at a time)."""
    rows = min(np.unique(table.streams, return_counts=True)[1])
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(channels), size=min(3, len(channels)), replace=False)
    return [faults.Fault(kind, channels[c], int(rows * at), WINDOW) for c, at in zip(picks, KINDS_ONSETS)]


def _forecasts(table: replay.Table, settings: Settings) -> dict[str, dict[str, np.ndarray]]:
    """Per stream and forecaster, the forecasts (rows, H, targets) made at each of its rows in time
    order (NaN where none was made)."""
    kept: dict[str, dict[float, Forecast]] = {}

    def keep(fc: Forecast) -> None:
        kept.setdefault(fc.stream, {})[fc.ts] = fc

    replay.replay(table, settings, on_forecast=keep)
    h, t = settings.features.horizon, len(settings.features.targets)
    out = {}
    for stream in dict.fromkeys(table.streams):
        rows = _rows(table, stream)
        arrays = {n: np.full((len(rows), h, t), np.nan, np.float32) for n in ("served", "recurrent", "linear")}
        mine = kept.get(stream, {})
        for i, ts in enumerate(table.ts[rows]):
            fc = mine.get(float(ts))
            if fc is not None:
                arrays["served"][i] = fc.values
                for name, values in (fc.contenders or {}).items():
                    arrays[name][i] = values
        out[stream] = arrays
    return out


def _rows(table: replay.Table, stream: str) -> np.ndarray:
    rows = np.flatnonzero(np.asarray(table.streams) == stream)
    return rows[np.argsort(table.ts[rows], kind="stable")]


def _errors(values: np.ndarray, forecasts: dict[str, np.ndarray], std: np.ndarray, steps: int) -> dict[str, np.ndarray]:
    """Squared normalised errors (rows, steps, targets) of each forecaster, NaN where unscored."""
    n = len(values)
    truth = np.full((n, steps, values.shape[1]), np.nan)
    for k in range(steps):
        truth[: n - k - 1, k] = values[k + 1 :]
    out = {name: ((f[:, :steps] - truth) / std) ** 2 for name, f in forecasts.items()}
    out["persistence"] = ((protocol.held(values)[:, None, :] - truth) / std) ** 2
    return out


def _mse(err: np.ndarray, rows: slice | np.ndarray, target: int) -> float:
    e = err[rows, :, target]
    return float(np.nanmean(e)) if np.isfinite(e).any() else float("nan")


def clean(table: replay.Table, settings: Settings) -> dict[str, dict[str, np.ndarray]]:
    """The fault-free run's forecasts, for :func:`run` (one run serves every spec of a file)."""
    return _forecasts(table, settings)


def run(table: replay.Table, settings: Settings, spec: list[faults.Fault], seed: int = 0, fault_free: dict | None = None) -> dict:
    """Replay ``table`` with ``spec`` injected (and clean, unless ``fault_free`` holds that run's
    forecasts already); the fault windows' scores and bounds."""
    targets = settings.features.targets
    columns = [table.columns.index(t) for t in targets]
    injector = faults.Injector(spec, tuple(settings.channels), seed)
    broken = replace(
        table, values=injector.table(table.streams, table.ts, table.values, [table.columns.index(c) for c in settings.channels])
    )
    clean_fc, broken_fc = fault_free or _forecasts(table, settings), _forecasts(broken, settings)
    steps = min(STEPS, settings.features.horizon)
    windows, tables = [], {"protocol": broken, "protocol_clean": table}
    pooled: dict[str, dict[str, protocol.Scores]] = {}
    for stream in dict.fromkeys(table.streams):
        rows = _rows(table, stream)
        values, clean_values = broken.values[np.ix_(rows, columns)], table.values[np.ix_(rows, columns)]
        _, std = protocol.normalisation(clean_values)
        err = _errors(values, broken_fc[stream], std, steps)
        clean = _errors(clean_values, clean_fc[stream], std, steps)
        mine = [f for f in spec if f.stream in (None, stream) and f.channel in targets]
        outside = np.ones(len(rows), bool)
        for f in mine:
            outside[max(0, f.start - steps) : max(f.end, f.start + WINDOW)] = False
        for f in mine:
            windows.append(_window(f, stream, err, clean, outside, targets))
        for key, fc in (("protocol", broken_fc), ("protocol_clean", clean_fc)):
            data = tables[key].values[np.ix_(rows, columns)]
            scores = protocol.evaluate(data, lambda i, s=fc[stream]["served"]: s[i], settings.features.horizon, family=False)
            if key not in pooled:
                pooled[key] = scores
            else:
                for name, sc in scores.items():
                    pooled[key][name].sum += sc.sum
                    pooled[key][name].n += sc.n
    whole = {key: protocol.table(p) for key, p in pooled.items()}
    return {"faults": [str(f) for f in spec], "steps": steps, "windows": windows, **whole}


def _window(f: faults.Fault, stream: str, err: dict, clean: dict, outside: np.ndarray, targets: tuple[str, ...] | list[str]) -> dict:
    """One fault window's scores: per channel and forecaster, and the bounds."""
    j = list(targets).index(f.channel)
    at = slice(f.start, f.start + WINDOW)
    after = slice(f.end + 2 * LOOKBACK, f.end + 2 * LOOKBACK + WINDOW)
    channels = {}
    for c, name in enumerate(targets):
        row = {n: _mse(err[n], at, c) for n in NAMES}
        row["clean_served"] = _mse(clean["served"], at, c)
        if c == j:
            normal = _mse(err["persistence"], outside, c)
            row["bound"] = row["persistence"] + SLACK * normal
            row["after"], row["after_clean"] = _mse(err["served"], after, c), _mse(clean["served"], after, c)
            row["after_persistence"] = _mse(err["persistence"], after, c)
            row["recovered"] = bool(
                np.isnan(row["after"]) or row["after"] <= RECOVERED * max(row["after_clean"], row["after_persistence"]) + 1e-12
            )
        else:
            row["bound"] = OTHERS * max(row["persistence"], row["clean_served"])
        row["ok"] = bool(np.isnan(row["served"]) or row["served"] <= row["bound"] + 1e-12)
        channels[name] = row
    return {"fault": str(f), "stream": stream, "channel": f.channel, "channels": channels}


def main(table: replay.Table, settings: Settings, spec: str | None, seed: int, report: str | Path | None) -> int:
    """``replay --fault-report``: the faults of ``spec``, or each kind at three onsets (:func:`suite`),
    scored per fault window beside one fault-free run, printed; 1 where a bound is not kept."""
    if spec:
        faults.injector(spec, settings.channels, seed)  # a bad spec is refused before any replay
        specs = {"inject": faults.parse(spec)}
    else:
        inputs = [t for t in settings.features.targets if t in settings.features.inputs]
        specs = {kind: suite(kind, table, inputs, seed) for kind in faults.KINDS}
    reports, every, fault_free = {}, True, clean(table, settings)
    for name, faulted in specs.items():
        rep = reports[name] = run(table, settings, faulted, seed, fault_free)
        print(format_report(rep) + "\n", flush=True)
        every &= kept(rep)
    if report:
        replay.write_report(report, reports)
    print("every bound kept" if every else "some bound NOT kept")
    return 0 if every else 1


def kept(rep: dict) -> bool:
    """Every bound of every window kept, and the file's served forecast below persistence."""
    windows = all(row["ok"] for w in rep["windows"] for row in w["channels"].values())
    recovered = all(w["channels"][w["channel"]]["recovered"] for w in rep["windows"])
    whole = all(r["streamrnn"] is not None and r["streamrnn"] < r["persistence"] for r in rep["protocol"].values())
    return windows and recovered and whole


def format_report(rep: dict) -> str:
    """Per window: the faulted channel's row, then the other channels' worst row (by served / bound)."""
    lines = [f"fault windows, steps 1..{rep['steps']}, MSE in squared spreads (persistence = the held value)"]
    head = f"  {'channel':<18}" + "".join(f"{n:>12}" for n in (*NAMES, "clean", "bound")) + "  ok"
    fmt = lambda x: f"{x:>12.4g}" if x == x else f"{'-':>12}"
    for w in rep["windows"]:
        lines += ["", f"{w['fault']} ({w['stream']})", head]
        mine = w["channels"][w["channel"]]
        others = {k: v for k, v in w["channels"].items() if k != w["channel"]}
        worst = max(others.items(), key=lambda kv: kv[1]["served"] / max(kv[1]["bound"], 1e-300), default=None)
        for label, row in [(f"{w['channel']} (faulted)", mine), *([(f"{worst[0]} (worst other)", worst[1])] if worst else [])]:
            cells = "".join(fmt(row[n]) for n in (*NAMES, "clean_served", "bound"))
            lines.append(f"  {label[:18]:<18}{cells}  {'yes' if row['ok'] else 'NO'}")
        back = "back" if mine["recovered"] else "NOT back"
        lines.append(f"  after +{2 * LOOKBACK}: served {mine['after']:.4g}, fault-free {mine['after_clean']:.4g}: {back}")
        bad = [k for k, v in others.items() if not v["ok"]]
        lines.append(
            f"  other channels within bounds: {len(others) - len(bad)} of {len(others)}" + (f" (not: {', '.join(bad)})" if bad else "")
        )
    if rep["protocol"]:
        lines += ["", "with the faults:", protocol.format_table(rep["protocol"])]
        lines += ["", "fault-free:", protocol.format_table(rep["protocol_clean"])]
    return "\n".join(lines)
