"""What every benchmark report carries: the machine it ran on, and its tables."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from collections.abc import Callable
from importlib.metadata import version as installed


def machine() -> dict:
    """What the figures were measured on."""
    import torch

    from streamrnn import __version__
    from streamrnn.tools.broker import mosquitto_binary

    mosq = mosquitto_binary()
    broker = subprocess.run([mosq, "-h"], capture_output=True, text=True).stdout.split("\n")[0] if mosq else None
    return {
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "paho": installed("paho-mqtt"),
        "mosquitto": broker,
        "streamrnn": __version__,
    }


def table(title: str, columns: list[tuple[str, str, str | Callable[[dict], object]]], rows: list[dict], footer: str | None = None) -> str:
    """A text table: per column its header, its format spec (alignment and width first) and the
    row's key or a function of the row."""
    widths = [re.match(r"[<>]?\d+", spec).group() for _, spec, _ in columns]  # type: ignore[union-attr]
    out = [title, "".join(f"{head:{w}}" for (head, _, _), w in zip(columns, widths))]
    for x in rows:
        out.append("".join(f"{(get(x) if callable(get) else x[get]):{spec}}" for _, spec, get in columns))
    return "\n".join(out + ([footer] if footer else []))
