"""Final statistics of one dataset, and the mixture combine across datasets.

``FinalStats`` holds, for the action (``per_timestep [H, D]``, ``global [D]``, ``pooled [D]``) and
the state (``global [Ds]``), exact moments and one KLL sketch per cell. ``combine`` builds the
mixture statistics from several datasets' ``FinalStats``:

- ``samples``: every step of every dataset has equal weight: moments by Chan's merge, sketches by
  KLL merge (exact moments, quantiles within the sketch bound).
- ``mixture``: dataset ``i``'s distribution has probability ``w_i / sum(w)`` (per cell, over the
  datasets with data in that cell): moments of the mixture in closed form, quantiles by inverting
  the weighted mixture of the sketches' CDFs.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from stepnorm.stats.moments import Moments, mixture_moments
from stepnorm.stats.sketch import copy_sketch, merged, mixture_quantiles, sketch_quantiles

WEIGHTINGS = ("samples", "mixture")


def quantile_key(q: float) -> str:
    """``0.01 -> 'q01'``, ``0.5 -> 'q50'``, ``0.99 -> 'q99'`` (SPEC section 3)."""
    pct = round(q * 100, 6)
    if not float(pct).is_integer() or not 0 < pct < 100:
        raise ValueError(f"quantile {q} is not a whole percentile strictly between 0 and 1")
    return f"q{int(pct):02d}"


@dataclass
class CellStats:
    """Exact moments and a sketch per cell of an array of statistics.

    ``sketches`` is a flat list in C order over ``moments.shape``.
    """

    moments: Moments
    sketches: list = field(repr=False)
    k: int = 2000
    # Set by the mixture combine: its moments are not a plain Chan merge of samples.
    mixture_mean: np.ndarray | None = None
    mixture_var: np.ndarray | None = None
    mixture_parts: list | None = field(default=None, repr=False)

    def row(self, index: int) -> "CellStats":
        """Cells ``[index]`` along the first axis (e.g. one chunk position)."""
        width = int(np.prod(self.moments.shape[1:], dtype=np.int64))
        return CellStats(self.moments.take(index), self.sketches[index * width : (index + 1) * width], self.k)

    def to_dict(self, quantiles: Sequence[float]) -> dict[str, np.ndarray]:
        """``{"count", "mean", "std", "min", "max", "qNN"...}``; count per leading index."""
        m = self.moments
        if self.mixture_mean is not None:
            mean = self.mixture_mean
            std = np.sqrt(np.maximum(self.mixture_var, 0.0))
        else:
            mean = np.where(m.n > 0, m.mean, np.nan)
            std = m.std
        out = {
            "count": m.n[..., 0] if m.n.ndim and m.n.shape[-1] else np.zeros(m.n.shape[:-1], np.int64),
            "mean": mean,
            "std": std,
            "min": np.where(m.n > 0, m.min, np.nan),
            "max": np.where(m.n > 0, m.max, np.nan),
        }
        if self.mixture_parts is not None:
            qs = np.stack([mixture_quantiles(parts, quantiles) for parts in self.mixture_parts])
        else:
            qs = np.stack([sketch_quantiles(s, quantiles) for s in self.sketches]) if self.sketches else np.zeros((0, len(quantiles)))
        qs = qs.reshape(m.shape + (len(quantiles),))
        for i, q in enumerate(quantiles):
            out[quantile_key(q)] = qs[..., i]
        return out


@dataclass
class FinalStats:
    """Statistics of one dataset (or of a mixture).

    Attributes:
        per_timestep: action cells ``[H, D]``.
        global_: action cells ``[D]`` over each step once (the chunk's first entry, ``A_t[0]``).
        pooled: action cells ``[D]`` over all valid chunk entries of all positions.
        state: state cells ``[Ds]`` or None.
        raw: with a delta_mask, action cells ``[D]`` over each stored (non-delta) action once
            (``global`` without a delta_mask); None without one, or when unknown.
    """

    horizon: int
    num_episodes: int
    num_steps: int
    per_timestep: CellStats | None
    global_: CellStats | None
    pooled: CellStats | None
    state: CellStats | None
    raw: CellStats | None = None

    @classmethod
    def from_accumulator(cls, acc) -> "FinalStats":
        acc.flush()
        h, k = acc.spec.horizon, acc.spec.sketch_k
        if acc.action_dim is None:
            return cls(h, acc.num_episodes, acc.num_steps, None, None, None, None)
        d = acc.action_dim
        plain, delta = acc.plain_dims, acc.delta_dims
        per_t = Moments.empty((h, d))
        sketches = [[None] * d for _ in range(h)]
        head, tail, dgroup = acc.groups["head"], acc.groups["tail"], acc.groups["delta"]
        # Plain dims: position k = tail ∪ head[k] ∪ ... ∪ head[H-2] (suffix merges, see accumulator).
        running = tail.moments.copy()
        running_sk = [copy_sketch(s) for s in tail.sketches.sketches]
        for pos in range(h - 1, -1, -1):
            if pos < h - 1:
                running.merge(head.moments.take(pos))
                for j in range(len(plain)):
                    cell = head.sketches.cell((pos, j))
                    if not cell.is_empty():
                        running_sk[j].merge(cell)
            _put(per_t, (pos, plain), running)
            for j, dim in enumerate(plain):
                sketches[pos][dim] = copy_sketch(running_sk[j])
        for pos in range(h):
            _put(per_t, (pos, delta), dgroup.moments.take(pos))
            for j, dim in enumerate(delta):
                sketches[pos][dim] = dgroup.sketches.cell((pos, j))
        flat = [s for row in sketches for s in row]
        per_timestep = CellStats(per_t, flat, k)
        global_ = per_timestep.row(0)
        global_ = CellStats(global_.moments.copy(), [copy_sketch(s) for s in global_.sketches], k)
        pooled_m = Moments.empty((d,))
        for pos in range(h):
            pooled_m.merge(per_t.take(pos))
        pooled_sk = [merged((sketches[pos][dim] for pos in range(h)), k) for dim in range(d)]
        pooled = CellStats(pooled_m, pooled_sk, k)
        state = None
        if "state" in acc.groups:
            sg = acc.groups["state"]
            state = CellStats(sg.moments.copy(), [copy_sketch(s) for s in sg.sketches.sketches], k)
        raw = None
        if len(delta) and "raw" in acc.groups:
            raw_m = global_.moments.copy()
            raw_sk = list(global_.sketches)
            rg = acc.groups["raw"]
            _put(raw_m, (delta,), rg.moments)
            for j, dim in enumerate(delta):
                raw_sk[dim] = copy_sketch(rg.sketches.cell((j,)))
            raw = CellStats(raw_m, [copy_sketch(s) for s in raw_sk], k)
        return cls(h, acc.num_episodes, acc.num_steps, per_timestep, global_, pooled, state, raw)

    def to_dict(self, quantiles: Sequence[float]) -> dict:
        """``{"num_episodes", "num_steps", "action": {"global", "per_timestep", "pooled"}, "state": {"global"}}``."""
        out = {"num_episodes": self.num_episodes, "num_steps": self.num_steps}
        if self.per_timestep is not None:
            out["action"] = {
                "global": self.global_.to_dict(quantiles),
                "per_timestep": self.per_timestep.to_dict(quantiles),
                "pooled": self.pooled.to_dict(quantiles),
            }
            if self.raw is not None:
                out["action"]["raw"] = self.raw.to_dict(quantiles)
        if self.state is not None:
            out["state"] = {"global": self.state.to_dict(quantiles)}
        return out


def _put(target: Moments, index, source: Moments) -> None:
    for name in Moments.__slots__:
        getattr(target, name)[index] = getattr(source, name)


def combine(parts: Sequence[tuple[FinalStats, float]], weighting: str = "samples") -> FinalStats:
    """Mixture statistics of several datasets' ``FinalStats`` with their sampling weights."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if not parts:
        raise ValueError("combine needs at least one dataset")
    weights = [float(w) for _, w in parts]
    if not all(math.isfinite(w) and w >= 0 for w in weights):
        raise ValueError(f"weights must be finite and >= 0, got {weights}")
    # Only ratios matter; scaling by the largest keeps sums of huge weights (1e308) finite.
    top = max(weights) or 1.0
    parts = [(p, w / top) for (p, _), w in zip(parts, weights)]
    horizons = {p.horizon for p, _ in parts}
    if len(horizons) != 1:
        raise ValueError(f"cannot combine statistics with different horizons {sorted(horizons)}")
    with_data = [(p, w) for p, w in parts if p.per_timestep is not None]
    fields = ("per_timestep", "global_", "pooled", "state", "raw")
    combined = {}
    for name in fields:
        cells = [(getattr(p, name), w) for p, w in with_data if getattr(p, name) is not None]
        if not cells or len(cells) != len(with_data):
            combined[name] = None
            continue
        shapes = {c.moments.shape for c, _ in cells}
        if len(shapes) != 1:
            raise ValueError(f"cannot combine {name} statistics of different shapes {sorted(shapes)}")
        combined[name] = _combine_cells(cells, weighting)
    return FinalStats(
        horizon=horizons.pop(),
        num_episodes=sum(p.num_episodes for p, _ in parts),
        num_steps=sum(p.num_steps for p, _ in parts),
        **combined,
    )


def _combine_cells(cells: list[tuple[CellStats, float]], weighting: str) -> CellStats:
    k = cells[0][0].k
    n_cells = len(cells[0][0].sketches)
    if weighting == "mixture":
        # Datasets with weight 0 are not part of the distribution the trainer sees.
        cells = [(c, w) for c, w in cells if w > 0]
        if not cells:
            raise ValueError("weighting 'mixture' needs at least one dataset with weight > 0")
    moments = Moments.empty(cells[0][0].moments.shape)
    for c, _ in cells:
        moments.merge(c.moments)
    sketches = [merged((c.sketches[i] for c, _ in cells), k) for i in range(n_cells)]
    if weighting == "samples":
        return CellStats(moments, sketches, k)
    mean, var = mixture_moments([(c.moments, w) for c, w in cells])
    parts = [[(c.sketches[i], w) for c, w in cells] for i in range(n_cells)]
    return CellStats(moments, sketches, k, mean, var, parts)
