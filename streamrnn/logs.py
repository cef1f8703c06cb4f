"""Structured logs: one line per event, logfmt or JSON, with levels; and a rate limit for floods.

A line carries ``ts``, ``level``, ``logger`` and ``msg``, plus the ``extra`` fields given to the
call, so ``log.warning("payload refused", extra={"reason": "json", "topic": t})`` can be grepped by key.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def _fields(record: logging.LogRecord) -> dict[str, object]:
    out: dict[str, object] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    out.update((k, v) for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_"))
    if record.exc_info:
        out["exc"] = logging.Formatter().formatException(record.exc_info)
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str)


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_quote(v)}" for k, v in _fields(record).items())


def _quote(v: object) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    if s and not any(c in s for c in ' "=\n\t\\'):
        return s
    return json.dumps(s)


def setup(fmt: str = "logfmt", level: str = "info", stream: TextIO = sys.stderr) -> None:
    """Route every logger to ``stream`` in ``fmt``; replaces handlers set before."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class RateLimited:
    """Let through at most ``burst`` events per ``per`` seconds per key; count what it held back.

    The next event that gets through carries ``suppressed``: how many were held back before it.
    """

    def __init__(self, burst: int = 10, per: float = 60.0) -> None:
        self.burst, self.per = burst, per
        self._window: dict[str, tuple[float, int, int]] = {}  # key -> (start, passed, suppressed)

    def allow(self, key: str, now: float | None = None) -> int | None:
        """None if the event should be dropped, else the number suppressed since the last one let through."""
        now = time.monotonic() if now is None else now
        start, passed, suppressed = self._window.get(key, (now, 0, 0))
        if now - start >= self.per:
            start, passed = now, 0
        if passed >= self.burst:
            self._window[key] = (start, passed, suppressed + 1)
            return None
        self._window[key] = (start, passed + 1, 0)
        return suppressed

    def log(self, logger: logging.Logger, level: int, key: str, msg: str, exc_info: bool = False, **fields: object) -> bool:
        """Log ``msg`` with ``fields`` if ``key`` is within its rate, carrying ``suppressed_before``;
        True if it was logged. Every error that can repeat goes through one of these."""
        suppressed = self.allow(key)
        if suppressed is None:
            return False
        logger.log(level, msg, exc_info=exc_info, extra={**fields, "suppressed_before": suppressed})
        return True
