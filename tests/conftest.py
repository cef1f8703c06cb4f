from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from streamrnn import config

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """Tests never see the developer's STREAMRNN_* variables."""
    import os

    for k in list(os.environ):
        if k.startswith("STREAMRNN_"):
            monkeypatch.delenv(k)
    torch.manual_seed(0)


def small_settings(**over) -> config.Settings:
    """A small, fast configuration: 3 inputs, one of them also a target, plus a key variable."""
    base = {
        "device": "cpu",
        "features": {"inputs": ["a", "b", "c"], "targets": ["a", "key"], "period": 1.0, "horizon": 4},
        "model": {"hidden_size": 16, "num_layers": 2, "head_hidden": 16},
        "ring": {"size": 512},
        "trainer": {"window": 16, "batch_size": 8, "max_epochs": 6, "min_frames": 128, "retrain_every": 256},
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
