"""``replay --plot``: a picture of a replay, for a person to look at: the truth, a forecast step and
its band over the last rows of a stream, dates on the axis; below, each target's skill by step."""

from __future__ import annotations

import csv
import math
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

from streamrnn.offline.replay import Table, _number


def plotting() -> ModuleType:
    """matplotlib's pyplot, drawing to files; a clear error before any work where it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("--plot needs matplotlib: pip install 'streamrnn[plot]'") from e
    return plt


def plot(path: str | Path, forecasts_csv: str | Path, rep: dict, table: Table, target: str, step: int, window: int = 500) -> None:
    """The first stream's last ``window`` rows of ``target``: truth, the step-``step`` forecast for
    each row (made ``step`` rows before it) and its band; below, the skill of every target by step."""
    import matplotlib.dates as mdates

    plt = plotting()
    stream = table.streams[0]
    keep = [i for i, s in enumerate(table.streams) if s == stream][-window:]
    start = table.ts[keep[0]] if keep else -math.inf
    when, val, lo, hi = [], [], [], []
    with open(forecasts_csv, newline="") as f:
        for r in csv.DictReader(f):
            at = float(r["ts"]) + step * table.period  # the time it is a forecast for
            if r["stream"] == stream and r["target"] == target and int(r["step"]) == step and at >= start:
                when.append(at)
                val.append(_number(r["value"]))
                lo.append(_number(r["lower"]))
                hi.append(_number(r["upper"]))
    dates = lambda s: [datetime.fromtimestamp(x, UTC) for x in s]
    fig, (a, b) = plt.subplots(2, 1, figsize=(11, 7), gridspec_kw={"height_ratios": [2, 1]})
    a.fill_between(dates(when), lo, hi, color="tab:orange", alpha=0.25, lw=0, label=f"{rep['coverage_nominal']:.0%} band")
    a.plot(dates(when), val, lw=1.0, color="tab:orange", label=f"forecast {step} step{'s' if step > 1 else ''} ahead")
    a.plot(dates(table.ts[keep]), table.values[keep, table.columns.index(target)], ".-", ms=2.5, lw=0.4, color="black", label="truth")
    a.set_title(f"{target}, stream {stream}: the last {len(keep)} rows" if stream != "stream" else f"{target}: the last {len(keep)} rows")
    a.set_ylabel(target)
    a.xaxis.set_major_formatter(mdates.ConciseDateFormatter(a.xaxis.get_major_locator()))
    a.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    for name, tg in rep["targets"].items():
        b.plot(tg["horizons"], [math.nan if s is None else s for s in tg["skill"]], marker="o", ms=3, label=name)
    b.axhline(0.0, color="grey", lw=0.8)
    b.set_xlabel("forecast step")
    b.set_ylabel("skill vs persistence")
    if len(rep["targets"]) <= 12:
        b.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
