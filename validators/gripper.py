"""``gripper``: distinct levels, quantized vs continuous, and range per configured gripper dim.

Seed 004: the sim gripper is continuous in [-1, 1] while the real robot quantizes its command to
a few levels, so a policy trained on the mixture learns commands the robot cannot execute. The
levels come from the sampled actions (statistics do not keep distinct values).
"""

from __future__ import annotations

import numpy as np

from stepnorm.validators.base import Finding, ValidationContext, validator


def gripper_levels(values: np.ndarray, tol: float, max_levels: int, coverage: float) -> list[float] | None:
    """The quantization levels of ``values``, or None when they are continuous.

    Values are rounded to ``tol``; they are quantized when at most ``max_levels`` of the rounded
    values cover at least ``coverage`` of them (so a few transition frames do not count).
    """
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    rounded, counts = np.unique(np.round(values / tol) * tol, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    covered = np.cumsum(counts[order]) / values.size
    needed = int(np.searchsorted(covered, coverage - 1e-12)) + 1
    if needed > max_levels:
        return None
    return sorted(float(v) for v in rounded[order[:needed]])


def _fmt(levels) -> str:
    return "continuous" if levels is None else "{" + ", ".join(f"{v:g}" for v in levels) + "}"


def _describe(ctx: ValidationContext, name: str, dim: int, params: dict) -> dict | None:
    sample = ctx.sample(name)
    if sample is None or sample.action is None or dim >= sample.action.shape[1]:
        return None
    v = sample.action[:, dim]
    levels = gripper_levels(v, params["level_tol"], params["max_levels"], params["level_coverage"])
    return {"values": v, "levels": levels, "min": float(v.min()), "max": float(v.max()),
            "q01": float(np.quantile(v, 0.01)), "q99": float(np.quantile(v, 0.99)), "n": int(v.size)}


@validator("gripper")
def gripper(ctx: ValidationContext) -> list[Finding]:
    """Per gripper dim and dataset: levels and range; per sim/real pair: level and range mismatches."""
    params = ctx.params("gripper")
    tol = params["level_tol"]
    described, dim_rows = {}, []
    for ds in ctx.cfg.datasets:
        for dim in ds.gripper_dims:
            info = _describe(ctx, ds.name, dim, params)
            if info is None:
                continue
            described[ds.name, dim] = info
            dim_rows.append({"datasets": [ds.name], "dataset": ds.name, "domain": ds.domain, "key": "action",
                             "dims": [dim], "dim": dim, "n": info["n"], "quantized": info["levels"] is not None,
                             "levels": _fmt(info["levels"]), "min": info["min"], "max": info["max"],
                             "q01": info["q01"], "q99": info["q99"],
                             "label": f"{ds.name} dim {dim}: {_fmt(info['levels'])}"})
    pair_rows = []
    for sim, real in ctx.pairs():
        for sdim, rdim in zip(ctx.dataset(sim).gripper_dims, ctx.dataset(real).gripper_dims):
            s, r = described.get((sim, sdim)), described.get((real, rdim))
            if s is None or r is None:
                continue
            row = {"datasets": [sim, real], "sim": sim, "real": real, "key": "action", "dims": [sdim], "dim": sdim,
                   "real_dim": rdim, "sim_levels": _fmt(s["levels"]), "real_levels": _fmt(r["levels"]),
                   "sim_min": s["min"], "sim_max": s["max"], "real_min": r["min"], "real_max": r["max"],
                   "continuous_vs_quantized_share": 0.0, "level_mismatch_share": 0.0, "range_mismatch": 0.0,
                   "thresholds": "none"}
            if r["levels"] is not None:
                levels = np.asarray(r["levels"])
                off = float(np.mean(np.min(np.abs(s["values"][:, None] - levels[None, :]), axis=1) > tol))
                row["thresholds"] = ", ".join(f"{t:g}" for t in (levels[1:] + levels[:-1]) / 2) or "none (one level)"
                row["continuous_vs_quantized_share" if s["levels"] is None else "level_mismatch_share"] = off
            else:
                span = max(r["max"] - r["min"], tol)
                row["range_mismatch"] = max(abs(s["min"] - r["min"]), abs(s["max"] - r["max"])) / span
            row["label"] = f"{sim} vs {real} dim {sdim}"
            pair_rows.append(row)
    return ctx.expect("gripper", "dims", dim_rows) + ctx.expect("gripper", "pairs", pair_rows)
