"""Final statistics of one dataset, and the mixture combine across datasets.

``FinalStats`` holds, for the action (``per_timestep [H, D]``, ``global [D]``, ``pooled [D]``) and
the state (``global [Ds]``), exact moments and, per cell, which accumulator cells it is the union
of; its quantiles are exact order statistics (numpy's ``inverted_cdf``, see stepnorm.stats.exact),
selected when first asked for. ``combine`` builds the mixture statistics of several datasets:

- ``samples``: every step of every dataset has equal weight: moments by Chan's merge (datasets in
  the order given), quantiles the exact order statistics of the union.
- ``mixture``: dataset ``i``'s distribution has probability ``w_i / sum(w)`` (per cell, over the
  datasets with data in that cell): moments of the mixture in closed form, quantiles by the exact
  weighted ``inverted_cdf`` rule.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from stepnorm import chunks
from stepnorm.stats.exact import DataRef, Source, Target, resolve
from stepnorm.stats.moments import Moments, mixture_moments

WEIGHTINGS = ("samples", "mixture")


def quantile_key(q: float) -> str:
    """``0.01 -> 'q01'``, ``0.5 -> 'q50'``, ``0.99 -> 'q99'`` (SPEC section 3)."""
    pct = round(q * 100, 6)
    if not float(pct).is_integer() or not 0 < pct < 100:
        raise ValueError(f"quantile {q} is not a whole percentile strictly between 0 and 1")
    return f"q{int(pct):02d}"


@dataclass
class CellStats:
    """Exact moments and, per cell, the quantile target (member cells) of an array of statistics.

    ``targets`` is a flat list in C order over ``moments.shape``; ``refs`` maps each member's
    ``ref`` to its dataset's ``DataRef``.
    """

    moments: Moments
    targets: list[Target] = field(repr=False)
    refs: dict[int, DataRef] = field(repr=False)
    # Set by the mixture combine: its moments are not a plain Chan merge of samples.
    mixture_mean: np.ndarray | None = None
    mixture_var: np.ndarray | None = None
    _resolved: tuple | None = field(default=None, repr=False)

    def row(self, index: int) -> "CellStats":
        """Cells ``[index]`` along the first axis (e.g. one chunk position)."""
        width = int(np.prod(self.moments.shape[1:], dtype=np.int64))
        targets = [Target(t.members, t.weights) for t in self.targets[index * width : (index + 1) * width]]
        return CellStats(self.moments.take(index).copy(), targets, self.refs)

    def quantiles(self, quantiles: Sequence[float]) -> np.ndarray:
        """Exact quantiles ``[*shape, len(quantiles)]`` (computed once per list of quantiles)."""
        if self._resolved != tuple(quantiles):
            resolve_all([self], quantiles)
        qs = np.stack([t.result for t in self.targets]) if self.targets else np.zeros((0, len(quantiles)))
        return qs.reshape(self.moments.shape + (len(quantiles),))

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
        qs = self.quantiles(quantiles)
        for i, q in enumerate(quantiles):
            out[quantile_key(q)] = qs[..., i]
        return out


def resolve_all(cells: Sequence[CellStats], quantiles: Sequence[float]) -> None:
    """Select the exact quantiles of all ``cells`` together (one set of passes over the data);
    cells already resolved for these quantiles are skipped."""
    cells = [c for c in cells if c._resolved != tuple(quantiles)]
    if not cells:
        return
    refs: dict[int, DataRef] = {}
    for c in cells:
        refs.update(c.refs)
    resolve([t for c in cells for t in c.targets], quantiles, refs)
    for c in cells:
        c._resolved = tuple(quantiles)


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

    @property
    def blocks(self) -> list[CellStats]:
        return [c for c in (self.per_timestep, self.global_, self.pooled, self.state, self.raw) if c is not None]

    @classmethod
    def from_accumulator(cls, acc, data=None) -> "FinalStats":
        acc.flush()
        h = acc.spec.horizon
        if acc.action_dim is None:
            return cls(h, acc.num_episodes, acc.num_steps, None, None, None, None)
        ref = DataRef(acc, data)
        rid = id(ref)
        refs = {rid: ref}
        d = acc.action_dim
        plain, delta = acc.plain_dims, acc.delta_dims
        n_plain = len(plain)
        per_t = Moments.empty((h, d))
        members: list[list] = [[None] * d for _ in range(h)]
        groups = acc.groups
        # Plain dims: position k is the union of chunks.position_members(k) (suffix merges).
        # Positions run from H-1 down, so each adds the one member (a HEAD row) it has beyond the
        # position after it: every group's moments are merged once.
        running, merged = None, set()
        for pos in range(h - 1, -1, -1):
            members_pos = chunks.position_members(pos, h)
            for group, j in members_pos:
                if (group, j) not in merged:
                    merged.add((group, j))
                    cells = groups[group].moments if j is None else groups[group].moments.take(j)
                    running = cells.copy() if running is None else running.merge(cells)
            _put(per_t, (pos, plain), running)
            for i, dim in enumerate(plain):
                members[pos][dim] = [(Source(rid, group, i if j is None else j * n_plain + i), 1)
                                     for group, j in members_pos]
        for pos in range(h):
            _put(per_t, (pos, delta), groups[chunks.DELTA].moments.take(pos))
            for j, dim in enumerate(delta):
                members[pos][dim] = [(Source(rid, chunks.DELTA, pos * len(delta) + j), 1)]
        per_timestep = CellStats(per_t, [Target(m) for row in members for m in row], refs)
        global_ = per_timestep.row(0)
        pooled_m = Moments.empty((d,))
        for pos in range(h):
            pooled_m.merge(per_t.take(pos))
        pooled_members = []
        for dim in range(d):
            # the union over positions, as multiplicities: tail is in all H, head[p] in p + 1
            counts: dict[Source, int] = {}
            for pos in range(h):
                for src, mult in members[pos][dim]:
                    counts[src] = counts.get(src, 0) + mult
            pooled_members.append(Target(sorted(counts.items(), key=lambda kv: (kv[0].group, kv[0].cell))))
        pooled = CellStats(pooled_m, pooled_members, refs)
        state = None
        if chunks.STATE in groups:
            sg = groups[chunks.STATE]
            state = CellStats(sg.moments.copy(), [Target([(Source(rid, chunks.STATE, i), 1)]) for i in range(sg.shape[0])],
                              refs)
        raw = None
        if len(delta):
            # the stored actions: global's cells for plain dims, the RAW group for delta dims
            raw_m = global_.moments.copy()
            _put(raw_m, (delta,), groups[chunks.RAW].moments)
            targets = [Target(list(t.members), t.weights) for t in global_.targets]
            for j, dim in enumerate(delta):
                targets[dim] = Target([(Source(rid, chunks.RAW, j), 1)])
            raw = CellStats(raw_m, targets, refs)
        return cls(h, acc.num_episodes, acc.num_steps, per_timestep, global_, pooled, state, raw)

    def to_dict(self, quantiles: Sequence[float]) -> dict:
        """``{"num_episodes", "num_steps", "action": {"global", "per_timestep", "pooled"}, "state": {"global"}}``."""
        resolve_all(self.blocks, quantiles)  # every block's quantiles in one set of passes
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
    if weighting == "mixture":
        # Datasets with weight 0 are not part of the distribution the trainer sees.
        cells = [(c, w) for c, w in cells if w > 0]
        if not cells:
            raise ValueError("weighting 'mixture' needs at least one dataset with weight > 0")
    moments = Moments.empty(cells[0][0].moments.shape)
    refs: dict[int, DataRef] = {}
    for c, _ in cells:
        moments.merge(c.moments)
        refs.update(c.refs)
    n_cells = len(cells[0][0].targets)
    targets = []
    for i in range(n_cells):
        members = [m for c, _ in cells for m in c.targets[i].members]
        weights = None
        if weighting == "mixture":
            weights = {src.ref: w for c, w in cells for src, _ in c.targets[i].members}
        targets.append(Target(members, weights))
    if weighting == "samples":
        return CellStats(moments, targets, refs)
    mean, var = mixture_moments([(c.moments, w) for c, w in cells])
    return CellStats(moments, targets, refs, mean, var)
