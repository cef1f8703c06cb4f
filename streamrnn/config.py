"""Settings: a TOML file, overridden by ``STREAMRNN_`` environment variables (nested with ``__``).

The defaults serve the built-in reactor simulator, so ``streamrnn`` runs with no file at all.
A wrong value fails at start with a message naming the field (:class:`ConfigError`).
"""

from __future__ import annotations

import contextvars
import fnmatch
import json
import re
import sys
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

if sys.version_info >= (3, 11):  # noqa: UP036 (requires-python is 3.10, where tomli stands in)
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from pydantic import BaseModel, ConfigDict, Field, FilePath, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from streamrnn import environment

_toml_path: contextvars.ContextVar[Path | None] = contextvars.ContextVar("streamrnn_toml", default=None)


class ConfigError(ValueError):
    """Invalid configuration; the message names every offending field."""


SECRETS = frozenset({"password"})  # field names whose values no output, error or log may show

# A path is written as a string in TOML and in the environment: the one field kind that is not strict.
AnyPath = Annotated[Path, Field(strict=False)]
AFile = Annotated[FilePath, Field(strict=False)]


class _Section(BaseModel):
    # strict: a TOML `true` is no number and "yes" no boolean; they are refused, not coerced
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


class ModelSettings(_Section):
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


# The built-in reactor's sensors (reactor.toml), as the simulator publishes them: what a configuration
# that names no features serves.
REACTOR = tomllib.loads(files("streamrnn").joinpath("reactor.toml").read_text(encoding="utf-8"))


class FeatureSettings(_Section):
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


class RingSettings(_Section):
    size: int = Field(4096, ge=16, le=10_000_000, description="frames kept per stream")


class StreamSettings(_Section):
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


class TrainerSettings(_Section):
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


class EvaluatorSettings(_Section):
    coverage: float = Field(0.9, gt=0, lt=1, description="nominal coverage of the interval bands")
    residuals: int = Field(500, ge=10, description="recent absolute errors kept per target and step")
    live_window: int = Field(1000, ge=10, description="scored forecasts that 'live' scores mostly reflect")


class LinearSettings(_Section):
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


class GateSettings(_Section):
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


class HealthSettings(_Section):
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


class FrameSettings(_Section):
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


