"""``streamrnn bench step|streams|memory``: the engine in this process, each figure beside its reference.

- ``step``: per model kind and batch, a bare torch step of the model (its forward over one frame,
  tensors ready, inference mode: what a hand-written loop calls), the same step as the engine makes
  it (``StreamRNN.serve``: torch's cell kernels, inputs and outputs in numpy), re-running the last 64 frames instead
  (the stateless alternative), and the engine's whole step (bands, scoring, rings, state bank).
- ``streams``: the step time per tick as the number of streams grows, on the CPU and, where CUDA is
  present, on the GPU: the recurrent step of the state bank alone and the engine's whole step.
- ``memory``: resident memory per stream against ring size, each configuration in a fresh process.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from streamrnn.config import Settings
from streamrnn.tools.bench.report import table

WINDOW = 64


def _settings(kind: str = "gru", device: str = "cpu", ring: int = 256, max_streams: int = 20_000) -> Settings:
    return Settings(
        device=device, model={"kind": kind}, ring={"size": ring}, streams={"max_streams": max_streams}, trainer={"enabled": False}
    )


def _engine(settings: Settings):
    """An engine serving a linear contender beside its model, as after its first retrain (the
    trainer is off here), the contender fitted on simulated reactor frames as a retrain fits it:
    the cost of every step counts the contender's windows and the gate."""
    from streamrnn.engine import ridgeform
    from streamrnn.engine.engine import Engine
    from streamrnn.engine.linear import OnlineRidge
    from streamrnn.learning import examples
    from streamrnn.learning.trainer import normalisation
    from streamrnn.offline import simulator

    engine = Engine(settings)
    c = len(engine.channels)
    values = np.stack([v[0] for _, v in simulator.Reactor(seed=0).run(600)])
    values = values[:, [simulator.FEATURES.index(name) for name in engine.channels]]
    ridge = OnlineRidge(
        c,
        list(engine.spec.target_index),
        engine.spec.horizon,
        settings.linear.lookback,
        *normalisation([values]),
        calendar=settings.linear.calendar,
    )
    examples.learn_frames(ridge, ["s0"], [values], [np.arange(len(values), dtype=float)], [len(values)], settings.linear.max_examples)
    assert engine.adopt_linear(ridgeform.state(ridge))
    return engine


def _warm(engine, streams: int) -> None:
    """Step ``streams`` until the engine serves as it will in steady service: every forecast step
    scored, and the bands and the gate's weights drawn from the errors (before its first draw the
    gate serves the recurrent model alone, a copy, which is cheaper than what follows)."""
    from streamrnn.engine.evaluator import LAG

    ticks = 0
    while ticks < engine.spec.horizon + LAG + 2 or (not engine.gate_drawn and ticks < 1000):
        _engine_tick(engine, streams, 1)
        ticks += 1
    _engine_tick(engine, streams, 1)  # the weights are drawn at the step after the errors that move them


def _median_us(fn, reps: int, sync: bool = False) -> float:
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(ts)


def _engine_tick(engine, streams: int, ticks: int) -> list[float]:
    """Seconds per engine.step of ``streams`` frames, one tick after another."""
    from streamrnn.engine.frame import Frame

    rng = np.random.default_rng(0)
    names = [f"s{i}" for i in range(streams)]
    c, out = len(engine.channels), []
    base = engine.last_tick() + 1  # after the last tick stepped
    for t in range(base, base + ticks):
        frames = [Frame(n, 10.0 * t, v) for n, v in zip(names, rng.normal(size=(streams, c)))]
        t0 = time.perf_counter()
        engine.step(frames, now=1e9 + t)
        out.append(time.perf_counter() - t0)
    return out


