"""``STREAMRNN_*`` environment variables: read as their settings' types, and refused by name when
they name no setting.

A variable is text by nature, so each is read as the type of the field it names (``"48"`` an int,
``"true"`` or ``"false"`` a bool, a list or a whole section as JSON) and then validated as strictly
as the TOML file's values: ``yes`` is no boolean. A variable that names no setting
(``STREAMRNN_MODELS__HIDDEN_SIZE``) would otherwise be ignored without a word.
"""

from __future__ import annotations

import json
import os
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

from pydantic import BaseModel
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

PREFIX = "STREAMRNN_"


def setting(model: type[BaseModel], key: str) -> tuple[tuple[str, ...], Any] | None:
    """The path (``("model", "hidden_size")``) and type that variable ``key`` names in ``model``,
    or None if it names none. A section alone (``STREAMRNN_MQTT``) is the whole section, as JSON."""
    if not key.upper().startswith(PREFIX):
        return None
    parts = tuple(key[len(PREFIX) :].lower().split("__"))
    field = model.model_fields.get(parts[0])
    if field is None or len(parts) > 2:
        return None
    section = _section_of(field.annotation)
    if len(parts) == 1:
        return parts, field.annotation
    if section is None or parts[1] not in section.model_fields:
        return None
    return parts, section.model_fields[parts[1]].annotation


def unknown(model: type[BaseModel], environ: Mapping[str, str] | None = None) -> list[str]:
    """The ``STREAMRNN_*`` variables that name no setting of ``model``."""
    env = os.environ if environ is None else environ
    return sorted(k for k in env if k.upper().startswith(PREFIX) and setting(model, k) is None)


class TypedEnv(PydanticBaseSettingsSource):
    """The settings source of the ``STREAMRNN_*`` variables, each read as its field's type."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything is read in __call__

    def __call__(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for key, text in os.environ.items():
            found = setting(self.settings_cls, key)
            if found is None:
                continue  # refused by name at load
            path, annotation = found
            if len(path) == 2:
                data.setdefault(path[0], {})[path[1]] = _text_as(text, annotation)
            elif _section_of(annotation) is not None:
                data.setdefault(path[0], {}).update(_json_or(text))
            else:
                data[path[0]] = _text_as(text, annotation)
        return data


def _json_or(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _section_of(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _text_as(text: str, annotation: Any) -> Any:
    """``text`` as the type of ``annotation``, or unchanged for the validator to refuse."""
    kinds = typing.get_args(annotation) if typing.get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    t = text.strip()
    for kind in kinds:
        if typing.get_origin(kind) is list:
            return _json_or(text)
        if kind is bool and t.lower() in ("true", "false", "1", "0"):
            return t.lower() in ("true", "1")
        if kind is int and re.fullmatch(r"[+-]?\d+", t):
            return int(t)
        if kind is float and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", t):
            return float(t)
        if typing.get_origin(kind) is Literal and re.fullmatch(r"[+-]?\d+", t) and int(t) in typing.get_args(kind):
            return int(t)
    return text