class MqttSettings(_Section):
    """The broker connection and the topic templates (``{stream}``, ``{feature}``, ``{instance}``)."""

    url: str = "mqtt://127.0.0.1:1883"
    instance: str = Field("default", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="names this daemon in its client id and status topic")
    client_id: str | None = Field(None, max_length=128, description="default streamrnn-{instance}; fixed, so the broker keeps the session")
    username: str | None = None
    password: SecretStr | None = Field(None, description="better: password_file, or STREAMRNN_MQTT__PASSWORD; never printed")
    password_file: AFile | None = Field(
        None, description="file whose first line is the password (a systemd credential, a Kubernetes secret)"
    )
    tls_ca: AFile | None = Field(
        None, description="mqtts://: CA certificates the broker's certificate must chain to (default: the system's)"
    )
    tls_cert: AFile | None = Field(None, description="mqtts://: client certificate, for brokers that require one")
    tls_key: AFile | None = Field(None, description="mqtts://: the client certificate's private key")
    sensor_topic: str = "plant/{stream}/sensors/{feature}"
    frame_topic: str | None = "plant/{stream}/frame"
    forecast_topic: str = "plant/{stream}/forecast"
    status_topic: str = "streamrnn/{instance}/status"
    qos: Literal[0, 1, 2] = 1
    keepalive: int = Field(30, ge=5, le=3600)
    reconnect_min: float = Field(0.5, gt=0, description="seconds before the first reconnect attempt")
    reconnect_max: float = Field(30.0, gt=0, description="cap of the exponential, jittered reconnect backoff")
    max_payload: int = Field(65536, ge=64, description="bytes; larger payloads are refused")
    queue_size: int = Field(100_000, ge=1, description="messages held between the network thread and the engine")
    max_inflight: int = Field(1000, ge=1, le=65000, description="forecasts on the wire not yet acknowledged by the broker")
    out_queue: int = Field(
        50_000, ge=1, le=65000, description="forecasts held by the client, e.g. while disconnected (MQTT ids are 16 bits)"
    )
    accept_retained: bool = Field(
        False,
        description="take retained sensor messages (the broker's last value, replayed at each subscribe) as readings; "
        "by default they are old news, refused as 'retained'",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        check_url(v)
        return v

    @model_validator(mode="after")
    def _templates(self) -> MqttSettings:
        for name, need in (("sensor_topic", ("{stream}", "{feature}")), ("frame_topic", ("{stream}",)), ("forecast_topic", ("{stream}",))):
            tpl = getattr(self, name)
            if tpl is None:
                continue
            for part in need:
                if tpl.count(part) != 1:
                    raise ValueError(f"{name} {tpl!r} must contain {part} exactly once")
            for level in tpl.split("/"):
                if level not in need and any(c in level for c in "{}+#"):
                    raise ValueError(f"{name} {tpl!r}: a placeholder must fill a whole topic level")
        if "{stream}" in self.status_topic or any(c in self.status_topic for c in "+#"):
            raise ValueError(f"status_topic {self.status_topic!r} may use only {{instance}}")
        if self.reconnect_max < self.reconnect_min:
            raise ValueError("reconnect_max must not be below reconnect_min")
        tls = [name for name in ("tls_ca", "tls_cert", "tls_key") if getattr(self, name) is not None]
        if tls and not broker_address(self.url)[2]:
            raise ValueError(f"{', '.join(tls)} set, but url {self.url!r} is not mqtts://: TLS would not be used")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if (self.password is not None or self.password_file is not None) and not self.username:
            given = "password_file" if self.password_file is not None else "password"
            raise ValueError(f"{given} set without username: MQTT sends a password only with a user name, so it would be ignored")
        return self

    def secret(self) -> str | None:
        """The password, from ``password`` or the first line of ``password_file``."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            return (self.password_file.read_text().splitlines() or [""])[0]
        return None


def check_url(url: str) -> None:
    """Refuse what is not ``mqtt[s]://host[:port]`` or ``nats://host[:port]``; credentials in it above all, which would be
    shown wherever the URL is (logs, ``streamrnn config``, process lists). Raises ValueError."""
    u = urlsplit(url)
    if "@" in u.netloc:
        raise ValueError(
            "credentials do not go in the URL: give mqtt.username, and the password in mqtt.password_file or STREAMRNN_MQTT__PASSWORD"
        )
    if u.scheme not in ("mqtt", "tcp", "mqtts", "ssl", "nats") or not u.hostname:
        raise ValueError("must look like mqtt://host:port (or mqtts:// for TLS, nats:// for NATS JetStream)")
    try:
        _ = u.port  # raises on a port out of range or not a number
    except ValueError as e:
        raise ValueError(str(e)) from None


def redact_url(url: str) -> str:
    """The URL with any user and password replaced, for messages about a URL that was refused."""
    u = urlsplit(url)
    return u._replace(netloc="***@" + u.netloc.rsplit("@", 1)[1]).geturl() if "@" in u.netloc else url


def broker_address(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of an ``mqtt://`` or ``mqtts://`` URL, with the standard ports as defaults."""
    try:
        check_url(url)
    except ValueError as e:
        raise ConfigError(f"broker URL {redact_url(url)!r}: {e}") from None
    u = urlsplit(url)
    tls = u.scheme in ("mqtts", "ssl")
    return u.hostname or "127.0.0.1", u.port or (8883 if tls else 1883), tls


class DaemonSettings(_Section):
    grace: float = Field(10.0, gt=0, description="seconds to finish the frames in hand after SIGTERM")
    log_format: Literal["logfmt", "json"] = "logfmt"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    metrics_host: str = Field("127.0.0.1", description="address of the /metrics, /healthz, /readyz endpoint")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="port of that endpoint; none: not served")
    metrics_max_rate: float = Field(
        20.0, gt=0, description="scrapes of /metrics answered per second at most; more wait their turn (probes never do)"
    )
    stream_metrics: int = Field(0, ge=0, le=1000, description="export a series per stream for at most this many streams (0: none)")


class CheckpointSettings(_Section):
    """Where the daemon keeps what must survive a restart, and how often it saves it."""

    dir: AnyPath | None = Field(
        None,
        description="state directory for checkpoints and the journal; none: a restart starts afresh and messages "
        "are acknowledged on receipt",
    )
    every: float = Field(60.0, gt=0, description="seconds between two checkpoints (also written after each model swap and on SIGTERM)")
    keep: int = Field(3, ge=1, le=100, description="checkpoints kept; the journal reaches back to the oldest")


class ShardSettings(_Section):
    """Scale-out on NATS JetStream (``nats://`` URLs): the partitions streams map to, and the leases
    by which shards hold them."""

    partitions: int = Field(
        16,
        ge=1,
        le=1024,
        description="partitions the streams map to by stream id: at least the most shards you will run; fixed once the stream is made",
    )
    lease: float = Field(
        10.0,
        ge=1.0,
        le=600.0,
        description="seconds a shard's membership and claims live unrenewed: how long a dead shard's partitions wait for another",
    )
    retention: float = Field(86400.0, gt=0, description="seconds JetStream keeps sensor messages, acknowledged or not")
    max_bytes: int = Field(1 << 30, ge=1 << 20, description="bytes of sensor messages JetStream keeps at most, the oldest dropped first")


