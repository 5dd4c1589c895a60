"""Normalization modes and the numpy ``Normalizer`` (SPEC section 4).

Modes (``lo, hi`` are min/max or q01/q99):

- ``mean_std``: ``y = (x - mean) / std``; inverse ``x = y * std + mean``.
- ``min_max`` / ``q01_q99``: ``y = 2 (x - lo) / (hi - lo) - 1``; inverse ``x = (y + 1)(hi - lo) / 2 + lo``.

Dims with ``mask`` False pass through untouched. Degenerate dims (std or ``hi - lo`` below
``floor * max(1, |center|)``) normalize to 0 and unnormalize to the center (mean, or the middle of
the range); nothing is ever divided by ~0. ``clip`` (default on for the bounds modes) clamps the
normalized value to ``[-1, 1]`` (bounds) or ``[-clip_value, clip_value]`` (mean_std).

``x[..., h, D]`` (``h <= H``) uses the first ``h`` rows of the per-timestep ``[H, D]`` statistics;
``x[..., D]`` uses the global statistics (``select_rows``). A batch of single actions ``[B, D]``
looks like a chunk ``[h, D]``, so with per-timestep statistics a 2-D input needs an explicit
``chunked``.

The shape selection (``select_rows``) and the formula (``affine``, with an ``inverse`` flag) are
written once, here; the numpy ``Normalizer``, the torch modules and the jax functions only supply
their array operations (``ArrayOps``).

Which statistics a config's actions use is one decision (``action_decision``):
``normalization.action.per_timestep`` ``auto`` (on when the config has a ``delta_mask``), ``true``
or ``false``; on uses the ``per_timestep`` block, off uses ``pooled`` with a ``delta_mask`` (every
chunk position is in delta space) and ``global`` without. ``Normalizer.from_artifact`` and the
torch/jax adapters follow the decision recorded in the artifact.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

MODES = ("mean_std", "min_max", "q01_q99")
DEFAULT_FLOOR = 1e-8
DEFAULT_CLIP = {"mean_std": False, "min_max": True, "q01_q99": True}
PER_TIMESTEP_CHOICES = ("auto", True, False)


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


class DecisionWarning(UserWarning):
    """An export or adapter was asked for other action statistics than the artifact's decision."""


class Decision(NamedTuple):
    """The resolved per-timestep decision for a config's actions.

    Attributes:
        per_timestep: whether action chunks are normalized per chunk position.
        block: the action statistics block used: ``per_timestep``, ``pooled`` or ``global``.
        requested: the config's setting (``auto``, True or False).
    """

    per_timestep: bool
    block: str
    requested: Any = "auto"

    def as_dict(self) -> dict:
        """The JSON record written into stats.json and the normalized output's metadata."""
        return {"per_timestep": self.per_timestep, "block": self.block, "requested": self.requested}


def resolve_decision(per_timestep: Any, delta_mask: Sequence[bool] | None) -> Decision:
    """``per_timestep`` (``auto``/True/False) and the config's delta_mask -> the ``Decision``.

    auto is on with a delta_mask (delta actions spread more at every chunk position); off with a
    delta_mask uses the ``pooled`` statistics, because the chunk entries a model predicts at every
    position are deltas, and ``global`` (position 0 only) would mis-scale all but the first.
    """
    if per_timestep not in PER_TIMESTEP_CHOICES:
        raise ValueError(f"per_timestep must be auto, true or false, got {per_timestep!r}")
    has_delta = delta_mask is not None and any(delta_mask)
    on = has_delta if per_timestep == "auto" else bool(per_timestep)
    return Decision(on, "per_timestep" if on else ("pooled" if has_delta else "global"), per_timestep)


def action_decision(doc: Mapping) -> Decision:
    """The decision an artifact document (stats.json) records, or, for artifacts written before it
    was recorded, the one its recorded config implies."""
    recorded = doc.get("action_statistics")
    if recorded is not None:
        return Decision(bool(recorded["per_timestep"]), recorded["block"], recorded.get("requested", "auto"))
    config = doc.get("config") or {}
    spec = ((config.get("normalization") or {}).get("action") or {})
    return resolve_decision(spec.get("per_timestep", "auto"), config.get("delta_mask"))


def block_for(per_timestep: bool, delta_mask: Sequence[bool] | None) -> str:
    """The statistics block that an explicit on/off request uses (see ``resolve_decision``)."""
    return resolve_decision(bool(per_timestep), delta_mask).block


def warn_if_overridden(decision: Decision, block: str, what: str) -> None:
    """Warn (``DecisionWarning``) when ``what`` uses another block than the artifact's decision."""
    if block != decision.block:
        warnings.warn(f"{what} uses the {block!r} action statistics, but the artifact's decision "
                      f"(normalization.action.per_timestep: {_yaml(decision.requested)}) is {decision.block!r}; "
                      f"normalized values will differ from `stepnorm normalize` and the other paths",
                      DecisionWarning, stacklevel=3)


