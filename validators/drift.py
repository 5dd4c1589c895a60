"""``drift``: per-dim Jensen-Shannon distance between datasets declared comparable (TFDV-style).

Pairs come from ``validators.drift.pairs`` (``[[a, b], ...]``) or default to every (sim, real)
pair. Each action and state dim of the two datasets' samples is histogrammed on shared bins
(spanning both samples' 0.1..99.9 percentiles; outliers go to the edge bins), and the
Jensen-Shannon distance (base 2, in [0, 1]) is compared with ``js_threshold``. The bin count
shrinks to sqrt(n) for small samples, where sampling noise alone would inflate the distance.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import jensenshannon

from stepnorm.errors import ConfigError
from stepnorm.validators.base import Finding, ValidationContext, validator


def js_distance(a: np.ndarray, b: np.ndarray, bins: int) -> float:
    """Jensen-Shannon distance (base 2, scipy's) between the histograms of ``a`` and ``b`` on shared bins."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    lo = min(np.quantile(a, 0.001), np.quantile(b, 0.001))
    hi = max(np.quantile(a, 0.999), np.quantile(b, 0.999))
    if not hi - lo > 1e-12 * max(1.0, abs(lo)):
        # Both (nearly) constant at the same value, or the quantiles collapse: compare exact values.
        return 0.0 if np.array_equal(np.unique(a), np.unique(b)) else 1.0
    edges = np.linspace(lo, hi, bins + 1)
    p = np.histogram(np.clip(a, lo, hi), edges)[0] / a.size
    q = np.histogram(np.clip(b, lo, hi), edges)[0] / b.size
    with np.errstate(invalid="ignore"):
        # sqrt of a divergence that rounding made a hair below 0 (nearly equal histograms) is NaN
        distance = jensenshannon(p, q, base=2)
    return 0.0 if np.isnan(distance) else float(distance)


def _pairs(ctx: ValidationContext) -> list[tuple[str, str]]:
    declared = ctx.params("drift")["pairs"]
    if declared is None:
        return ctx.pairs()
    names = {d.name for d in ctx.cfg.datasets}
    out = []
    for pair in declared:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not set(pair) <= names:
            raise ConfigError(ctx.cfg.path, f"validators.drift.pairs: {pair!r} is not a pair of dataset names "
                                            f"(have {', '.join(sorted(names))})")
        out.append((pair[0], pair[1]))
    return out


@validator("drift")
def drift(ctx: ValidationContext) -> list[Finding]:
    """Per comparable pair and dim (action and state): the Jensen-Shannon distance of the samples."""
    bins = int(ctx.params("drift")["bins"])
    rows = []
    for a, b in _pairs(ctx):
        sa, sb = ctx.sample(a), ctx.sample(b)
        if sa is None or sb is None:
            continue
        for key in ("action", "state"):
            xa, xb = getattr(sa, key), getattr(sb, key)
            if xa is None or xb is None or not len(xa) or not len(xb) or xa.shape[1] != xb.shape[1]:
                continue
            nb = min(bins, max(4, int(np.sqrt(min(len(xa), len(xb))))))
            for d in range(xa.shape[1]):
                rows.append({"datasets": [a, b], "a": a, "b": b, "key": key, "dims": [d], "dim": d, "bins": nb,
                             "js_distance": js_distance(xa[:, d], xb[:, d], nb),
                             "mean_a": float(xa[:, d].mean()), "mean_b": float(xb[:, d].mean()),
                             "std_a": float(xa[:, d].std()), "std_b": float(xb[:, d].std()),
                             "label": f"{a} vs {b} {key} dim {d}"})
    return ctx.expect("drift", "dims", rows)
