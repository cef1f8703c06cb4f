"""What the engine and the learning part read: the model, the features and their grid (the built-in
reactor's by default, ``reactor.toml``), the rings, the streams' bounds, the trainer, the
evaluator, the linear contender, the gate, channel health."""

from __future__ import annotations

import fnmatch
import re
import sys
from importlib.resources import files
from typing import Literal

from pydantic import Field, field_validator

if sys.version_info >= (3, 11):  # noqa: UP036 (requires-python is 3.10, where tomli stands in)
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from streamrnn.config.base import Section

# The built-in reactor's sensors (reactor.toml), as the simulator publishes them: what a configuration
# that names no features serves.
REACTOR = tomllib.loads(files("streamrnn").joinpath("reactor.toml").read_text(encoding="utf-8"))


class ModelSettings(Section):
    """The recurrent core as ``torch.nn.RNN``/``LSTM``/``GRU`` take it, plus the forecast head."""

    kind: Literal["rnn", "lstm", "gru"] = "gru"
    nonlinearity: Literal["tanh", "relu"] = "tanh"
    hidden_size: int = Field(64, ge=1, le=4096)
    num_layers: int = Field(2, ge=1, le=16)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    bias: bool = True
    bidirectional: bool = False
    head_hidden: int = Field(64, ge=1, le=4096)
    centre_halflife: float = Field(128.0, ge=1.0, description="steps: inputs enter as deviations from a running mean of this half-life")

    @field_validator("bidirectional")
    @classmethod
    def _causal(cls, v: bool) -> bool:
        if v:
            raise ValueError(
                "bidirectional networks are refused: a stream is forecast as it arrives, and the "
                "backward direction would need frames that have not arrived yet"
            )
        return v


class FeatureSettings(Section):
    """What is read, what is forecast, and on which grid."""

    inputs: list[str] = Field(default_factory=lambda: list(REACTOR["auxiliaries"]))
    targets: list[str] = Field(default_factory=lambda: [*REACTOR["auxiliaries"], REACTOR["key"]])
    period: float = Field(float(REACTOR["period"]), gt=0, description="seconds between two steps")
    horizon: int = Field(10, ge=1, le=1000, description="forecast steps H")

    @field_validator("inputs", "targets")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("must name at least one feature")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate names in {v}")
        for name in v:
            if not name or any(c in name for c in "/+#\x00") or name != name.strip():
                raise ValueError(f"{name!r} is not a valid feature name (no '/', '+', '#', blanks)")
        return v


class RingSettings(Section):
    size: int = Field(4096, ge=16, le=10_000_000, description="frames kept per stream")


class StreamSettings(Section):
    max_streams: int = Field(1000, ge=1, le=1_000_000)
    idle_timeout: float = Field(3600.0, gt=0, description="seconds without a frame before a stream is evicted")
    allow: list[str] = Field(
        default_factory=list,
        description="stream-id patterns served (shell globs: 'reactor-*'); others are refused as 'stream'. Empty: every valid id",
    )
    probation: int = Field(
        10,
        ge=1,
        description="frames a new stream sends before it is established; at streams.max_streams a new stream "
        "displaces the probationer heard least recently, never an established one",
    )

    @field_validator("allow")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        for pattern in v:
            if not pattern or pattern != pattern.strip() or "/" in pattern:
                raise ValueError(f"{pattern!r} is not a stream-id pattern (a glob such as 'reactor-*', no '/' or blanks)")
        return v

    def allowed(self) -> re.Pattern[str] | None:
        """One regular expression for the ``allow`` globs, or None when every id is allowed."""
        return re.compile("|".join(fnmatch.translate(p) for p in self.allow)) if self.allow else None


