"""Fits a challenger on a snapshot of the rings: (snapshot, weights, settings) -> candidate weights, report.

Truncated BPTT: each stream is cut into contiguous segments of ``segment_windows`` windows of L
steps; a batch of segments is run window by window with the hidden state carried and detached
between windows (``hidden = hidden.detach()``). The loss is the MSE of the predicted changes on the
scale of each target's k-step change (its persistence error, so the loss reads as 1 - skill),
counted only where the truth was observed, every target weighted equally however rarely measured.
A fresh sample of a target that is not an input is hidden from the input at random
(``key_dropout``) and the step-0 output is trained to recover it: the nowcast.
Early stop on a validation tail; the most recent ``holdout_fraction`` is never seen here, it is
what the challenger is judged on (:mod:`streamrnn.learning.judge`). Any exception or non-finite loss gives a failed report
and no candidate, never a broken model.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from streamrnn.config import TrainerSettings
from streamrnn.engine.bank import centres, fill
from streamrnn.engine.model import ModelSpec, StreamRNN
from streamrnn.engine.snapshot import Snapshot, TrainReport

_VAL_CHUNK = 64  # streams per batch when running whole sequences


def normalisation(values: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of the observed values; a channel never seen gets (0, 1)."""
    allv = np.concatenate(values).astype(np.float64)
    seen = np.isfinite(allv).any(axis=0)
    mean = np.where(seen, np.nanmean(np.where(seen, allv, 0.0), axis=0), 0.0)
    std = np.where(seen, np.nanstd(np.where(seen, allv, 0.0), axis=0), 1.0)
    floor = 1e-6 * np.maximum(1.0, np.abs(mean))
    return mean, np.maximum(std, floor)