def step(batches: tuple[int, ...] = (1, 100, 1000), kinds: tuple[str, ...] = ("gru", "lstm", "rnn"), reps: int = 200) -> dict:
    """Bare step, serving step, 64-frame window and whole engine step, per kind and batch, on the CPU, one thread."""
    torch.set_num_threads(1)
    rows = []
    for kind in kinds:
        for b in batches:
            engine = _engine(_settings(kind))
            m, c = engine.model, len(engine.channels)
            x1, xw = torch.randn(b, 1, c), torch.randn(b, WINDOW, c)
            m1, mw = torch.ones(b, 1, c), torch.ones(b, WINDOW, c)
            h, state = m.init_hidden(b), m.init_hidden(b)
            held, fresh = x1[:, 0].double().numpy(), m1[:, 0].bool().numpy()
            n = max(5, reps // max(1, b // 50))
            with torch.inference_mode():
                for _ in range(10):
                    m(x1, x1, m1, h)
                    m.serve(held, held, fresh, state)
                bare = _median_us(lambda: m(x1, x1, m1, h), n)
                serve = _median_us(lambda: m.serve(held, held, fresh, state), n)
                window = _median_us(lambda: m(xw, xw, mw, None), max(5, n // 4))
            _warm(engine, b)
            whole = 1e6 * statistics.median(_engine_tick(engine, b, n))
            rows.append(
                {
                    "kind": kind,
                    "batch": b,
                    "bare_us": bare,
                    "serving_us": serve,
                    "window_us": window,
                    "engine_us": whole,
                    "window_ratio": window / bare,
                    "engine_ratio": whole / bare,
                    "engine_us_per_frame": whole / b,
                }
            )
    return {"threads": 1, "window": WINDOW, "rows": rows}


def format_step(r: dict) -> str:
    return table(
        f"stateful step vs re-running the last {r['window']} frames, CPU, {r['threads']} thread; medians (us per batch)",
        [
            ("model", "<6", "kind"),
            ("batch", ">7", "batch"),
            ("bare step", ">11.0f", "bare_us"),
            ("serving", ">9.0f", "serving_us"),
            ("window", ">10.0f", "window_us"),
            ("window/step", ">13.2f", "window_ratio"),
            ("engine", ">10.0f", "engine_us"),
            ("engine/step", ">13.2f", "engine_ratio"),
            ("us/frame", ">10.1f", "engine_us_per_frame"),
        ],
        r["rows"],
        "bare step: the model's forward over one frame on ready tensors, as a hand-written loop steps it; serving: the same step as the\n"
        "engine makes it (cell kernels, numpy in and out); engine: the whole step (state bank, rings, "
        "scoring, bands) - target <= 1.5x bare at batch 1",
    )


def streams(counts: tuple[int, ...] = (1, 10, 100, 1000, 10_000), ticks: int = 20) -> dict:
    """Per device: the state bank's recurrent step and the engine's whole step per tick, by streams."""
    torch.set_num_threads(1)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for n in counts:
            engine = _engine(_settings(device=device, max_streams=max(counts)))
            _warm(engine, n)
            bank, rows_ = engine.bank, np.arange(n)
            values = np.random.default_rng(1).normal(size=(n, len(engine.channels)))
            cuda = device == "cuda"
            recurrent = _median_us(lambda: bank.step(engine.model, rows_, values), max(5, ticks), sync=cuda)
            whole = 1e6 * statistics.median(_engine_tick(engine, n, ticks))
            rows.append(
                {
                    "device": device,
                    "streams": n,
                    "recurrent_ms": recurrent / 1e3,
                    "engine_ms": whole / 1e3,
                    "engine_us_per_stream": whole / n,
                }
            )
    return {"threads": 1, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "rows": rows}


def format_streams(r: dict) -> str:
    return table(
        f"many streams: time per tick, medians (CPU: 1 thread{'; GPU: ' + r['gpu'] if r['gpu'] else '; no CUDA here'})",
        [
            ("device", "<8", "device"),
            ("streams", ">9", "streams"),
            ("recurrent ms", ">14.3f", "recurrent_ms"),
            ("engine ms", ">11.3f", "engine_ms"),
            ("us/stream", ">11.1f", "engine_us_per_stream"),
        ],
        r["rows"],
        "recurrent: hold the values, gather states, model, scatter, outputs to the host; engine: "
        "the whole step - targets 1,000 streams <= 5 ms (CPU), 10,000 <= 10 ms (GPU)",
    )


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _memory_one(streams_: int, ring: int) -> dict:
    """In a fresh process: RSS before and after ``streams_`` streams have stepped (rings allocated whole)."""
    torch.set_num_threads(1)
    engine = _engine(_settings(ring=ring, max_streams=max(streams_, 1)))
    _engine_tick(engine, 1, 2)
    before = _rss()
    _engine_tick(engine, streams_, 2)
    after = _rss()
    return {
        "streams": streams_,
        "ring": ring,
        "rss_before_mb": before / 1e6,
        "rss_after_mb": after / 1e6,
        "bytes_per_stream": (after - before) / streams_,
    }


def memory(counts: tuple[int, ...] = (100, 1000, 5000), rings: tuple[int, ...] = (256, 4096)) -> dict:
    rows = []
    for ring in rings:
        for n in counts:
            out = subprocess.run(
                [sys.executable, "-m", "streamrnn.tools.bench.engine", str(n), str(ring)], capture_output=True, text=True, timeout=600
            )
            if out.returncode:
                raise RuntimeError(f"memory at {n} streams, ring {ring}: {out.stderr.strip()[-400:]}")
            rows.append(json.loads(out.stdout))
    channels = len(Settings().channels)
    return {"rows": rows, "ring_bytes_per_frame": channels * 4 + 8}


def format_memory(r: dict) -> str:
    return table(
        "resident memory by streams and ring size (each a fresh process; rings are allocated whole)",
        [
            ("ring", ">6", "ring"),
            ("streams", ">9", "streams"),
            ("RSS MB", ">9.0f", "rss_after_mb"),
            ("bytes/stream", ">14.0f", "bytes_per_stream"),
            ("of which ring", ">15.0f", lambda x: x["ring"] * r["ring_bytes_per_frame"]),
        ],
        r["rows"],
    )


if __name__ == "__main__":  # one memory configuration, in its own process
    print(json.dumps(_memory_one(int(sys.argv[1]), int(sys.argv[2]))))
