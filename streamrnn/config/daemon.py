"""One box: the endpoint, logs and watchdog, and its checkpoints and journal."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from streamrnn.config.base import AnyPath, Section


class DaemonSettings(Section):
    grace: float = Field(10.0, gt=0, description="seconds to finish the frames in hand after SIGTERM")
    log_format: Literal["logfmt", "json"] = "logfmt"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    metrics_host: str = Field("127.0.0.1", description="address of the /metrics, /healthz, /readyz endpoint")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="port of that endpoint; none: not served")
    metrics_max_rate: float = Field(
        20.0, gt=0, description="scrapes of /metrics answered per second at most; more wait their turn (probes never do)"
    )
    stream_metrics: int = Field(0, ge=0, le=1000, description="export a series per stream for at most this many streams (0: none)")


class CheckpointSettings(Section):
    """Where the daemon keeps what must survive a restart, and how often it saves it."""

    dir: AnyPath | None = Field(
        None,
        description="state directory for checkpoints and the journal; none: a restart starts afresh and messages "
        "are acknowledged on receipt",
    )
    every: float = Field(60.0, gt=0, description="seconds between two checkpoints (also written after each model swap and on SIGTERM)")
    keep: int = Field(3, ge=1, le=100, description="checkpoints kept; the journal reaches back to the oldest")
