"""``stats_health``: statistics that would break normalization or training.

- NaN/Inf/null anywhere in a statistics block.
- Spreads so small against the data's extent that normalized values explode (openpi #814: a
  mostly-constant dim has q01 == q99, and ``(x - q01) / (q99 - q01)`` reaches ~1e6), or collapse
  to 0 under the normalizer's degenerate-dim floor while the dim still carries signal.
- Constant dims (they normalize to 0: harmless, reported).
- Chunk positions no episode reaches (horizon longer than every episode), and the share of
  padded chunk entries ``1 - sum(count[k]) / (H * num_steps)``.
- How far per-timestep statistics are from global ones:
  ``max over k, d of max(|std_k / std - 1|, |mean_k - mean| / std)``; large gaps mean global
  statistics mis-scale late chunk positions, so per-timestep normalization should be on.
- What global normalization does to the loss over chunk positions (``positions`` table, per
  action dim): the ratio of the pooled spread (every valid chunk entry, openpi's statistics) to
  the spread at each position k, and the implied loss-weight ratio ``(spread_{H-1} / spread_0)^2``
  between the last and the first position: with one global scale, an error at position k costs
  ``(spread_k / spread_global)^2`` times what it costs under per-timestep normalization. The
  loss-weight ratio is the same whichever global scale is used (pooled, or per-frame statistics
  as LeRobot computes them). docs/evidence.md measures when that changes closed-loop success
  (delta actions, long chunks, limited fit); the thresholds come from there.
- Whether every dataset has its validators' sample.
"""

from __future__ import annotations

import numpy as np

from stepnorm.normalize import center_and_spread, default_clip, degenerate_dims, norm_params
from stepnorm.validators.base import Finding, ValidationContext, validator

_KINDS = {"action": ("global", "pooled", "per_timestep"), "state": ("global",)}


def _blocks(ctx: ValidationContext) -> list[tuple[str, str | None, bool]]:
    """(label, dataset or None for combined, whether the normalizer uses it)."""
    per_dataset = ctx.cfg.normalize_with == "per_dataset"
    return [("combined", None, not per_dataset)] + [(n, n, per_dataset) for n in ctx.artifact.dataset_names]


def _dim_rows(ctx: ValidationContext, label: str, dataset: str | None, used: bool, key: str) -> list[dict]:
    spec = ctx.cfg.normalization.get(key)
    kinds = {kind: ctx.artifact.stats(key, kind, dataset) for kind in _KINDS[key]}
    glob = kinds["global"]
    dim = glob["mean"].shape[-1]
    mask = np.ones(dim, bool) if spec is None or spec.mask is None else np.asarray(spec.mask, bool)
    non_finite = np.zeros(dim, int)
    for kind, st in kinds.items():
        # Per-timestep rows no episode reaches are empty by construction (reported separately).
        valid = (st["count"] > 0)[:, None] if kind == "per_timestep" else True
        for field, arr in st.items():
            if field != "count":
                non_finite += (~np.isfinite(arr) & valid).reshape(-1, dim).sum(axis=0)
    rows = []
    for d in range(dim):
        row = {"datasets": [dataset] if dataset else list(ctx.artifact.dataset_names), "block": label, "key": key,
               "dims": [d], "dim": d, "non_finite": int(non_finite[d]), "constant": 0, "spread_ratio": np.nan,
               "mode": spec.mode if spec else "none", "where": "", "spread": np.nan, "lo": glob["min"][d],
               "hi": glob["max"][d], "effect": "", "label": f"{label} {key} dim {d}"}
        rows.append(row)
        if spec is None or not used or not mask[d] or non_finite[d]:
            continue
        if glob["max"][d] == glob["min"][d]:
            row["constant"] = 1
            continue
        clip = default_clip(spec.mode, spec.clip)
        for kind in ("global", "per_timestep"):
            if kind not in kinds:
                continue
            st = kinds[kind]
            center, spread = center_and_spread(st, spec.mode)
            # Which dims collapse to 0 is the normalizer's call, not re-derived here.
            collapsed = degenerate_dims(st, spec.mode)
            extent = np.maximum(np.abs(st["max"] - center), np.abs(st["min"] - center))
            if kind == "global":
                cases = [("global", collapsed[d], spread[d], extent[d], st["min"][d], st["max"][d])]
            else:
                cases = [(f"k={k}", collapsed[k, d], spread[k, d], extent[k, d], st["min"][k, d], st["max"][k, d])
                         for k in range(len(st["count"])) if st["count"][k] > 0 and extent[k, d] > 0]
            for where, degenerate, s, e, lo, hi in cases:
                ratio = s / e if e > 0 else np.inf
                if np.isfinite(ratio) and (np.isnan(row["spread_ratio"]) or ratio < row["spread_ratio"]):
                    effect = ("the normalizer treats it as degenerate: the whole dim becomes 0 and its signal is lost"
                              if degenerate else f"normalized values reach +-{1 / ratio:.3g}"
                              + (" before clipping to +-1, so everything beyond the range saturates" if clip else ""))
                    row.update(spread_ratio=float(ratio), where=where, spread=float(s), lo=float(lo), hi=float(hi),
                               effect=effect)
    return rows


