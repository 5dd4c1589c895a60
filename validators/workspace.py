"""``workspace``: per-axis bounds of the configured position (state) dims, sim against real.

Seed 004's table: the sim workspace (e.g. X in [0.05, 0.45]) is wider than the real robot's
([0.15, 0.35]), so a policy trained on sim data commands positions the robot clips. Bounds come
from the artifact's exact state min/max (and q01/q99); the clipped share is the fraction of the
sim dataset's sampled states outside the real [min, max].
"""

from __future__ import annotations

import numpy as np

from stepnorm.stats.combine import quantile_key
from stepnorm.validators.base import Finding, ValidationContext, validator


def _state_stats(ctx: ValidationContext, name: str) -> dict | None:
    if "state" not in ctx.artifact.block(name):
        return None
    return ctx.artifact.stats("state", "global", name)


@validator("workspace")
def workspace(ctx: ValidationContext) -> list[Finding]:
    """Per position dim: bounds per dataset; per sim/real pair: share of sim states the real bounds clip."""
    lo_key, hi_key = quantile_key(0.01), quantile_key(0.99)
    axes, stats = [], {}
    for ds in ctx.cfg.datasets:
        if not ds.position_dims:
            continue
        st = _state_stats(ctx, ds.name)
        if st is None:
            axes.append({"datasets": [ds.name], "dataset": ds.name, "key": "state", "dims": list(ds.position_dims),
                         "missing_state": 1, "label": f"{ds.name}: no state"})
            continue
        stats[ds.name] = st
        for d in ds.position_dims:
            axes.append({"datasets": [ds.name], "dataset": ds.name, "domain": ds.domain, "key": "state", "dims": [d],
                         "dim": d, "missing_state": 0, "min": st["min"][d], "max": st["max"][d],
                         "q01": st[lo_key][d] if lo_key in st else None, "q99": st[hi_key][d] if hi_key in st else None,
                         "mean": st["mean"][d], "label": f"{ds.name} dim {d}"})
    pairs = []
    for sim, real in ctx.pairs():
        sample = ctx.sample(sim)
        if sim not in stats or real not in stats or sample is None or sample.state is None:
            continue
        for sdim, rdim in zip(ctx.dataset(sim).position_dims, ctx.dataset(real).position_dims):
            values = sample.state[:, sdim]
            rmin, rmax = stats[real]["min"][rdim], stats[real]["max"][rdim]
            below, above = float(np.mean(values < rmin)), float(np.mean(values > rmax))
            pairs.append({"datasets": [sim, real], "sim": sim, "real": real, "key": "state", "dims": [sdim],
                          "dim": sdim, "real_dim": rdim, "sim_min": stats[sim]["min"][sdim],
                          "sim_max": stats[sim]["max"][sdim], "real_min": rmin, "real_max": rmax,
                          "below": below, "above": above, "clipped_share": below + above,
                          "label": f"{sim} vs {real} dim {sdim}"})
    return ctx.expect("workspace", "axes", axes) + ctx.expect("workspace", "pairs", pairs)
