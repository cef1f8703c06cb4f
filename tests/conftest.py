from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):  # parallel workers (pytest -n): one thread each, so that none waits on another's spinning threads
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")

import numpy as np
import pytest
import torch

from streamrnn import config
from streamrnn.tools.broker import Mosquitto, mosquitto_binary
from streamrnn.tools.processes import DaemonProcess

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests first: parallel workers then end together, not one of them on a replay."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """Tests never see the developer's STREAMRNN_* variables."""
    import os

    for k in list(os.environ):
        if k.startswith("STREAMRNN_"):
            monkeypatch.delenv(k)
    torch.manual_seed(0)


def interruptible(*args, **kw) -> subprocess.Popen:
    """``subprocess.Popen`` of a command a test will Ctrl-C (SIGINT), as a user would in a
    terminal: with SIGINT at its default however the suite was started (a shell's background job
    ignores it, and a child inherits that; a handler is reset to the default at exec)."""
    import signal

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(*args, **kw)
    finally:
        signal.signal(signal.SIGINT, before)


def small_settings(**over) -> config.Settings:
    """A small, fast configuration: 3 inputs, one of them also a target, plus a key variable."""
    base = {
        "device": "cpu",
        "features": {"inputs": ["a", "b", "c"], "targets": ["a", "key"], "period": 1.0, "horizon": 4},
        "model": {"hidden_size": 16, "num_layers": 2, "head_hidden": 16},
        "ring": {"size": 512},
        # budgets in epochs and steps: a wall-clock one would cut training short on a busy machine
        # and the trainer process at the daemon's priority: on a box busy with other work, one that
        # takes only idle CPU time (the default) may wait for minutes
        "trainer": {
            "window": 16,
            "batch_size": 8,
            "max_epochs": 6,
            "min_frames": 128,
            "retrain_every": 256,
            "max_seconds": 3600.0,
            "priority": "normal",
        },
    }
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return config.load(None, **base)


def sine_frames(n: int, streams: int = 1, key_every: int = 5, seed: int = 0) -> list[tuple[str, float, np.ndarray]]:
    """A learnable signal: a and b sines, c noise, key a lagged mix observed every ``key_every`` steps."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(n):
        for s in range(streams):
            ph = 0.7 * s
            a = np.sin(0.2 * t + ph) + 0.05 * rng.standard_normal()
            b = np.cos(0.2 * t + ph) + 0.05 * rng.standard_normal()
            c = rng.standard_normal()
            key = 2.0 + np.sin(0.2 * (t - 3) + ph) if (t + s) % key_every == 0 else np.nan
            out.append((f"s{s}", float(t), np.array([a, b, c, key])))
    return out


# -- a real broker and a real daemon ------------------------------------------------------------


@pytest.fixture
def mosquitto(tmp_path):
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed: apt-get install mosquitto (CI installs it)")
    broker = Mosquitto(tmp_path / "mosquitto").start()
    yield broker
    broker.stop()


def write_config(path: Path, **sections: dict) -> Path:
    """A TOML file from nested dicts (values: str, bool, numbers, lists of str)."""

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (list, str)):
            return json.dumps(v)
        return repr(v)

    lines = []
    for name, fields in sections.items():
        if isinstance(fields, dict):
            lines.append(f"[{name}]")
            lines += [f"{k} = {value(v)}" for k, v in fields.items()]
        else:
            lines.insert(0, f"{name} = {value(fields)}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def daemons(tmp_path):
    """Start daemons with ``daemons(url, ...)``; whatever is left running is killed at the end."""
    started: list[DaemonProcess] = []

    def start(url: str, **kw) -> DaemonProcess:
        d = DaemonProcess(tmp_path, url, **kw).start()
        started.append(d)
        return d

    yield start
    for d in started:
        d.kill()


@pytest.fixture
def tiny_disk(tmp_path):
    """A real filesystem of ``size`` (tmpfs, 64 kB), which fills up: needs root (CI runs as root)."""
    mounted: list[Path] = []

    def make(size: str = "64k") -> Path:
        mnt = tmp_path / f"tiny-{len(mounted)}"
        mnt.mkdir()
        if (
            os.geteuid() != 0
            or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True).returncode
        ):
            pytest.skip("cannot mount a tmpfs here (not root)")
        mounted.append(mnt)
        return mnt

    yield make
    for mnt in mounted:
        subprocess.run(["umount", str(mnt)], check=True)