class TrainerSettings(Section):
    enabled: bool = Field(True, description="retrain at all (off: serve the starting model as it is)")
    retrain_every: int = Field(1000, ge=1, description="frames (all streams) between two retrains")
    interval: float | None = Field(None, gt=0, description="daemon: also retrain after this many seconds of wall time")
    deadline: float = Field(300.0, gt=0, description="daemon: a retrain still running after this many seconds is killed")
    min_frames: int = Field(256, ge=8, description="frames of the fullest stream before the first retrain")
    window: int = Field(64, ge=2, description="truncated-BPTT window L, in steps")
    segment_windows: int = Field(4, ge=1, description="windows per contiguous segment (hidden carried)")
    burn_in: int = Field(8, ge=0, description="first steps of a segment that do not count in the loss")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    clip: float = Field(1.0, gt=0, description="gradient norm clip")
    max_epochs: int = Field(30, ge=1)
    patience: int = Field(4, ge=1, description="epochs without validation gain before stopping")
    max_steps: int = Field(300, ge=1, description="optimiser steps per retrain at most")
    max_seconds: float = Field(30.0, gt=0, description="wall-clock budget of one retrain")
    val_fraction: float = Field(0.15, gt=0, lt=0.5, description="tail of the training part for early stop")
    holdout_fraction: float = Field(0.15, gt=0, lt=0.5, description="most recent part, for champion/challenger")
    rewarm: int = Field(512, ge=1, description="frames replayed per stream to warm a promoted model")
    key_dropout: float = Field(0.5, ge=0, le=1, description="share of key samples hidden to train the nowcast")
    seed: int = 0
    threads: int = Field(0, ge=0, description="torch threads for training (0: one, so that serving keeps the other cores)")
    priority: Literal["idle", "low", "normal"] = Field(
        "idle",
        description="CPU priority of the trainer process: idle (only CPU time nothing else wants: on a box kept "
        "busy by other work, retrains wait), low (nice 19: a small share however busy), normal",
    )
    max_memory: int | None = Field(
        None,
        ge=64,
        description="MiB the trainer process may allocate beyond its start; past it the retrain fails instead "
        "of the OOM killer striking. Default: half the machine's memory",
    )


class EvaluatorSettings(Section):
    coverage: float = Field(0.9, gt=0, lt=1, description="nominal coverage of the interval bands")
    residuals: int = Field(500, ge=10, description="recent absolute errors kept per target and step")
    live_window: int = Field(1000, ge=10, description="scored forecasts that 'live' scores mostly reflect")


class LinearSettings(Section):
    enabled: bool = Field(True, description="fit the linear contender at every retrain and offer it to the gate")
    lookback: int = Field(96, ge=2, le=4096, description="frames of every channel the linear contender reads")
    calendar: bool = Field(True, description="the linear contender reads the time of day and of the week of each frame's ts too")
    refit_every: int = Field(
        24,
        ge=1,
        description="frames (all streams) between two fits of the linear contender alone, between retrains (each retrain fits it too)",
    )
    max_examples: int = Field(
        8192,
        ge=64,
        description="examples the linear contender learns per fit at most (evenly spread over those that arrived since the last)",
    )


class GateSettings(Section):
    memory: int = Field(
        500, ge=10, description="scored forecasts per target and step after which one weighs 1/e in the contenders' error moments"
    )
    warmup: int = Field(
        50,
        ge=1,
        description="scored forecasts' worth (one in k at step k, whose errors overlap) a target and step needs "
        "before the gate moves it off the recurrent model",
    )
    trust: bool = Field(True, description="draw each stream's forecast to its held value where its own errors say a move does not pay")


class HealthSettings(Section):
    """When a channel's sensor looks broken (see health.py); the limits are relative to what each
    stream's channel has shown, never absolute."""

    enabled: bool = Field(True, description="judge each channel's health (off: every value is taken as it comes)")
    warmup: int = Field(64, ge=2, description="healthy values a channel shows before it is judged")
    range: float = Field(
        2.0, gt=0, description="a value further than this many widths of the channel's healthy envelope beyond it is out of range"
    )
    frozen: float = Field(2.0, ge=1, description="a value repeated this many times longer than the channel's longest healthy run is frozen")
    min_frozen: int = Field(8, ge=2, description="repeats of one value that are never frozen")
    spike: float = Field(8.0, gt=1, description="a move of this many typical changes away from the values before is a spike (or a step)")
    noisy: float = Field(6.0, gt=1, description="recent changes this many times the channel's typical change are noise")
    incident_skill: float = Field(
        0.5,
        le=1,
        description="while a sensor of a stream is suspect, its other targets are held at the steps where the served "
        "forecast's recent skill over holding is below this (where it is far better, it is served)",
    )
    recover: int = Field(3, ge=1, description="healthy-looking values in a row that end a suspect spell")
    accept_after: int = Field(256, ge=1, description="frames a steady value out of range holds before it is the new level")
    accept_moving: int = Field(
        8, ge=1, description="frames a level out of range that moves as the channel does holds before it is the new level"
    )
    memory: float = Field(1024.0, ge=16, description="frames over which the healthy envelope and typical change are measured (half-life)")
