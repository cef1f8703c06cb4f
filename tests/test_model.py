"""The contract every model kind honours: stateful stepping == one pass; untrained == persistence."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import sine_frames, small_settings

from streamrnn.engine import model as M
from streamrnn.engine.engine import Engine
from streamrnn.engine.frame import Frame
from streamrnn.learning.trainer import centres, fill

KINDS = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")]


def trained_like(settings) -> M.StreamRNN:
    """A model with random, non-zero head weights, so its outputs are not all zero."""
    m = M.build(M.ModelSpec.from_settings(settings), seed=1)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.3)
        m.set_normalisation(torch.zeros(4), torch.ones(4), torch.full_like(m.dscale, 0.5))
    return m


@pytest.mark.parametrize("kind,nl", KINDS)
def test_step_by_step_equals_one_pass(kind, nl):
    settings = small_settings(model={"kind": kind, "nonlinearity": nl})
    m = trained_like(settings)
    x = torch.randn(3, 50, 4)
    mask = torch.rand(3, 50, 4) > 0.3
    x[~mask] = float("nan")
    held = torch.as_tensor(np.stack([fill(v) for v in x.numpy()]))
    centre = torch.as_tensor(np.stack([centres(v, m.spec.centre_alpha) for v in x.numpy()]), dtype=torch.float32)
    with torch.no_grad():
        full, h_full = m(held, centre, mask)
        h, steps, hc, cells = None, [], m.init_hidden(3), []
        for t in range(50):
            out, h = m(held[:, t : t + 1], centre[:, t : t + 1], mask[:, t : t + 1], h)
            h = h.detach()
            steps.append(out)
            out, hc = m.step(held[:, t], centre[:, t], mask[:, t], hc)  # the serving path
            cells.append(out)
    assert full.shape == (3, 50, settings.features.horizon + 1, 2)
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)
    assert torch.allclose(h, h_full, atol=1e-5)
    assert torch.allclose(torch.stack(cells, 1), full, atol=1e-5)
    assert torch.allclose(hc, h_full, atol=1e-5)
    assert full.abs().max() > 1e-3  # the comparison is not between zeros


@pytest.mark.parametrize("layers,bias", [(1, True), (3, False)])
@pytest.mark.parametrize("kind,nl", KINDS)
def test_serving_step_is_forward_over_one_frame(kind, nl, layers, bias):
    """``step`` (torch's cell kernels) gives what ``forward`` (the sequence module) gives, at any depth, with or without biases."""
    m = trained_like(small_settings(model={"kind": kind, "nonlinearity": nl, "num_layers": layers, "bias": bias}))
    held, centre = torch.randn(5, 4), torch.randn(5, 4)
    held[0, 1] = float("nan")
    mask = torch.isfinite(held)
    hidden = torch.randn(m.spec.state_layers, layers, 5, m.spec.hidden_size)
    with torch.inference_mode():
        want, want_h = m(held[:, None], centre[:, None], mask[:, None], hidden)
        got, got_h = m.step(held, centre, mask, hidden)
    assert got.shape == want[:, 0].shape and got_h.shape == want_h.shape == hidden.shape
    torch.testing.assert_close(got, want[:, 0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got_h, want_h, atol=1e-6, rtol=1e-5)
    assert not torch.equal(got_h, hidden) and got.abs().max() > 1e-3


@pytest.mark.parametrize("kind,nl", KINDS)
def test_serving_from_the_host_steps_the_states_step_gives_bit_for_bit(kind, nl):
    """``serve`` (inputs made and outputs bounded in numpy, the state stepped in place) reaches the
    states ``step`` reaches exactly, through clipped, never-seen and missing values, and follows the
    model's normalisation when it changes."""
    m = trained_like(small_settings(model={"kind": kind, "nonlinearity": nl}))
    other = trained_like(small_settings(model={"kind": kind, "nonlinearity": nl}))
    rng = np.random.default_rng(3)
    hidden = torch.randn(m.spec.state_layers, m.spec.num_layers, 6, m.spec.hidden_size)
    for change in (None, "normalisation", "weights"):
        if change == "normalisation":
            m.set_normalisation(torch.zeros(4), torch.tensor([0.3, 2.0, 1e-3, 7.0]), torch.full_like(m.dscale, 0.7))
        elif change == "weights":
            m.load_state_dict(other.state_dict())
        held, centre = rng.normal(size=(6, 4)) * 5, rng.normal(size=(6, 4))
        held[0, 1], centre[2], held[3, 2] = np.nan, np.nan, 1e3  # missing, never seen, clipped
        fresh = np.isfinite(held)
        with torch.inference_mode():
            want, want_h = m.step(*(torch.as_tensor(a, dtype=torch.float32) for a in (held, centre, fresh)), hidden)
        state = hidden.clone()
        got = m.serve(held, centre, fresh, state)
        assert torch.equal(state, want_h), change
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)
        assert got.dtype == np.float32 and np.abs(got).max() > 1e-3
        hidden = want_h


@pytest.mark.parametrize("kind,nl", KINDS)
def test_engine_streams_interleaved_equal_separate_passes(kind, nl):
    """Several streams stepped in one batch, in a shuffled order, give each stream's own one-pass output."""
    settings = small_settings(model={"kind": kind, "nonlinearity": nl}, gate={"trust": False})  # the model's own output
    m = trained_like(settings)
    engine = Engine(settings, model=m)
    frames = sine_frames(40, streams=3)
    rng = np.random.default_rng(0)
    got: dict[str, list[np.ndarray]] = {}
    for t in range(40):
        batch = [Frame(s, ts, v) for s, ts, v in frames[3 * t : 3 * t + 3]]
        rng.shuffle(batch)
        cut = rng.integers(0, 4)  # sometimes split a tick into two batches
        for part in (batch[:cut], batch[cut:]):
            for fc in engine.step(part):
                got.setdefault(fc.stream, []).append(fc.values)
    std = m.dscale.double().numpy()
    for s in ("s0", "s1", "s2"):
        raw = np.stack([v for name, _, v in frames if name == s])
        held = fill(raw)
        with torch.no_grad():
            out, _ = m(
                torch.as_tensor(held, dtype=torch.float32)[None],
                torch.as_tensor(centres(raw, m.spec.centre_alpha), dtype=torch.float32)[None],
                torch.as_tensor(np.isfinite(raw))[None],
            )
        base = held[:, [0, 3]]
        want = base[:, None, :] + out[0, :, 1:].double().numpy() * std[1:]
        np.testing.assert_allclose(np.stack(got[s]), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind,nl", KINDS)
def test_untrained_model_is_persistence(kind, nl):
    engine = Engine(small_settings(model={"kind": kind, "nonlinearity": nl}))
    held = np.full(4, np.nan)
    for s, ts, v in sine_frames(60):
        fc = engine.step([Frame(s, ts, v)])[0]
        held = np.where(np.isfinite(v), v, held)
        persistence = np.broadcast_to(held[[0, 3]].astype(np.float32), fc.values.shape)  # float32, as published
        assert np.array_equal(fc.values, persistence, equal_nan=True)
        assert np.array_equal(fc.now, held[[0, 3]], equal_nan=True)


def test_bidirectional_is_refused():
    from streamrnn.config import ConfigError

    with pytest.raises(ConfigError, match=r"model\.bidirectional: .*cannot|model\.bidirectional: .*future|frames that have not arrived"):
        small_settings(model={"bidirectional": True})


def test_saved_model_is_self_contained_and_loads_without_pickles(tmp_path):
    settings = small_settings(model={"kind": "lstm"})
    m = trained_like(settings)
    path = tmp_path / "model.pt"
    M.save(path, m, version=7)
    loaded, version = M.load(path)
    assert version == 7 and loaded.spec == m.spec
    for k, v in m.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])

    # weights_only refuses an arbitrary pickled object in place of a model file
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    buf = io.BytesIO()
    torch.save({"format": 1, "x": Evil()}, buf)
    buf.seek(0)
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        M.load(buf)


def test_device_auto_is_cpu_without_cuda():
    if torch.cuda.is_available():
        assert M.resolve_device("auto").type == "cuda"
    else:
        assert M.resolve_device("auto").type == "cpu"
        with pytest.raises(RuntimeError, match="no CUDA"):
            M.resolve_device("cuda")