def _chunk_row(ctx: ValidationContext, label: str, dataset: str | None, used: bool) -> dict:
    pt = ctx.artifact.stats("action", "per_timestep", dataset)
    glob = ctx.artifact.stats("action", "global", dataset)
    block = ctx.artifact.block(dataset)
    horizon = ctx.artifact.horizon
    count = pt["count"]
    num_steps = int(block.get("num_steps") or glob["count"])
    empty = [int(k) for k in np.flatnonzero(count == 0)]
    spec = ctx.cfg.normalization.get("action")
    mask = np.ones(glob["mean"].shape[-1], bool) if spec is None or spec.mask is None else np.asarray(spec.mask, bool)
    gap, gap_dim, gap_k = 0.0, None, None
    if used:
        std_g = glob["std"]
        ok = norm_params(glob, "mean_std", mask).active  # the dims a z-score ratio is defined on
        valid = (count > 0)[:, None] & ok[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            diff = np.maximum(np.abs(pt["std"] / std_g - 1), np.abs(pt["mean"] - glob["mean"]) / std_g)
        diff = np.where(valid & np.isfinite(diff), diff, 0.0)
        if diff.size and diff.max() > 0:
            gap_k, gap_dim = (int(i) for i in np.unravel_index(np.argmax(diff), diff.shape))
            gap = float(diff[gap_k, gap_dim])
    # The longest episode is the largest k + 1 with data.
    longest = int(np.flatnonzero(count > 0).max()) + 1 if np.any(count > 0) else 0
    # For weighting: mixture the combined counts are not step counts; padding is a per-dataset fact.
    padded = (1.0 - float(count.sum()) / (horizon * num_steps)) if num_steps and (
        dataset is not None or ctx.cfg.weighting == "samples") else 0.0
    return {"datasets": [dataset] if dataset else list(ctx.artifact.dataset_names), "block": label, "key": "action",
            "dims": [], "horizon": horizon, "num_steps": num_steps, "padded_share": padded,
            "empty_positions": len(empty) if used else 0, "empty_list": empty, "longest": longest,
            "per_timestep_gap": gap if used else 0.0, "gap_dim": gap_dim, "gap_k": gap_k, "used": used,
            "label": label}


def spread_by_position(ctx: ValidationContext, dataset: str | None, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """``(pooled spread [D], per-position spread [H, D])`` of the action in ``mode`` (NaN where a position is empty)."""
    _, pooled = center_and_spread(ctx.artifact.stats("action", "pooled", dataset), mode)
    pt = ctx.artifact.stats("action", "per_timestep", dataset)
    _, spread = center_and_spread(pt, mode)
    return pooled, np.where((pt["count"] > 0)[:, None], spread, np.nan)


def _position_rows(ctx: ValidationContext, label: str, dataset: str | None, used: bool) -> list[dict]:
    """Per masked-on action dim: pooled / per-position spread and the implied loss-weight ratio."""
    spec = ctx.cfg.normalization.get("action")
    if spec is None or not used:
        return []
    pooled, spread = spread_by_position(ctx, dataset, spec.mode)
    mask = np.ones(pooled.shape[-1], bool) if spec.mask is None else np.asarray(spec.mask, bool)
    with_data = np.flatnonzero(np.isfinite(spread).all(axis=1))
    rows = []
    if not len(with_data):
        return rows
    last = int(with_data.max())
    # A dim the normalizer treats as degenerate (tiny_spread's business) has no ratio to speak of.
    flat = degenerate_dims(ctx.artifact.stats("action", "pooled", dataset), spec.mode)
    per_position = degenerate_dims(ctx.artifact.stats("action", "per_timestep", dataset), spec.mode)[with_data]
    for d in np.flatnonzero(mask):
        s0, s_last, g = float(spread[0, d]), float(spread[last, d]), float(pooled[d])
        ok = not flat[d] and not per_position[:, d].any()
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = g / spread[:, d]
        rows.append({"datasets": [dataset] if dataset else list(ctx.artifact.dataset_names), "block": label,
                     "key": "action", "dims": [int(d)], "dim": int(d), "mode": spec.mode, "horizon": ctx.artifact.horizon,
                     "last_k": last, "spread_pooled": g, "spread_first": s0, "spread_last": s_last,
                     "pooled_to_first": float(ratio[0]) if ok else np.nan,
                     "pooled_to_last": float(ratio[last]) if ok else np.nan,
                     "ratio_by_k": [float(f"{r:.3g}") for r in ratio[: last + 1]] if ok else [],
                     "loss_weight_ratio": (s_last / s0) ** 2 if ok else np.nan,
                     "label": f"{label} action dim {d}"})
    return rows


@validator("stats_health")
def stats_health(ctx: ValidationContext) -> list[Finding]:
    """NaN/Inf, exploding or collapsing spreads, constant dims, chunk coverage, per-timestep gap and loss weights."""
    dims, chunks, positions = [], [], []
    for label, dataset, used in _blocks(ctx):
        block = ctx.artifact.block(dataset)
        for key in ("action", "state"):
            if key in block:
                dims.extend(_dim_rows(ctx, label, dataset, used, key))
        chunks.append(_chunk_row(ctx, label, dataset, used))
        positions.extend(_position_rows(ctx, label, dataset, used))
    samples = [{"datasets": [n], "dataset": n, "key": "", "dims": [], "missing_sample": int(ctx.sample(n) is None),
                "label": n} for n in ctx.artifact.dataset_names]
    return (ctx.expect("stats_health", "dims", dims) + ctx.expect("stats_health", "chunks", chunks)
            + ctx.expect("stats_health", "positions", positions) + ctx.expect("stats_health", "samples", samples))