class Settings(BaseSettings):
    """Everything streamrnn reads at start."""

    model_config = SettingsConfigDict(
        env_prefix=environment.PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
        strict=True,
    )

    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(
        1,
        ge=0,
        description="torch threads of the serving engine (0: torch's default, one per core); more pay only for "
        "thousands of streams on idle cores: a thread waiting for a core the broker holds stalls "
        "the step",
    )
    model: ModelSettings = Field(default_factory=ModelSettings)
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    ring: RingSettings = Field(default_factory=RingSettings)
    streams: StreamSettings = Field(default_factory=StreamSettings)
    trainer: TrainerSettings = Field(default_factory=TrainerSettings)
    evaluator: EvaluatorSettings = Field(default_factory=EvaluatorSettings)
    linear: LinearSettings = Field(default_factory=LinearSettings)
    gate: GateSettings = Field(default_factory=GateSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    frames: FrameSettings = Field(default_factory=FrameSettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    checkpoint: CheckpointSettings = Field(default_factory=CheckpointSettings)
    shards: ShardSettings = Field(default_factory=ShardSettings)
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)

    @model_validator(mode="after")
    def _fits(self) -> Settings:
        needed = self.trainer.window + self.features.horizon
        if self.ring.size < 2 * needed:
            raise ValueError(
                f"ring.size ({self.ring.size}) must hold at least two windows plus the horizon "
                f"(2 x (trainer.window + features.horizon) = {2 * needed})"
            )
        return self

    @property
    def lateness(self) -> float:
        f = self.frames
        return f.lateness if f.lateness is not None else self.features.period / 2

    @property
    def max_hold(self) -> float:
        f = self.frames
        return f.max_hold if f.max_hold is not None else self.features.period

    @property
    def resync_after(self) -> float:
        f = self.frames
        return f.resync_after if f.resync_after is not None else max(60.0, 10 * self.features.period)

    @property
    def max_pending(self) -> int:
        f = self.frames
        if f.max_pending is not None:
            return f.max_pending
        return max(64, int(4 * len(self.channels) * (2 + self.lateness / self.features.period)))

    @property
    def max_open(self) -> float:
        f = self.frames
        return f.max_open if f.max_open is not None else f.idle_close + 2 * (self.features.period + self.lateness)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, environment.TypedEnv(settings_cls)]
        path = _toml_path.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @property
    def target_only(self) -> list[str]:
        """Targets that are not inputs: the rarely measured key variables."""
        return [t for t in self.features.targets if t not in self.features.inputs]

    @property
    def channels(self) -> list[str]:
        """What the model reads, in order: the inputs, then the target-only features."""
        return self.features.inputs + self.target_only

    def redacted(self) -> dict[str, Any]:
        """The effective settings as plain data, secrets masked."""
        data = json.loads(self.model_dump_json())
        if self.mqtt.password is not None:
            data["mqtt"]["password"] = "**********"
        return data


def load(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Read settings from ``path`` (TOML) and the environment; raise :class:`ConfigError` if wrong."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
    unknown = environment.unknown(Settings)
    if unknown:
        raise ConfigError(
            "invalid configuration:\n"
            + "\n".join(
                f"  {key}: environment variable names no setting ({environment.PREFIX}<SECTION>__<KEY>, see `streamrnn config`)"
                for key in unknown
            )
        )
    token = _toml_path.set(path)
    try:
        return Settings(**overrides)
    except ValidationError as e:
        raise ConfigError(format_errors(e, path)) from None
    except ValueError as e:  # a TOML syntax error surfaces here
        raise ConfigError(f"{path}: {e}") from None
    finally:
        _toml_path.reset(token)


def format_errors(e: ValidationError, path: Path | None = None) -> str:
    """One line per invalid field: ``section.field: reason (got value)``."""
    where = f" in {path}" if path else ""
    lines = [f"invalid configuration{where}:"]
    for err in e.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        got = "" if err["type"] == "missing" or not err["loc"] else _shown(err["loc"], err.get("input"))
        if err["type"] == "extra_forbidden":
            msg, got = "unknown setting", ""
        lines.append(f"  {field}: {msg}{got}")
    return "\n".join(lines)


def _shown(loc: tuple, value: object) -> str:
    """`` (got ...)`` for an offending value, if showing it cannot show a secret: never a secret
    field's, never a whole section's (it may hold one), and a URL without its credentials."""
    if SECRETS & {str(p) for p in loc} or isinstance(value, (dict, list, BaseModel)):
        return ""
    if isinstance(value, str) and "://" in value:
        value = redact_url(value)
    return f" (got {value!r})"