def _yaml(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def select_rows(shape: Sequence[int], dim: int, horizon: int | None, chunked: bool | None) -> int | None:
    """Which statistics apply to an input of ``shape``: None for the ``[D]`` ones, or ``h`` for the
    first ``h`` rows of the ``[H, D]`` per-timestep ones (``horizon`` None: there are none).

    With per-timestep statistics and ``chunked`` None, ``[..., B, h, D]`` (3 or more axes) is a
    chunk and ``[D]`` a single action; a 2-D ``[B, D]`` is ambiguous (a batch of single actions, or
    one chunk) and needs ``chunked``. Without them everything uses the ``[D]`` statistics.
    """
    shape = tuple(shape)
    if shape[-1:] != (dim,):
        raise ValueError(f"last axis of x must be {dim} dims, got shape {list(shape)}")
    if chunked is None:
        if horizon is None or len(shape) == 1:
            return None
        if len(shape) == 2:
            raise ValueError(
                f"input of shape {list(shape)} is ambiguous: a batch of {shape[0]} single actions or one chunk of "
                f"{shape[0]} positions (per-timestep statistics have H={horizon}); pass chunked=True for a chunk "
                f"[h, D], chunked=False for single actions [B, D]")
        chunked = True
    if not chunked:
        return None
    if horizon is None:
        raise ValueError("chunked input needs per-timestep statistics; these have only [D] statistics "
                         "(the artifact's decision is per_timestep: false, or they were built without them)")
    if len(shape) < 2:
        raise ValueError(f"chunked input must be [..., h, D], got shape {list(shape)}")
    if shape[-2] > horizon:
        raise ValueError(f"chunk horizon {shape[-2]} is longer than the statistics' horizon {horizon}")
    return int(shape[-2])


def pick(global_params: NormParams, per_timestep_params: NormParams | None, shape: Sequence[int],
         chunked: bool | None) -> NormParams:
    """The parameters for an input of ``shape`` (``select_rows``); works on any array type."""
    horizon = None if per_timestep_params is None else int(per_timestep_params.center.shape[0])
    rows = select_rows(shape, int(global_params.center.shape[-1]), horizon, chunked)
    return global_params if rows is None else per_timestep_params.rows(rows)


@dataclass(frozen=True)
class ArrayOps:
    """The array operations ``affine`` needs from a backend (numpy, torch, jax)."""

    where: Callable
    clip: Callable  # clip(x, lo, hi), bounds are scalars of the compute dtype (inf: no clipping)


NUMPY_OPS = ArrayOps(np.where, np.clip)


def affine(x, p: NormParams, clip_bound, inverse: bool, ops: ArrayOps):
    """The normalization formula, forward (``y = clip((x - center) / scale)``) or inverse
    (``x = y * scale + center``), on active dims; masked-off dims pass through; degenerate dims
    normalize to 0 and unnormalize to the center; empty positions give 0 and NaN.

    ``x`` and ``p``'s floating fields must already be in the compute dtype; ``clip_bound`` is
    ``inf`` when clipping is off (``-inf`` is never reached).
    """
    if not inverse:
        y = ops.clip((x - p.center) / p.scale, -clip_bound, clip_bound)
        y = ops.where(p.active, y, x)
        return ops.where(p.degenerate | p.empty, 0.0, y)
    out = ops.where(p.active, x * p.scale + p.center, x)
    out = ops.where(p.degenerate, p.center, out)
    return ops.where(p.empty, float("nan"), out)


def degenerate_dims(stats: Mapping[str, np.ndarray], mode: str, mask: Sequence[bool] | None = None,
                    floor: float = DEFAULT_FLOOR) -> np.ndarray:
    """Dims (``[D]`` or ``[H, D]``) the normalizer treats as degenerate: they normalize to 0."""
    return norm_params(stats, mode, mask, floor).degenerate


def default_clip(mode: str, clip: bool | None) -> bool:
    """Whether ``mode`` clips when the config leaves ``clip`` unset."""
    return DEFAULT_CLIP[mode] if clip is None else bool(clip)


class Normalizer:
    """Normalize / unnormalize actions (or states) with ``[D]`` and per-timestep statistics.

    Args:
        global_stats: STATS block with ``[D]`` arrays (``mean, std, min, max, q01, q99``): the
            global statistics, or the pooled ones for a decision that uses ``pooled``.
        per_timestep: STATS block with ``[H, D]`` arrays and ``count [H]``, or None.
        mode: ``mean_std``, ``min_max`` or ``q01_q99``.
        mask: per dim, False passes the dim through untouched (e.g. a gripper).
        clip: clamp normalized values (default: on for bounds modes, off for mean_std).
        clip_value: the bound for mean_std clipping (bounds modes always clip to [-1, 1]).
        floor: relative degenerate-spread floor.
        allow_empty_positions: chunk positions no episode reaches (count 0) have no statistics;
            by default that is an error. When allowed, they normalize to 0 and unnormalize to NaN
            (such entries are always padding in the data the statistics came from).
        allow_nonfinite: by default an input holding NaN or Inf raises ValueError (clipping would
            silently turn Inf into the bound). When True, such values go through the formula as
            they are (NaN stays NaN, Inf is clipped like any value when clipping is on).

    Raises ValueError at construction for an unknown mode, a ``clip_value`` that is not a finite
    number > 0, or a negative ``floor``.
    """

    def __init__(self, global_stats: Mapping[str, np.ndarray], per_timestep: Mapping[str, np.ndarray] | None = None,
                 mode: str = "mean_std", mask: Sequence[bool] | None = None, clip: bool | None = None,
                 clip_value: float = 5.0, floor: float = DEFAULT_FLOOR, allow_empty_positions: bool = False,
                 allow_nonfinite: bool = False):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if isinstance(clip_value, bool) or not isinstance(clip_value, (int, float)) or not (
                np.isfinite(clip_value) and clip_value > 0):
            raise ValueError(f"clip_value must be a finite number > 0, got {clip_value!r}")
        if not (isinstance(floor, (int, float)) and np.isfinite(floor) and floor >= 0):
            raise ValueError(f"floor must be a finite number >= 0, got {floor!r}")
        self.allow_nonfinite = bool(allow_nonfinite)
        self.mode = mode
        self.clip = default_clip(mode, clip) if mode in DEFAULT_CLIP else bool(clip)
        self.clip_bound = 1.0 if mode != "mean_std" else float(clip_value)
        self.mask = None if mask is None else np.asarray(mask, bool)
        self.global_params = norm_params(global_stats, mode, mask, floor)
        self.dim = int(self.global_params.center.shape[-1])
        self.per_timestep_params = None
        self.horizon = None
        self.block = None  # the artifact block the [D] statistics came from (set by from_artifact)
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
    def from_artifact(cls, artifact, key: str = "action", dataset: str | None = None,
                      per_timestep: bool | None = None, **kwargs) -> "Normalizer":
        """Build from a ``stepnorm.artifact.Artifact`` (combined statistics, or one dataset's).

        For actions, ``per_timestep`` None follows the artifact's decision (``action_decision``):
        ``[H, D]`` statistics when it is on, else the ``pooled`` (with a delta_mask) or ``global``
        ``[D]`` ones. True/False override it with a ``DecisionWarning`` naming both. ``state`` always
        uses its global statistics. Mode, mask and clip default to the artifact's config.
        """
        spec = ((artifact.doc.get("config", {}).get("normalization") or {}).get(key) or {})
        for name in ("mode", "mask", "clip"):
            if name not in kwargs and spec.get(name) is not None:
                kwargs[name] = spec[name]
        if key != "action":
            if per_timestep:
                raise ValueError(f"{key} has only global statistics")
            return cls(artifact.stats(key, "global", dataset), None, **kwargs)
        decision = action_decision(artifact.doc)
        if per_timestep is None:
            block = decision.block
        else:
            block = block_for(per_timestep, artifact.doc.get("config", {}).get("delta_mask"))
            warn_if_overridden(decision, block, "this normalizer")
        if block == "per_timestep":
            norm = cls(artifact.stats(key, "global", dataset), artifact.stats(key, "per_timestep", dataset), **kwargs)
        else:
            norm = cls(artifact.stats(key, block, dataset), None, **kwargs)
        norm.block = block
        return norm

    def params_for(self, x: np.ndarray, chunked: bool | None) -> NormParams:
        """The parameters that apply to ``x`` (``select_rows``)."""
        return pick(self.global_params, self.per_timestep_params, np.shape(x), chunked)

    def _apply(self, x, chunked: bool | None, inverse: bool) -> np.ndarray:
        x = np.asarray(x)
        out_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
        if not self.allow_nonfinite and np.issubdtype(x.dtype, np.floating):
            bad = int(np.count_nonzero(~np.isfinite(x)))
            if bad:
                raise ValueError(f"input holds {bad} non-finite value(s) (NaN/Inf); pass finite values or build the "
                                 f"Normalizer with allow_nonfinite=True")
        p = self.params_for(x, chunked)
        bound = self.clip_bound if self.clip else np.inf
        return affine(x.astype(np.float64), p, bound, inverse, NUMPY_OPS).astype(out_dtype)

    def normalize(self, x, chunked: bool | None = None) -> np.ndarray:
        """Normalize ``x``: chunks ``[..., B, h, D]`` per position when this normalizer has
        per-timestep statistics, ``[D]`` with the ``[D]`` ones; ``[B, D]`` needs ``chunked`` then."""
        return self._apply(x, chunked, inverse=False)

    def unnormalize(self, y, chunked: bool | None = None) -> np.ndarray:
        """Inverse of ``normalize`` on unclipped values (same shape rules)."""
        return self._apply(y, chunked, inverse=True)