def prepare(raw: np.ndarray, spec: ModelSpec, scale: np.ndarray, limit: int, hide: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Model inputs and targets of one stream's frames ``raw`` (n, C).

    held/mask (n, C) are what the model sees (with ``hide`` samples removed); y (n, H+1, T) is the
    change from the held value of each target to its truth k steps later, divided by ``scale``
    (H+1, T); ym marks where that truth was observed, before ``limit``, for k > 0 or where hidden.
    """
    n, ti = len(raw), list(spec.target_index)
    seen = raw.copy()
    if hide is not None:
        seen[hide] = np.nan
    held = fill(seen)
    base = held[:, ti]  # (n, T)
    truth = raw[:, ti]
    y = np.zeros((n, spec.horizon + 1, len(ti)), dtype=np.float32)
    ym = np.zeros(y.shape, dtype=bool)
    for k in range(spec.horizon + 1):
        m = min(n - k, limit - k)
        if m <= 0:
            break
        ym[:m, k] = np.isfinite(truth[k : k + m]) & np.isfinite(base[:m])
        y[:m, k] = np.where(ym[:m, k], (truth[k : k + m] - base[:m]) / scale[k], 0.0)
    ym[:, 0] &= False if hide is None else hide[:, ti]  # step 0 learns only what the input did not show
    return {"held": held, "centre": centres(seen, spec.centre_alpha, filled=held), "mask": np.isfinite(seen), "y": y, "ym": ym}


def change_scale(raws: list[np.ndarray], spec: ModelSpec, hides: list[np.ndarray | None]) -> np.ndarray:
    """RMS of each target's change over k steps (the persistence error), (H+1, T); 1 where unseen."""
    ones = np.ones((spec.horizon + 1, len(spec.targets)))
    parts = [prepare(r, spec, ones, len(r), h) for r, h in zip(raws, hides)]
    se = sum((p["y"].astype(np.float64) ** 2).sum(0) for p in parts)
    n = sum(p["ym"].sum(0) for p in parts)
    with np.errstate(invalid="ignore", divide="ignore"):
        rms = np.sqrt(se / n)
    rms[0] = np.where(n[0] > 0, rms[0], rms[-1])  # no hidden samples: the step-0 change is like a long one
    level = normalisation(raws)[1][list(spec.target_index)]
    return np.where(np.isfinite(rms) & (rms > 1e-9 * level), rms, level)


def masked_loss(pred: Tensor, y: Tensor, ym: Tensor) -> Tensor:
    """Mean squared error over observed entries, each target weighted equally: (..., T) -> scalar."""
    dims = tuple(range(pred.dim() - 1))
    se = ((pred - y) ** 2 * ym).sum(dims)
    count = ym.sum(dims)
    has = count > 0
    if not has.any():
        return pred.sum() * 0.0
    return (se[has] / count[has]).mean()


def _stack(parts: list[dict[str, np.ndarray]], length: int) -> dict[str, Tensor]:
    """Right-pad sequences to ``length`` (padding is unobserved) and stack them into tensors."""
    out = {}
    for key, fill_value in (("held", np.nan), ("centre", np.nan), ("mask", False), ("y", 0.0), ("ym", False)):
        arrs = []
        for p in parts:
            a = p[key][:length]
            pad = np.full((length - len(a), *a.shape[1:]), fill_value, dtype=a.dtype)
            arrs.append(np.concatenate([a, pad]))
        stacked = np.stack(arrs)
        out[key] = torch.from_numpy(stacked.astype(np.float32) if key in ("held", "centre") else stacked)
    return out


def passes(model: StreamRNN, parts: list[dict[str, np.ndarray]]) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
    """The model run over whole sequences from a blank state, with no gradient, a chunk of them at a
    time: (outputs, the chunk's tensors) per chunk."""
    with torch.no_grad():
        for i in range(0, len(parts), _VAL_CHUNK):
            chunk = parts[i : i + _VAL_CHUNK]
            b = _stack(chunk, max(len(p["held"]) for p in chunk))
            out, _ = model(b["held"], b["centre"], b["mask"])
            yield out, b


def run_loss(model: StreamRNN, parts: list[dict[str, np.ndarray]], steps: slice = slice(None), ratio: Tensor | float = 1.0) -> float:
    """Loss of ``model`` run over whole sequences from a blank state (no gradient).

    ``steps`` picks the forecast steps that count; ``ratio`` rescales the outputs (per target)
    onto the scale the targets ``y`` were prepared on.
    """
    total, weight = 0.0, 0
    for out, b in passes(model, parts):
        ym = b["ym"][:, :, steps]
        n = int(ym.sum())
        if n:
            total += float(masked_loss(out[:, :, steps] * ratio, b["y"][:, :, steps], ym)) * n
            weight += n
    return total / weight if weight else float("nan")


def train(
    snapshot: Snapshot, spec: ModelSpec, state: dict[str, Tensor], settings: TrainerSettings, seed: int = 0
) -> tuple[dict[str, Tensor] | None, TrainReport]:
    """Fit from ``state`` on the snapshot's frames before its held-out tail; never raises."""
    report = TrainReport(frames=snapshot.frames)
    start = time.perf_counter()
    try:
        result = _fit(snapshot, spec, state, settings, seed, report, start)
    except Exception as e:  # a failed fit is a report, not a crash of the service
        report.status, report.error, result = "failed", f"{type(e).__name__}: {e}", None
    report.seconds = time.perf_counter() - start
    return result, report


def _fit(
    snapshot: Snapshot, spec: ModelSpec, state: dict[str, Tensor], cfg: TrainerSettings, seed: int, report: TrainReport, start: float
) -> dict[str, Tensor] | None:
    """Fit from ``state``: the data cut into segments, the loop with early stopping, calibration."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)  # dropout draws from the global generator
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    need = cfg.window + spec.horizon
    usable = [i for i, v in enumerate(snapshot.values) if snapshot.split(i) >= need]
    if not usable:
        raise ValueError(f"no stream has {need} frames before its held-out tail")
    trains = [snapshot.values[i][: snapshot.split(i)].astype(np.float64) for i in usable]
    target_only = np.arange(len(spec.channels)) >= spec.n_inputs
    hides = [np.isfinite(raw) & target_only & (rng.random(raw.shape) < cfg.key_dropout) for raw in trains]
    mean, std = normalisation(trains)
    dscale = change_scale(trains, spec, hides)
    model = StreamRNN(spec)
    model.load_state_dict(state)
    f32 = lambda a: torch.as_tensor(a, dtype=torch.float32)
    model.set_normalisation(f32(mean), f32(std), f32(dscale))
    lanes, vals = _segments(trains, hides, spec, dscale, cfg)
    best = _loop(model, lanes, vals, cfg, torch.Generator().manual_seed(seed), report, start)
    model.load_state_dict(best)
    w = calibrate(model, vals)
    model.dscale.mul_(torch.as_tensor(w, dtype=torch.float32))
    report.calibration = [float(x) for x in w.mean(axis=1)]
    report.val_loss = run_loss(model, vals)
    best = copy.deepcopy(model.state_dict())
    if not all(bool(torch.isfinite(v).all()) for v in best.values()):
        raise FloatingPointError("non-finite weights")
    report.status = "ok"
    return best


def _segments(
    trains: list[np.ndarray], hides: list[np.ndarray], spec: ModelSpec, dscale: np.ndarray, cfg: TrainerSettings
) -> tuple[list, list]:
    """Each stream's training part cut into contiguous segments of ``segment_windows`` windows (their
    first ``burn_in`` steps not scored: the state warms up there), and each whole stream with only
    its validation tail scored."""
    seg = cfg.window * cfg.segment_windows
    lanes, vals = [], []
    for raw, hide in zip(trains, hides):
        n = len(raw)
        n_fit = n - max(1, int(round(n * cfg.val_fraction)))
        fit = prepare(raw, spec, dscale, limit=n_fit, hide=hide)
        for s0 in range(0, n_fit, seg):
            lane = {k: v[s0 : min(s0 + seg, n_fit)] for k, v in fit.items()}
            if len(lane["held"]) > cfg.burn_in:
                lane["ym"] = lane["ym"].copy()
                lane["ym"][: cfg.burn_in] = False
                lanes.append(lane)
        val = prepare(raw, spec, dscale, limit=n, hide=hide)
        val["ym"][:n_fit] = False
        vals.append(val)
    if not lanes:
        raise ValueError("no training segment longer than the burn-in")
    return lanes, vals


def _loop(model: StreamRNN, lanes: list, vals: list, cfg: TrainerSettings, gen: torch.Generator, report: TrainReport, start: float) -> dict:
    """Epochs of truncated BPTT over shuffled batches of segments, until the validation loss has not
    improved for ``patience`` epochs or a budget is spent; the best weights seen."""
    best = copy.deepcopy(model.state_dict())
    model.eval()
    report.initial_val_loss = best_val = run_loss(model, vals)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    stale = 0
    for epoch in range(cfg.max_epochs):
        model.train()
        order = torch.randperm(len(lanes), generator=gen).tolist()
        losses = []
        for b0 in range(0, len(order), cfg.batch_size):
            losses += _batch(
                model, _stack([lanes[i] for i in order[b0 : b0 + cfg.batch_size]], cfg.window * cfg.segment_windows), opt, cfg, report
            )
        report.epochs = epoch + 1
        report.train_loss = float(np.mean(losses)) if losses else float("nan")
        model.eval()
        val_loss = run_loss(model, vals)
        if not np.isfinite(val_loss):
            raise FloatingPointError("non-finite validation loss")
        report.history.append(val_loss)
        if val_loss < best_val:
            best_val, stale = val_loss, 0
            best = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        if stale >= cfg.patience or report.steps >= cfg.max_steps or time.perf_counter() - start > cfg.max_seconds:
            break
    return best


def _batch(
    model: StreamRNN, batch: dict[str, Tensor], opt: torch.optim.Optimizer, cfg: TrainerSettings, report: TrainReport
) -> list[float]:
    """One batch of segments, window by window, the hidden state carried and detached between
    windows; the windows' losses."""
    losses, hidden = [], None
    for w0 in range(0, batch["held"].shape[1], cfg.window):
        sl = slice(w0, w0 + cfg.window)
        ym = batch["ym"][:, sl]
        if not bool(ym.any()):
            continue  # all padding or burn-in: nothing to learn, but keep the state moving
        out, hidden = model(batch["held"][:, sl], batch["centre"][:, sl], batch["mask"][:, sl], hidden)
        loss = masked_loss(out, batch["y"][:, sl], ym)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss at step {report.steps}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        hidden = hidden.detach()
        losses.append(loss.item())
        report.steps += 1
    return losses


def calibrate(model: StreamRNN, parts: list[dict[str, np.ndarray]]) -> np.ndarray:
    """Per step and target, the least-squares shrink w in [0, 1] of the predicted change on ``parts``.

    Multiplying the output scale by w moves each forecast toward persistence as far as the
    validation data says it should: w = 0 where the model did not help, giving persistence exactly.
    """
    num = torch.zeros(model.dscale.shape, dtype=torch.float64)
    den = torch.zeros(model.dscale.shape, dtype=torch.float64)
    for out, b in passes(model, parts):
        out, ym = out.double() * b["ym"], b["ym"]
        num += (out * b["y"].double() * ym).sum((0, 1))
        den += (out**2).sum((0, 1))
    w = torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros_like(num))
    return w.clamp(0.0, 1.0).numpy()
