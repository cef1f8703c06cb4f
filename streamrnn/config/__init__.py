"""Settings: a TOML file, overridden by ``STREAMRNN_`` environment variables (nested with ``__``).

The defaults serve the built-in reactor simulator, so ``streamrnn`` runs with no file at all.
A wrong value fails at start with a message naming the field (:class:`ConfigError`). Each part's
section lives in a module of its own (forecasting, intake, broker, daemon); this one puts them
together. It may import the top level's basics (environment); every part may import it.
"""

from __future__ import annotations

import contextvars
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from streamrnn import environment
from streamrnn.config.base import SECRETS, ConfigError
from streamrnn.config.broker import MqttSettings, ShardSettings, broker_address, check_url, redact_url
from streamrnn.config.daemon import CheckpointSettings, DaemonSettings
from streamrnn.config.forecasting import (
    REACTOR,
    EvaluatorSettings,
    FeatureSettings,
    GateSettings,
    HealthSettings,
    LinearSettings,
    ModelSettings,
    RingSettings,
    StreamSettings,
    TrainerSettings,
)
from streamrnn.config.intake import FrameSettings

__all__ = [
    "CheckpointSettings",
    "ConfigError",
    "DaemonSettings",
    "EvaluatorSettings",
    "FeatureSettings",
    "FrameSettings",
    "GateSettings",
    "HealthSettings",
    "LinearSettings",
    "ModelSettings",
    "MqttSettings",
    "REACTOR",
    "RingSettings",
    "SECRETS",
    "Settings",
    "ShardSettings",
    "StreamSettings",
    "TrainerSettings",
    "broker_address",
    "check_url",
    "format_errors",
    "load",
    "redact_url",
]

_toml_path: contextvars.ContextVar[Path | None] = contextvars.ContextVar("streamrnn_toml", default=None)


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
