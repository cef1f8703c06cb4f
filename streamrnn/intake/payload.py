"""Payload parsing: an MQTT message (topic, bytes) -> readings (stream, feature, ts, value), or a refusal.

Two kinds of topic, from templates: one sensor per message (``plant/{stream}/sensors/{feature}``,
payload ``{"ts": 1767225610.0, "value": 3.2}`` or a bare number, stamped with its arrival time) and
a whole frame per message (``plant/{stream}/frame``, payload ``{"ts": ..., "<feature>": value, ...}``).
Anything else is refused with a reason from :data:`REASONS`, which the daemon counts and logs.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import orjson

REASONS = ("oversize", "topic", "stream", "feature", "json", "type", "nonfinite", "range", "ts", "future")
STREAM_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
TS_MIN, TS_MAX = 0.0, 1e11  # 1970 .. year 5138: a ts outside is a unit or encoding error
_KNOWN = 65_536  # sensor topics remembered as (stream, feature); forgotten all at once past this


class Rejected(ValueError):
    """A message that cannot become readings; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(slots=True)
class Reading:
    stream: str
    feature: int  # index into the channels
    ts: float
    value: float


def _template(tpl: str) -> re.Pattern[str]:
    parts = []
    for level in tpl.split("/"):
        if level == "{stream}":
            parts.append("(?P<stream>[^/]+)")
        elif level == "{feature}":
            parts.append("(?P<feature>[^/]+)")
        else:
            parts.append(re.escape(level))
    return re.compile("^" + "/".join(parts) + "$")


def subscription(tpl: str) -> str:
    """The MQTT filter a topic template subscribes to: each placeholder level becomes ``+``."""
    return "/".join("+" if level in ("{stream}", "{feature}") else level for level in tpl.split("/"))


def stream_key(templates: list[str]) -> Callable[[str], str]:
    """The stream a topic names, by the ``{stream}`` level of the template with as many levels, and
    without checking it (cheap enough for the network thread; the parser judges the topic later):
    what the inbox serves in turn. Topics that fit no template share one key, ``""``."""
    at = {}
    for tpl in templates:
        levels = tpl.split("/")
        if "{stream}" in levels:
            at.setdefault(len(levels), levels.index("{stream}"))

    def key(topic: str) -> str:
        levels = topic.split("/")
        i = at.get(len(levels))
        return levels[i] if i is not None else ""

    return key


class Parser:
    """Turns messages into readings for the channels the model reads (inputs, then key variables)."""

    def __init__(
        self,
        channels: list[str] | tuple[str, ...],
        sensor_topic: str,
        frame_topic: str | None,
        max_payload: int,
        max_abs: float,
        max_future: float = math.inf,
        allow: re.Pattern[str] | None = None,
    ) -> None:
        """``max_future``: seconds a ts may be ahead of the message's arrival; ``allow``: the stream
        ids served (``streams.allow``), all valid ones if None."""
        self.index = {name: i for i, name in enumerate(channels)}
        self.sensor = _template(sensor_topic)
        self.frame = _template(frame_topic) if frame_topic else None
        self.max_payload, self.max_abs, self.max_future, self.allow = max_payload, max_abs, max_future, allow
        self._known: dict[str, tuple[str, int]] = {}  # sensor topic -> (stream, feature), once valid

    def parse(self, topic: str, payload: bytes, arrival: float) -> list[Reading]:
        """Readings of one message; raises :class:`Rejected`."""
        if len(payload) > self.max_payload:
            raise Rejected("oversize", f"{len(payload)} bytes > mqtt.max_payload {self.max_payload}")
        known = self._known.get(topic)
        if known is not None:
            ts, value = self._sensor_payload(payload, arrival)
            return [Reading(known[0], known[1], ts, value)]
        m = self.sensor.match(topic)
        if m is not None:
            stream = self._stream(m["stream"])
            feature = self.index.get(m["feature"])
            if feature is None:
                raise Rejected("feature", f"unknown feature {m['feature'][:64]!r}")
            ts, value = self._sensor_payload(payload, arrival)
            if len(self._known) >= _KNOWN:
                self._known.clear()
            self._known[topic] = (stream, feature)
            return [Reading(stream, feature, ts, value)]
        m = self.frame.match(topic) if self.frame else None
        if m is not None:
            return self._frame(self._stream(m["stream"]), payload, arrival)
        raise Rejected("topic", f"topic {topic[:128]!r} matches no template")

    def _stream(self, name: str) -> str:
        if not STREAM_RE.match(name):
            raise Rejected("stream", f"stream id {name[:64]!r} is not [A-Za-z0-9_.:-]{{1,128}}")
        if self.allow is not None and not self.allow.match(name):
            raise Rejected("stream", f"stream id {name[:64]!r} matches no pattern of streams.allow")
        return name

    def _sensor_payload(self, payload: bytes, arrival: float) -> tuple[float, float]:
        doc = _json(payload)
        if isinstance(doc, dict):
            if "value" not in doc or len(doc) > 1 + ("ts" in doc):
                raise Rejected("type", f"a sensor object has 'value' and optionally 'ts', got keys {sorted(doc)[:8]}")
            return self._ts(doc.get("ts"), arrival), self._number(doc["value"])
        return arrival, self._number(doc)

    def _frame(self, stream: str, payload: bytes, arrival: float) -> list[Reading]:
        doc = _json(payload)
        if not isinstance(doc, dict):
            raise Rejected("type", f"a frame is a JSON object of feature -> value, got {type(doc).__name__}")
        ts = self._ts(doc.get("ts"), arrival)
        out = []
        for name, raw in doc.items():
            if name == "ts":
                continue
            feature = self.index.get(name)
            if feature is None:
                raise Rejected("feature", f"unknown feature {name[:64]!r} in frame")
            if raw is None:
                continue  # explicitly missing
            out.append(Reading(stream, feature, ts, self._number(raw)))
        return out

    def _number(self, x: object) -> float:
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise Rejected("type", f"a value must be a number, got {type(x).__name__}")
        try:
            v = float(x)
        except OverflowError:
            raise Rejected("range", "integer too large for a float") from None
        if not math.isfinite(v):
            raise Rejected("nonfinite", f"value {v}")
        if abs(v) > self.max_abs:
            raise Rejected("range", f"|{v:g}| > frames.max_abs {self.max_abs:g}")
        return v

    def _ts(self, x: object, arrival: float) -> float:
        if x is None:
            return arrival
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise Rejected("ts", f"ts must be unix seconds, got {type(x).__name__}")
        try:
            ts = float(x)
        except OverflowError:
            raise Rejected("ts", "ts too large") from None
        if not (TS_MIN < ts < TS_MAX):  # also refuses NaN and infinities
            raise Rejected("ts", f"ts {ts} is not unix seconds")
        if ts > arrival + self.max_future:  # one such reading would make every later one late
            raise Rejected("future", f"ts {ts:.3f} is {ts - arrival:.0f} s ahead of the clock (frames.max_future {self.max_future:g})")
        return ts


def _json(payload: bytes) -> object:
    """orjson for speed; what it refuses goes to the standard parser (below)."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return _json_std(payload)


def _json_std(payload: bytes) -> object:
    """The standard parser also reads NaN, Infinity and 1e999 (refused later as nonfinite, not as
    malformed) and UTF-16/32; what it refuses too is malformed."""
    try:
        return json.loads(payload)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise Rejected("json", f"malformed JSON: {str(e)[:80]}") from None
