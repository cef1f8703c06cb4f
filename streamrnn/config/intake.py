"""How readings become frames: lateness, holding, the wall-clock close and the per-stream bounds."""

from __future__ import annotations

from pydantic import Field

from streamrnn.config.base import Section


class FrameSettings(Section):
    """How sensor readings become frames on the ``features.period`` grid (see frames.py)."""

    lateness: float | None = Field(None, ge=0, description="event-time seconds a tick waits for late readings; default half a period")
    max_hold: float | None = Field(None, gt=0, description="seconds a reading stays valid for later ticks; default one period")
    idle_close: float = Field(2.0, gt=0, description="wall-clock seconds of silence after which a stream's open ticks close")
    max_abs: float = Field(1e12, gt=0, description="readings of larger magnitude are refused as out of range")
    max_future: float = Field(
        300.0, gt=0, description="seconds a reading's ts may be ahead of the daemon's clock; further ahead it is refused as 'future'"
    )
    resync_after: float | None = Field(
        None,
        gt=0,
        description="wall-clock seconds a stream's readings may all be late, their event time running, before "
        "the stream is restarted on its new clock; default the longer of 60 s and 10 periods",
    )
    max_pending: int | None = Field(
        None,
        ge=1,
        description="readings held per stream for ticks still open; more are refused as 'overflow'. Default 4 "
        "x channels x (2 + lateness / period), at least 64",
    )
    max_open: float | None = Field(
        None,
        gt=0,
        description="wall-clock seconds a stream's tick may stay open while the stream keeps sending; then it "
        "closes. Default idle_close + 2 x (period + lateness)",
    )
