"""Checkpoint parts written by older releases, brought to today's layout before they are loaded, so
that an upgrade goes on from the state the release before it saved."""

from __future__ import annotations

import numpy as np


def evaluator(st: dict, contenders: int) -> dict:
    """The evaluator's state (``Evaluator.state()``) of any release, in today's layout: its
    pending forecasts' parts as they are kept now (what an older one did not keep, unknown: NaN)."""
    if "fc" not in st:  # written before the prediction and its band were kept side by side
        st = {**st, "fc": np.stack([st["pred"], st["hi"] - st["pred"]], axis=3)}
    elif st["fc"].ndim == 5 and st["fc"].shape[3] == 3:  # prediction, lower and upper band
        st = {**st, "fc": np.stack([st["fc"][:, :, :, 0], st["fc"][:, :, :, 2] - st["fc"][:, :, :, 0]], axis=3)}
    k, fc = contenders, st["fc"]
    if "move" not in st:  # written before the trust: its moves are not known
        st = {**st, "move": np.full((*fc.shape[:3], fc.shape[4]), np.nan, np.float32)}
    if "cfc" not in st:  # written before the contenders' forecasts had slots of their own: after the band's, if at all
        beside = fc.ndim == 5 and fc.shape[3] == 2 + k
        st = {
            **st,
            "fc": fc[:, :, :, :2],
            "ctick": st["tick"].copy() if beside else np.full_like(st["tick"], -1),
            "cfc": fc[:, :, :, 2:] if beside else np.full((*fc.shape[:3], k, fc.shape[4]), np.nan, np.float32),
        }
    elif st["cfc"].ndim == 5 and st["cfc"].shape[3] != k:  # kept other contenders: theirs are not known
        st = {
            **st,
            "ctick": np.full_like(st["ctick"], -1),
            "cfc": np.full((*st["cfc"].shape[:3], k, st["cfc"].shape[4]), np.nan, np.float32),
        }
    return st
