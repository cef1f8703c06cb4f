"""The settings' common ground: the error a wrong value raises, the names whose values are secret, the
strict section every part's settings derive from."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, FilePath


class ConfigError(ValueError):
    """Invalid configuration; the message names every offending field."""


SECRETS = frozenset({"password"})  # field names whose values no output, error or log may show


# A path is written as a string in TOML and in the environment: the one field kind that is not strict.
AnyPath = Annotated[Path, Field(strict=False)]


AFile = Annotated[FilePath, Field(strict=False)]


class Section(BaseModel):
    # strict: a TOML `true` is no number and "yes" no boolean; they are refused, not coerced
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)
