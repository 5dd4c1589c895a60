"""Normalization modes and the numpy ``Normalizer`` (SPEC section 4).

Modes (``lo, hi`` are min/max or q01/q99):

- ``mean_std``: ``y = (x - mean) / std``; inverse ``x = y * std + mean``.
- ``min_max`` / ``q01_q99``: ``y = 2 (x - lo) / (hi - lo) - 1``; inverse ``x = (y + 1)(hi - lo) / 2 + lo``.

Dims with ``mask`` False pass through untouched. Degenerate dims (std or ``hi - lo`` below
``floor * max(1, |center|)``) normalize to 0 and unnormalize to the center (mean, or the middle of
the range); nothing is ever divided by ~0. ``clip`` (default on for the bounds modes) clamps the
normalized value to ``[-1, 1]`` (bounds) or ``[-clip_value, clip_value]`` (mean_std).

``x[..., h, D]`` (``h <= H``) uses the first ``h`` rows of the per-timestep ``[H, D]`` statistics;
``x[..., D]`` uses the global statistics. Which one is meant is explicit (``chunked``), because a
batch of single actions ``[B, D]`` looks like a chunk ``[h, D]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

MODES = ("mean_std", "min_max", "q01_q99")
DEFAULT_FLOOR = 1e-8
DEFAULT_CLIP = {"mean_std": False, "min_max": True, "q01_q99": True}


@dataclass(frozen=True)
class NormParams:
    """Affine parameters: normalized ``y = (x - center) / scale`` on active dims.

    Attributes (each ``[D]`` or ``[H, D]``):
        center: mean, or the middle of ``[lo, hi]``; what a degenerate dim unnormalizes to.
        scale: std, or half of ``hi - lo``; 1 where inactive, so nothing divides by ~0.
        active: mask on, statistics present, spread above the floor.
        degenerate: mask on and spread below the floor (normalizes to 0).
        empty: mask on and no statistics (a chunk position no episode reaches).
    """

    center: np.ndarray
    scale: np.ndarray
    active: np.ndarray
    degenerate: np.ndarray
    empty: np.ndarray

    def rows(self, h: int) -> "NormParams":
        """The first ``h`` chunk positions."""
        return NormParams(self.center[:h], self.scale[:h], self.active[:h], self.degenerate[:h], self.empty[:h])


def center_and_spread(stats: Mapping[str, np.ndarray], mode: str) -> tuple[np.ndarray, np.ndarray]:
    """``(center, scale)`` of ``mode`` before any floor: mean/std, or the middle and half-width of
    ``[min, max]`` / ``[q01, q99]`` (arrays ``[D]`` or ``[H, D]``, float64)."""
    if mode not in MODES:
        raise ValueError(f"normalization mode must be one of {MODES}, got {mode!r}")
    if mode == "mean_std":
        return np.asarray(stats["mean"], np.float64), np.asarray(stats["std"], np.float64)
    lo_key, hi_key = ("min", "max") if mode == "min_max" else ("q01", "q99")
    if lo_key not in stats or hi_key not in stats:
        raise ValueError(f"mode {mode} needs statistics {lo_key!r} and {hi_key!r}")
    lo = np.asarray(stats[lo_key], np.float64)
    hi = np.asarray(stats[hi_key], np.float64)
    return (lo + hi) / 2.0, (hi - lo) / 2.0


def norm_params(stats: Mapping[str, np.ndarray], mode: str, mask: Sequence[bool] | None = None,
                floor: float = DEFAULT_FLOOR) -> NormParams:
    """Affine parameters for ``mode`` from a STATS block (arrays ``[D]`` or ``[H, D]``)."""
    center, spread = center_and_spread(stats, mode)
    on = np.ones(center.shape, bool)
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != center.shape[-1:]:
            raise ValueError(f"mask has {mask.shape[-1]} entries but the statistics have {center.shape[-1]} dims")
        on = np.broadcast_to(mask, center.shape)
    present = np.isfinite(center) & np.isfinite(spread)
    safe_center = np.where(present, center, 0.0)
    degenerate = on & present & (spread < floor * np.maximum(1.0, np.abs(safe_center)))
    active = on & present & ~degenerate
    return NormParams(safe_center, np.where(active, spread, 1.0), active, degenerate, on & ~present)


class Normalizer:
    """Normalize / unnormalize actions (or states) with global and per-timestep statistics.

    Args:
        global_stats: STATS block with ``[D]`` arrays (``mean, std, min, max, q01, q99``).
        per_timestep: STATS block with ``[H, D]`` arrays and ``count [H]``, or None.
        mode: ``mean_std``, ``min_max`` or ``q01_q99``.
        mask: per dim, False passes the dim through untouched (e.g. a gripper).
        clip: clamp normalized values (default: on for bounds modes, off for mean_std).
        clip_value: the bound for mean_std clipping (bounds modes always clip to [-1, 1]).
        floor: relative degenerate-spread floor.
        allow_empty_positions: chunk positions no episode reaches (count 0) have no statistics;
            by default that is an error. When allowed, they normalize to 0 and unnormalize to NaN
            (such entries are always padding in the data the statistics came from).
    """

    def __init__(self, global_stats: Mapping[str, np.ndarray], per_timestep: Mapping[str, np.ndarray] | None = None,
                 mode: str = "mean_std", mask: Sequence[bool] | None = None, clip: bool | None = None,
                 clip_value: float = 5.0, floor: float = DEFAULT_FLOOR, allow_empty_positions: bool = False):
        self.mode = mode
        self.clip = DEFAULT_CLIP[mode] if clip is None and mode in DEFAULT_CLIP else bool(clip)
        self.clip_bound = 1.0 if mode != "mean_std" else float(clip_value)
        self.mask = None if mask is None else np.asarray(mask, bool)
        self.global_params = norm_params(global_stats, mode, mask, floor)
        self.dim = int(self.global_params.center.shape[-1])
        self.per_timestep_params = None
        self.horizon = None
        if per_timestep is not None:
            self.per_timestep_params = norm_params(per_timestep, mode, mask, floor)
            self.horizon = int(self.per_timestep_params.center.shape[0])
            empty = self.per_timestep_params.empty.any(axis=-1)
            if empty.any() and not allow_empty_positions:
                raise ValueError(
                    f"chunk positions {np.flatnonzero(empty).tolist()} have no statistics (no episode is that long); "
                    f"use a horizon <= {int(np.argmax(empty))} or allow_empty_positions=True"
                )

    @classmethod
    def from_artifact(cls, artifact, key: str = "action", dataset: str | None = None, per_timestep: bool = True,
                      **kwargs) -> "Normalizer":
        """Build from a ``stepnorm.artifact.Artifact`` (combined statistics, or one dataset's)."""
        global_stats = artifact.stats(key, "global", dataset)
        pt = artifact.stats(key, "per_timestep", dataset) if per_timestep and key == "action" else None
        return cls(global_stats, pt, **kwargs)

    def params_for(self, x: np.ndarray, chunked: bool | None) -> NormParams:
        """The parameters that apply to ``x``: per-timestep for chunks ``[..., h, D]``, else global."""
        if x.shape[-1:] != (self.dim,):
            raise ValueError(f"last axis of x must be {self.dim} dims, got shape {list(x.shape)}")
        if chunked is None:
            chunked = self.per_timestep_params is not None
        if not chunked:
            return self.global_params
        if self.per_timestep_params is None:
            raise ValueError("chunked input needs per-timestep statistics; this Normalizer has only global ones")
        if x.ndim < 2:
            raise ValueError(f"chunked input must be [..., h, D], got shape {list(x.shape)}")
        h = x.shape[-2]
        if h > self.horizon:
            raise ValueError(f"chunk horizon {h} is longer than the statistics' horizon {self.horizon}")
        return self.per_timestep_params.rows(h)

    def normalize(self, x, chunked: bool | None = None) -> np.ndarray:
        """Normalize ``x``; ``chunked`` defaults to True when per-timestep statistics exist."""
        x = np.asarray(x)
        out_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
        p = self.params_for(x, chunked)
        xf = x.astype(np.float64)
        y = (xf - p.center) / p.scale
        if self.clip:
            y = np.clip(y, -self.clip_bound, self.clip_bound)
        y = np.where(p.active, y, xf)
        y = np.where(p.degenerate | p.empty, 0.0, y)
        return y.astype(out_dtype)

    def unnormalize(self, y, chunked: bool | None = None) -> np.ndarray:
        """Inverse of ``normalize`` on unclipped values."""
        y = np.asarray(y)
        out_dtype = y.dtype if np.issubdtype(y.dtype, np.floating) else np.float64
        p = self.params_for(y, chunked)
        yf = y.astype(np.float64)
        x = np.where(p.active, yf * p.scale + p.center, yf)
        x = np.where(p.degenerate, p.center, x)
        x = np.where(p.empty, np.nan, x)
        return x.astype(out_dtype)
