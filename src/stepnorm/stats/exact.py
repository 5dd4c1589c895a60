"""Exact quantiles in bounded memory: a deterministic bracketing sample, then passes over the data.

The rule (one, everywhere): numpy's ``inverted_cdf``. For ``n`` entries and rank ``q`` the result
is the ``c``-th smallest entry with ``c = max(0, ceil(n*q - 1)) + 1`` (numpy's own arithmetic, so
``np.quantile(x, q, method="inverted_cdf")`` agrees bit for bit). For the ``mixture`` weighting,
dataset ``i`` gives each of its ``n_i`` entries probability ``p_i / n_i`` (``p_i`` its normalized
weight) and the result is the smallest entry ``x`` with ``F(x) = sum_i p_i * #(x_i <= x) / n_i >= q``
(the weighted ``inverted_cdf``), evaluated in exact rational arithmetic: numpy's weighted
``inverted_cdf`` gives the same except where its float cumulative sum rounds across an ``F(x)``
that equals ``q`` exactly.

How, in bounded memory and independent of how the data was split:

1. Each cell keeps a ``DistinctSample``: the ``k`` distinct values with the smallest hash of their
   bits, each with its exact count. A value's hash is a function of the value only, so the sample
   of a union is the sample of the union of samples, whatever the split, order or merge tree; a
   value that is kept has its exact total count. When a cell has at most ``k`` distinct values the
   sample is its whole histogram and the quantiles are read from it directly.
2. Otherwise the sample's values are candidate edges: one pass over the numeric data counts, per
   cell, the entries below and at each edge in a window around the estimated rank. The counts add
   across cells, datasets and files. They tell which edge is the answer, or which open interval
   between two edges holds it; a window that does not contain the target rank is detected from the
   counts and widened to every edge of the sample (a second counting pass, rare).
3. A last pass collects the entries inside each target's interval (about ``n / k`` of them) and the
   exact order statistic is selected from the counts below plus the sorted collected entries.
   The counting pass keeps the entries that lie within its windows (the only ones it locates
   among the edges; the rest are only counted) as long as they total at most ``KEEP_VALUES``;
   an interval inside a kept window is then answered from them and the data is not read again.
   The entries, counts and results are the same either way.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Iterable, Sequence

import numpy as np

from stepnorm import chunks


DEFAULT_SAMPLE_K = 2000
# Steps of streamed episodes (values not held in memory) scanned at once in a pass (``_scan``).
SCAN_BATCH_STEPS = 1 << 18
# Entries a count pass keeps (near the candidate edges: those a collect pass would read) so that
# the collect pass need not read the data again; beyond this many (256 MB), it does. About 7% of
# a 6-dim delta_mask's entries at H=50 and k=2000: 1M steps fit.
KEEP_VALUES = 1 << 25

_UINT64_MAX = np.iinfo(np.uint64).max
SPLITMIX64_GAMMA = 0x9E3779B97F4A7C15
_M1, _M2, _M3 = np.uint64(SPLITMIX64_GAMMA), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def value_hash(values: np.ndarray) -> np.ndarray:
    """splitmix64 of the float64 bits (``-0.0`` hashed as ``0.0``): a value's sampling priority."""
    z = np.asarray(np.asarray(values, np.float64) + 0.0).view(np.uint64)  # a new array: mixed in place
    with np.errstate(over="ignore"):
        np.add(z, _M1, out=z)
    return _mix_in_place(z)


def splitmix64_mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's output mix of ``z`` (uint64; the state already advanced by the golden gamma
    ``SPLITMIX64_GAMMA``): a bijection of the 64-bit patterns."""
    return _mix_in_place(np.array(z, np.uint64, copy=True))


def _mix_in_place(z: np.ndarray) -> np.ndarray:
    """``splitmix64_mix`` overwriting ``z`` (one scratch array instead of a temporary per step:
    the hash runs over every entry of the statistics)."""
    z = np.asarray(z)
    scratch = np.empty_like(z)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps
        for shift, factor in ((30, _M2), (27, _M3)):
            np.right_shift(z, np.uint64(shift), out=scratch)
            np.bitwise_xor(z, scratch, out=z)
            np.multiply(z, factor, out=z)
        np.right_shift(z, np.uint64(31), out=scratch)
        np.bitwise_xor(z, scratch, out=z)
    return z


def _smallest_hashes(values: np.ndarray, k: int, hashes: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ``k`` distinct ``values`` of smallest hash. splitmix64 is a bijection of the
    64-bit patterns, so distinct values have distinct hashes and the set is unique."""
    hashes = value_hash(values) if hashes is None else hashes
    return np.argpartition(hashes, k - 1)[:k] if k < len(values) else np.arange(len(values))


def _bottom_distinct(hashes: np.ndarray, k: int) -> np.ndarray | None:
    """Mask of the entries whose hash is among the ``k`` smallest distinct ``hashes`` (None: all
    of them are), found with partitions instead of a sort of every entry."""
    n = len(hashes)
    m = k
    while m < n:
        low = hashes[hashes <= np.partition(hashes, m - 1)[m - 1]]
        distinct = np.unique(low)
        if len(distinct) >= k:
            return hashes <= distinct[k - 1]
        # duplicates among the m smallest (the same value in several members): look further, as
        # far as their share says k distinct values lie (repeated values would otherwise take a
        # partition per few missing values), at least k - len(distinct) further
        m = max(m + k - len(distinct), -(-m * k * 11 // (10 * len(distinct))))
    # the look-ahead reached every entry: decide on all of them (more than k distinct values
    # may still be there, e.g. k=2 over hashes [a, a, b, c])
    distinct = np.unique(hashes)
    return hashes <= distinct[k - 1] if len(distinct) > k else None


def count_threshold(n: int, q: float) -> int:
    """How many entries must be ``<= x`` for ``x`` to be the ``inverted_cdf`` q-quantile of ``n``."""
    return max(0, math.ceil(float(n) * q - 1.0)) + 1


class DistinctSample:
    """The ``k`` distinct values of smallest ``value_hash``, each with its exact count.

    ``values``/``counts`` are sorted by hash; ``truncated`` is True iff some distinct value was
    left out (then the cell held more than ``k`` distinct values).
    """

    __slots__ = ("k", "values", "counts", "hashes", "truncated")

    def __init__(self, k: int, values=None, counts=None, truncated: bool = False, hashes=None):
        self.k = int(k)
        self.values = np.zeros(0) if values is None else np.asarray(values, np.float64)
        self.counts = np.zeros(0, np.int64) if counts is None else np.asarray(counts, np.int64)
        self.hashes = value_hash(self.values) if hashes is None else hashes  # given: the values' own
        self.truncated = bool(truncated)

    def add(self, values: np.ndarray) -> None:
        """Add the entries of a 1-D float64 array (no NaN)."""
        if not len(values):
            return
        values = values + 0.0
        if len(self.values) >= self.k:
            # Only values whose hash does not exceed the largest kept one can be kept.
            keep = value_hash(values) <= self.hashes[-1]
            if not keep.all():
                self.truncated = True
                values = values[keep]
                if not len(values):
                    return
        uniq, counts = np.unique(values, return_counts=True)
        self._merge(uniq, counts)

    def merge(self, other: "DistinctSample") -> "DistinctSample":
        """Merge ``other`` into self (associative, commutative); returns self."""
        self.truncated |= other.truncated
        if len(other.values):
            self._merge(other.values, other.counts)
        return self

    def _merge(self, values: np.ndarray, counts: np.ndarray) -> None:
        all_v = np.concatenate([self.values, values])
        uniq, inverse = np.unique(all_v, return_inverse=True)
        total = np.zeros(len(uniq), np.int64)
        np.add.at(total, inverse, np.concatenate([self.counts, counts]))
        hashes = value_hash(uniq)
        if len(uniq) > self.k:
            order = _smallest_hashes(uniq, self.k, hashes)
            self.truncated = True
        else:
            order = np.arange(len(uniq))
        order = order[np.argsort(hashes[order])]
        self.values, self.counts, self.hashes = uniq[order], total[order], hashes[order]

    def copy(self) -> "DistinctSample":
        return DistinctSample(self.k, self.values.copy(), self.counts.copy(), self.truncated)


class SampleGrid:
    """One bottom-k ``DistinctSample`` per cell of an array of cells (C order), updated for all
    cells at once.

    Stored flat, cell after cell, each cell's values sorted by hash (``values``, ``counts``,
    ``hashes``, ``offsets [C+1]``, ``truncated [C]``). A batch costs a hash and a comparison per
    entry: only entries whose hash does not exceed their cell's current ``k``-th smallest hash can
    enter its sample; those are buffered and merged in bulk (sorted by cell and hash, equal values
    summed, the first ``k`` per cell kept) once the buffer is about the size of the samples. A
    threshold is never below the final one, so every entry of a value that ends up kept is
    counted, and the result is the same as adding the cells' values one by one.
    """

    CONSOLIDATE_MIN = 1 << 16  # buffered entries before a bulk merge (at least; see _buffer)

    def __init__(self, shape: tuple[int, ...], k: int, values=None, counts=None, lengths=None, truncated=None):
        self.shape = tuple(shape)
        self.k = int(k)
        self.cells = int(np.prod(self.shape, dtype=np.int64))
        self.values = np.zeros(0) if values is None else np.asarray(values, np.float64)
        self.counts = np.zeros(0, np.int64) if counts is None else np.asarray(counts, np.int64)
        lengths = np.zeros(self.cells, np.int64) if lengths is None else np.asarray(lengths, np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.truncated = np.zeros(self.cells, bool) if truncated is None else np.asarray(truncated, bool).copy()
        self.hashes = value_hash(self.values)
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_n = 0
        self._set_thresholds()

    def _set_thresholds(self) -> None:
        lengths = np.diff(self.offsets)
        full = lengths >= self.k
        self._threshold = np.full(self.cells, _UINT64_MAX, np.uint64)
        if self.k > 0 and full.any():
            self._threshold[full] = self.hashes[self.offsets[:-1][full] + self.k - 1]

    def update(self, batch: np.ndarray) -> None:
        """Add ``batch [N, *shape]`` (NaN = no value in that cell)."""
        if batch.shape[0] == 0:
            return
        flat = batch.reshape(batch.shape[0], -1) + 0.0  # -0.0 is 0.0
        valid = ~np.isnan(flat)
        hashes = value_hash(flat)
        keep = valid & (hashes <= self._threshold)
        for c in np.flatnonzero((self._threshold == _UINT64_MAX) & (keep.sum(axis=0) > 4 * self.k)):
            keep[:, c] &= hashes[:, c] <= self._filling_bound(hashes[:, c][keep[:, c]])
        # A valid entry left out has a hash above k distinct values' of its cell: not in its sample.
        kept = np.count_nonzero(keep, axis=0)
        self.truncated |= kept < np.count_nonzero(valid, axis=0)
        for c in self._few_distinct(kept):
            self._buffer_distinct(c, flat[:, c][keep[:, c]])
            keep[:, c] = False
        rows, cols = np.nonzero(keep)
        if len(rows):
            self._buffer(cols.astype(np.int64), hashes[rows, cols], flat[rows, cols], np.ones(len(rows), np.int64))

    DISTINCT_MIN = 1 << 12  # a cell's candidates in one batch from which ``_few_distinct`` applies

    def _few_distinct(self, kept: np.ndarray) -> np.ndarray:
        """The cells still below ``k`` distinct values (no threshold) with many candidates in this
        batch: every entry of such a cell is a candidate (a gripper's two levels, a quantized
        state), so its candidates are buffered as distinct values with counts (the same sample:
        counts of equal values add up in ``_consolidate`` either way)."""
        return np.flatnonzero((self._threshold == _UINT64_MAX) & (kept >= self.DISTINCT_MIN))

    def _buffer_distinct(self, cell: int, values: np.ndarray) -> None:
        uniq, counts = np.unique(values, return_counts=True)
        self._buffer(np.full(len(uniq), cell, np.int64), value_hash(uniq), uniq, counts.astype(np.int64))

    def update_cells(self, first: int, rows: np.ndarray) -> None:
        """Add ``rows [R, n]`` (no NaN): row ``r`` holds entries of cell ``first + r``. The same
        samples as ``update`` with those entries, for data laid out cell by cell."""
        if rows.shape[1] == 0:
            return
        rows = rows + 0.0  # -0.0 is 0.0
        hashes = value_hash(rows)
        keep = hashes <= self._threshold[first:first + len(rows), None]
        kept = np.count_nonzero(keep, axis=1)
        for r in np.flatnonzero((self._threshold[first:first + len(rows)] == _UINT64_MAX) & (kept > 4 * self.k)):
            keep[r] &= hashes[r] <= self._filling_bound(hashes[r][keep[r]])
            kept[r] = np.count_nonzero(keep[r])
        self.truncated[first:first + len(rows)] |= kept < rows.shape[1]
        for c in self._few_distinct(np.pad(kept, (first, self.cells - first - len(rows)))):
            self._buffer_distinct(c, rows[c - first][keep[c - first]])
            keep[c - first] = False
        at = np.flatnonzero(keep)  # one pass over the flat mask (np.nonzero of 2-D costs twice)
        if len(at):
            self._buffer(at // rows.shape[1] + first, hashes.reshape(-1)[at], rows.reshape(-1)[at],
                         np.ones(len(at), np.int64))

    def _filling_bound(self, hashes: np.ndarray) -> np.uint64:
        """For a cell still filling with many candidate ``hashes`` in one batch: their k-th smallest
        hash is a threshold too, once k distinct values lie at or below it (saves buffering them
        all); else no bound."""
        bound = np.partition(hashes, self.k - 1)[self.k - 1]
        return bound if len(np.unique(hashes[hashes <= bound])) >= self.k else _UINT64_MAX

    def _buffer(self, cells, hashes, values, counts) -> None:
        self._pending.append((cells, hashes, values, counts))
        self._pending_n += len(cells)
        if self._pending_n >= max(2 * len(self.values), self.cells * min(self.k, 64), self.CONSOLIDATE_MIN):
            self._consolidate()

    def _consolidate(self) -> None:
        if not self._pending:
            return
        lengths = np.diff(self.offsets)
        parts = [(np.repeat(np.arange(self.cells), lengths), self.hashes, self.values, self.counts)] + self._pending
        self._pending, self._pending_n = [], 0
        cells, hashes, values, counts = (np.concatenate([p[i] for p in parts]) for i in range(4))
        # By cell, then hash: a stable sort by cell (radix for small ints) of the hash order.
        order = np.argsort(hashes)
        cell_dtype = np.uint16 if self.cells <= 1 << 16 else np.int64
        order = order[np.argsort(cells[order].astype(cell_dtype), kind="stable")]
        cells, hashes, values, counts = cells[order], hashes[order], values[order], counts[order]
        # splitmix64 is a bijection of the bit patterns: equal (cell, hash) is equal (cell, value).
        first = np.ones(len(cells), bool)
        first[1:] = (cells[1:] != cells[:-1]) | (hashes[1:] != hashes[:-1])
        starts = np.flatnonzero(first)
        counts = np.add.reduceat(counts, starts) if len(starts) else counts[:0]
        cells, hashes, values = cells[starts], hashes[starts], values[starts]
        distinct = np.bincount(cells, minlength=self.cells)
        self.truncated |= distinct > self.k
        rank = np.arange(len(cells)) - (np.cumsum(distinct) - distinct)[cells]
        kept = rank < self.k
        self.values, self.counts, self.hashes = values[kept], counts[kept], hashes[kept]
        self.offsets = np.concatenate([[0], np.cumsum(np.minimum(distinct, self.k))]).astype(np.int64)
        self._set_thresholds()

    def merge(self, other: "SampleGrid") -> None:
        other._consolidate()
        lengths = np.diff(other.offsets)
        self.truncated |= other.truncated
        if len(other.values):
            self._buffer(np.repeat(np.arange(other.cells), lengths), other.hashes, other.values, other.counts)
        self._consolidate()

    def cell(self, c: int) -> DistinctSample:
        """Cell ``c``'s sample."""
        self._consolidate()
        lo, hi = self.offsets[c], self.offsets[c + 1]
        return DistinctSample(self.k, self.values[lo:hi], self.counts[lo:hi], bool(self.truncated[c]),
                              self.hashes[lo:hi])

    @property
    def samples(self) -> list[DistinctSample]:
        """Every cell's sample, in C order."""
        return [self.cell(c) for c in range(self.cells)]

    def copy(self) -> "SampleGrid":
        self._consolidate()
        return SampleGrid(self.shape, self.k, self.values.copy(), self.counts.copy(), np.diff(self.offsets), self.truncated)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        self._consolidate()
        return {f"{prefix}.sample.lengths": np.diff(self.offsets), f"{prefix}.sample.data": self.values.copy(),
                f"{prefix}.sample.counts": self.counts.copy(), f"{prefix}.sample.truncated": self.truncated.copy()}

    @classmethod
    def from_arrays(cls, shape, k: int, z, prefix: str) -> "SampleGrid":
        # lengths are the values' and the counts' (ragged: one count per value)
        return cls(shape, k, z[f"{prefix}.sample.data"], z[f"{prefix}.sample.counts"],
                   z[f"{prefix}.sample.lengths"], z[f"{prefix}.sample.truncated"])


# -- exact selection ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """One cell of one dataset's accumulator group; ``ref`` identifies the dataset's data."""

    ref: int
    group: str
    cell: int


@dataclass
class Target:
    """One output cell: the multiset union of its member cells (with multiplicities).

    ``weights`` is None for plain order statistics over all entries, else the mixture weight per
    dataset ref (datasets without entries in this cell are left out and the rest renormalized).
    """

    members: list[tuple[Source, int]]
    weights: dict[int, float] | None = None
    result: np.ndarray | None = field(default=None, repr=False)


class DataRef:
    """A dataset's accumulator and a way to read its numeric data again (``data()`` -> episodes)."""

    def __init__(self, acc, data: Callable[[], Iterable] | Sequence | None):
        self.acc = acc
        self.data = data

    def episodes(self) -> Iterable:
        if self.data is None:
            raise ValueError(
                f"{self.acc.name}: exact quantiles need a pass over the data (more than "
                f"{self.acc.spec.sketch_k} distinct values in a cell); give finalize(data=...)")
        return self.data() if callable(self.data) else self.data


class _Plan:
    """Per target and quantile: the sorted merged sample, thresholds, and the current state."""

    def __init__(self, target: Target, qs: Sequence[float], refs: dict[int, DataRef]):
        self.target, self.qs = target, list(qs)
        # per dataset ref: number of entries (with multiplicity)
        self.ref_ids = sorted({s.ref for s, _ in target.members})
        self.n = np.zeros(len(self.ref_ids), np.int64)
        self.col = {r: i for i, r in enumerate(self.ref_ids)}
        samples: list[tuple[int, DistinctSample, int]] = []
        self.complete = True
        for src, mult in target.members:
            group = refs[src.ref].acc.groups[src.group]
            self.n[self.col[src.ref]] += mult * int(group.moments.n.reshape(-1)[src.cell])
            sample = group.samples.cell(src.cell)
            samples.append((self.col[src.ref], sample, mult))
            self.complete &= not sample.truncated
        if target.weights is None:
            self.p = None
        else:
            self.w = [float(target.weights[r]) if self.n[i] > 0 else 0.0 for i, r in enumerate(self.ref_ids)]
            total = sum(self.w)
            self.p = np.asarray(self.w) / total if total > 0 else np.asarray(self.w)  # for estimates only
        # The target's own sample: all members' values when every member sample is complete (the
        # whole histogram), else the k distinct values of smallest hash of the union, which is a
        # uniform sample of the union's distinct values and, like any bottom-k value, carries its
        # exact count from every member that holds it.
        vals = np.concatenate([s.values for _, s, _ in samples] + [np.zeros(0)])
        counts = np.concatenate([s.counts * mult for _, s, mult in samples] + [np.zeros(0, np.int64)])
        cols = np.concatenate([np.full(len(s.values), c, np.int64) for c, s, _ in samples] + [np.zeros(0, np.int64)])
        if not self.complete:
            # only the entries of the union's k distinct values of smallest hash matter (every
            # member entry of such a value: equal values have equal hashes); the unique and
            # counts below then run over ~k entries, not over every member's sample
            k = max(s.k for _, s, _ in samples)
            take = _bottom_distinct(np.concatenate([s.hashes for _, s, _ in samples]), k)
            if take is not None:
                vals, counts, cols = vals[take], counts[take], cols[take]
        edges, inverse = np.unique(vals, return_inverse=True)
        n_cols = len(self.ref_ids)
        # counts stay far below 2**53, so float64 bincount weights add them exactly
        flat = np.bincount(inverse * n_cols + cols, weights=counts, minlength=len(edges) * n_cols)
        sample_counts = np.rint(flat).astype(np.int64).reshape(len(edges), n_cols)
        if not self.complete:
            k = max(s.k for _, s, _ in samples)
            if len(edges) > k:
                keep = np.sort(_smallest_hashes(edges, k))
                edges, sample_counts = edges[keep], sample_counts[keep]
        self.edges, self.sample_counts = edges, sample_counts
        self.answer = np.full(len(self.qs), np.nan)
        self.state = ["todo" if self.n.sum() > 0 else "done"] * len(self.qs)
        self.window: list[tuple[int, int]] = [(0, 0)] * len(self.qs)
        self.interval: list[tuple[float, float, np.ndarray] | None] = [None] * len(self.qs)

    def first_reached(self, counts: np.ndarray, qi: int) -> int | None:
        """For cumulative count rows ``[E, n_refs]`` (entries <= x per dataset, rising): the first
        row whose x reaches quantile ``qi``, or None.

        Mixture rows are compared in exact rational arithmetic (on the float weights and q as
        they are), so a CDF that equals q exactly is never lost to rounding; F rises with the
        rows, so a binary search needs only ~log2(E) exact evaluations.
        """
        if not len(counts):
            return None
        q = self.qs[qi]
        if self.p is None:
            hit = np.flatnonzero(counts.sum(axis=1) >= count_threshold(int(self.n.sum()), q))
            return int(hit[0]) if len(hit) else None
        weights = [(Fraction(w), int(n)) for w, n in zip(self.w, self.n)]
        goal = Fraction(q) * sum(w for w, n in weights if n > 0)

        def reached(row) -> bool:
            return sum(w * Fraction(int(c), n) for (w, n), c in zip(weights, row) if n > 0) >= goal

        lo, hi = 0, len(counts)
        while lo < hi:
            mid = (lo + hi) // 2
            if reached(counts[mid]):
                hi = mid
            else:
                lo = mid + 1
        return lo if lo < len(counts) else None

    def solve_complete(self) -> None:
        """Every member's sample is its whole histogram: read the answers from it."""
        cum = np.cumsum(self.sample_counts, axis=0)
        for qi in range(len(self.qs)):
            if self.state[qi] == "done":
                continue
            self.answer[qi] = self.edges[self.first_reached(cum, qi)]
            self.state[qi] = "done"

    def open_windows(self, full: bool) -> None:
        """Choose each open target's window of candidate edges around its estimated position."""
        m = len(self.edges)
        # Estimated CDF from the sample: each kept value stands for (entries / kept entries) of its dataset.
        kept = self.sample_counts.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = np.where(kept > 0, self.n / np.maximum(kept, 1), 0.0)
        weight = self.sample_counts * scale
        if self.p is not None:
            weight = np.where(self.n > 0, weight / np.maximum(self.n, 1), 0.0) * self.p
        cdf = np.cumsum(weight.sum(axis=1))
        total = cdf[-1] if m else 0.0
        for qi, q in enumerate(self.qs):
            if self.state[qi] != "todo":
                continue
            if full or m == 0 or total <= 0:
                self.window[qi] = (0, m)
                continue
            center = int(np.searchsorted(cdf, q * total))
            width = int(math.ceil(6 * math.sqrt(m * q * (1 - q)))) + 8
            self.window[qi] = (max(0, center - width), min(m, center + width + 1))

    def window_edges(self, qi: int) -> np.ndarray:
        lo, hi = self.window[qi]
        return self.edges[lo:hi]

    def decide(self, qi: int, lt: np.ndarray, le: np.ndarray, full: bool) -> None:
        """With exact counts (``[E, n_refs]``) below and at the window's edges, fix the answer or
        the open interval that holds it; a window that missed stays "todo" (to be widened)."""
        lo, hi = self.window[qi]
        m = len(self.edges)
        edges = self.edges[lo:hi]
        i = self.first_reached(le, qi)
        if i is None:
            if hi < m and not full:
                return  # the target lies above the window
            base = le[-1] if len(edges) else np.zeros(len(self.ref_ids), np.int64)
            self.interval[qi] = (edges[-1] if len(edges) else -np.inf, np.inf, base)
            self.state[qi] = "collect"
            return
        if self.first_reached(lt[i : i + 1], qi) is None:
            self.answer[qi] = edges[i]  # the edge value itself reaches the rank
            self.state[qi] = "done"
            return
        if i == 0:
            if lo > 0 and not full:
                return  # the target lies below the window
            self.interval[qi] = (-np.inf, edges[0], np.zeros(len(self.ref_ids), np.int64))
        else:
            self.interval[qi] = (edges[i - 1], edges[i], le[i - 1])
        self.state[qi] = "collect"

    def select(self, qi: int, collected: list[tuple[int, np.ndarray, int]]) -> None:
        """The exact order statistic from the counts below the interval and its collected entries
        (``(dataset column, entries, multiplicity)`` per member cell)."""
        _, _, base = self.interval[qi]
        values = np.concatenate([v for _, v, _ in collected] + [np.zeros(0)])
        cols = np.concatenate([np.full(len(v), c, np.int64) for c, v, _ in collected] + [np.zeros(0, np.int64)])
        mults = np.concatenate([np.full(len(v), m, np.int64) for _, v, m in collected] + [np.zeros(0, np.int64)])
        uniq, inverse = np.unique(values, return_inverse=True)
        counts = np.zeros((len(uniq), len(self.ref_ids)), np.int64)
        np.add.at(counts, (inverse, cols), mults)
        cum = np.cumsum(counts, axis=0) + base
        i = self.first_reached(cum, qi)
        if i is None:
            raise RuntimeError(f"exact quantile selection found no entry for q={self.qs[qi]} (counts disagree)")
        self.answer[qi] = uniq[i]
        self.state[qi] = "done"


def resolve(targets: Sequence[Target], qs: Sequence[float], refs: dict[int, DataRef]) -> None:
    """Fill ``target.result`` (shape ``[len(qs)]``) with the exact quantiles of every target.

    Targets with the same members and weights (e.g. a one-dataset mixture's combined cells and
    the dataset's own) are planned and resolved once."""
    same: dict[tuple, list[Target]] = {}
    for t in targets:
        key = (tuple((s.ref, s.group, s.cell, m) for s, m in t.members),
               None if t.weights is None else tuple(sorted(t.weights.items())))
        same.setdefault(key, []).append(t)
    plans = [_Plan(ts[0], qs, refs) for ts in same.values()]
    for plan in plans:
        if plan.complete:
            plan.solve_complete()
    # per source cell: entries the count passes kept, (bounds, values) as ``_count_pass`` returns them
    kept: dict[Source, list[tuple[np.ndarray, np.ndarray]]] = {}
    for full in (False, True):
        open_plans = [p for p in plans if "todo" in p.state]
        if not open_plans:
            break
        for plan in open_plans:
            plan.open_windows(full)
        # Per source cell: the union of the edges of every open target it belongs to, and the
        # value range of each window (most entries lie outside all of them).
        wanted: dict[Source, list[np.ndarray]] = {}
        ranges: dict[Source, list[tuple[float, float]]] = {}
        for plan in open_plans:
            windows = [plan.window_edges(qi) for qi, st in enumerate(plan.state) if st == "todo"]
            edges = np.unique(np.concatenate(windows + [np.zeros(0)]))
            spans = [(float(w[0]), float(w[-1])) for w in windows if len(w)]
            for src, _ in plan.target.members:
                wanted.setdefault(src, []).append(edges)
                ranges.setdefault(src, []).extend(spans)
        source_edges = {src: np.unique(np.concatenate(e)) for src, e in wanted.items()}
        lt, le, *more = _passes().count(source_edges, refs, ranges)
        for src, runs in (more[0] if more else {}).items():
            kept.setdefault(src, []).append(runs)
        for plan in open_plans:
            for qi, st in enumerate(plan.state):
                if st != "todo":
                    continue
                edges = plan.window_edges(qi)
                c_lt = np.zeros((len(edges), len(plan.ref_ids)), np.int64)
                c_le = np.zeros_like(c_lt)
                for src, mult in plan.target.members:
                    at = np.searchsorted(source_edges[src], edges)
                    c_lt[:, plan.col[src.ref]] += mult * lt[src][at]
                    c_le[:, plan.col[src.ref]] += mult * le[src][at]
                plan.decide(qi, c_lt, c_le, full)
    intervals: dict[Source, set[tuple[float, float]]] = {}
    for plan in plans:
        for qi, st in enumerate(plan.state):
            if st == "collect":
                lo, hi, _ = plan.interval[qi]
                for src, _ in plan.target.members:
                    intervals.setdefault(src, set()).add((lo, hi))
    if intervals:
        collected, rest = _from_kept(intervals, kept)
        if rest:
            for src, got in _passes().collect({s: sorted(v) for s, v in rest.items()}, refs).items():
                collected.setdefault(src, {}).update(got)
        for plan in plans:
            for qi, st in enumerate(plan.state):
                if st == "collect":
                    lo, hi, _ = plan.interval[qi]
                    plan.select(qi, [(plan.col[src.ref], collected[src][(lo, hi)], mult)
                                     for src, mult in plan.target.members])
    for plan, ts in zip(plans, same.values()):
        for t in ts:
            t.result = plan.answer.copy()


def _from_kept(intervals: dict[Source, set[tuple[float, float]]], kept):
    """The open intervals that lie inside a run whose entries a count pass kept, answered from
    them: ``(collected, rest)``, ``rest`` the intervals that still need a collect pass."""
    collected: dict[Source, dict] = {}
    rest: dict[Source, set] = {}
    for src, ivs in intervals.items():
        for lo, hi in ivs:
            for bounds, values in kept.get(src, ()):
                # run g holds every entry v with first_g <= v <= last_g (bounds[2g] = prev(first_g))
                g = int(np.searchsorted(bounds[1::2], hi))  # the first run whose last is >= hi
                if g < len(bounds) // 2 and bounds[2 * g] < lo and np.isfinite(lo) and np.isfinite(hi):
                    collected.setdefault(src, {})[(lo, hi)] = values[(values > lo) & (values < hi)]
                    break
            else:
                rest.setdefault(src, set()).add((lo, hi))
    return collected, rest


class LocalPasses:
    """The passes over the data, in this process: each ``DataRef``'s episodes read again."""

    @staticmethod
    def count(source_edges: dict[Source, np.ndarray], refs: dict[int, DataRef],
              ranges: dict[Source, list[tuple[float, float]]] | None = None):
        """Per source cell and edge: exact counts of entries ``< edge`` and ``<= edge``, and the
        entries it kept (``_count_pass``; a runner may return the counts alone).

        ``ranges`` (optional, per source cell): value ranges that hold its edges in runs; only
        entries inside one are located among the edges, the rest only counted (same result)."""
        return _count_pass(source_edges, refs, ranges)

    @staticmethod
    def collect(intervals: dict[Source, list[tuple[float, float]]], refs: dict[int, DataRef]):
        """Per source cell and open interval: the entries strictly inside it."""
        return _collect_pass(intervals, refs)


_PASSES: contextvars.ContextVar = contextvars.ContextVar("stepnorm_data_passes", default=None)


@contextlib.contextmanager
def data_passes(runner):
    """Run the exact-quantile passes of ``resolve`` through ``runner`` (an object with ``count``
    and ``collect`` as ``LocalPasses`` has) instead of reading each DataRef's episodes here:
    stepnorm.beam runs them as Beam stages."""
    token = _PASSES.set(runner)
    try:
        yield runner
    finally:
        _PASSES.reset(token)


def _passes():
    return _PASSES.get() or LocalPasses


def _scan(refs: dict[int, DataRef], sources: Iterable[Source], fn) -> None:
    """Call ``fn(source, values)`` with every valid entry of every wanted source cell, batched
    (each batch's wanted cells transposed once, so a cell's values are contiguous; DELTA's built
    per position, ``chunks.delta_by_lag``). ``-0.0`` may come as itself: ``fn`` compares
    values, and whatever it keeps must be normalized (``+ 0.0``)."""
    by_ref: dict[int, dict[str, list[Source]]] = {}
    for src in sources:
        by_ref.setdefault(src.ref, {}).setdefault(src.group, []).append(src)
    for ref_id in sorted(by_ref):
        ref, groups = refs[ref_id], by_ref[ref_id]
        if ref.data is not None and not callable(ref.data):
            _scan_held(ref, groups, fn)
            continue
        # streamed (the values are not held): whole episodes gathered into batches of about
        # SCAN_BATCH_STEPS steps, each scanned column-wise as held values are
        batch, steps = [], 0
        for episode in ref.episodes():
            batch.append(episode)
            steps += len(episode[0] if isinstance(episode, tuple) else episode.action)
            if steps >= SCAN_BATCH_STEPS:
                _scan_held(DataRef(ref.acc, batch), groups, fn)
                batch, steps = [], 0
        if batch:
            _scan_held(DataRef(ref.acc, batch), groups, fn)


def _scan_held(ref: DataRef, groups: dict[str, list[Source]], fn) -> None:
    """``_scan`` of a dataset whose episodes are held in memory (``ref.data`` a sequence): each
    wanted cell's entries in one array, a column of all episodes at a time. The same entries as
    ``group_batches`` gives (in another order: what ``fn`` computes does not depend on it)."""
    acc = ref.acc
    horizon = acc.spec.horizon
    plain, delta = chunks.split_dims(acc.action_dim, acc.spec.delta_mask)
    episodes = []
    for episode in ref.data:
        action, state = episode if isinstance(episode, tuple) else (episode.action, episode.state)
        if len(action):
            action = np.asarray(action, np.float64).reshape(len(action), -1)
            state = None if acc.state_dim is None else np.asarray(state, np.float64).reshape(len(action), -1)
            episodes.append((action, state))
    lengths = np.asarray([len(a) for a, _ in episodes], np.int64)
    index = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # in its episode

    def column(part: int, dim: int) -> np.ndarray:
        return np.concatenate([episode[part][:, dim] for episode in episodes] + [np.zeros(0)])

    by_dim: dict[int, list[Source]] = {}  # plain dims: TAIL cell i, HEAD cell j * len(plain) + i
    for group in (chunks.TAIL, chunks.HEAD):
        for src in groups.get(group, ()):
            by_dim.setdefault(src.cell % len(plain), []).append(src)
    for i, wanted in sorted(by_dim.items()):
        values = column(0, plain[i])
        for src in wanted:
            fn(src, values[index >= horizon - 1] if src.group == chunks.TAIL else values[index == src.cell // len(plain)])
    for src in groups.get(chunks.STATE, ()):
        fn(src, column(1, src.cell))
    for src in groups.get(chunks.RAW, ()):
        fn(src, column(0, delta[src.cell]))
    if chunks.DELTA in groups:
        by_lag: dict[int, list[Source]] = {}
        for src in groups[chunks.DELTA]:
            by_lag.setdefault(src.cell // len(delta), []).append(src)
        for k, rows in chunks.delta_by_lag([(a[:, delta], s[:, delta]) for a, s in episodes], horizon, sorted(by_lag)):
            for src in by_lag[k]:
                fn(src, rows[src.cell % len(delta)])


def _count_pass(source_edges: dict[Source, np.ndarray], refs, ranges=None, budget: int | None = None):
    """Per source cell and edge: exact counts of entries < edge and <= edge (``ranges``: see
    ``LocalPasses.count``), and ``kept``: per source cell with ranges, ``(bounds, values)``, the
    entries inside its runs (bounds as ``_edge_runs`` gives them), the values a collect pass in
    those runs would read; empty when they would exceed ``budget`` values (default
    ``KEEP_VALUES``) in all."""
    lt_hist = {s: np.zeros(len(e) + 1, np.int64) for s, e in source_edges.items()}
    le_hist = {s: np.zeros(len(e) + 1, np.int64) for s, e in source_edges.items()}
    coarse = {s: _edge_runs(e, (ranges or {}).get(s, ())) for s, e in source_edges.items()}
    keep: dict[Source, list[np.ndarray]] | None = {s: [] for s, c in coarse.items() if c is not None}
    room = KEEP_VALUES if budget is None else budget

    def locate(src, values):
        edges = source_edges[src]
        # at = #edges < v, so v <= e_i iff at <= i; v < e_i iff at + (v == e_at) <= i (edges distinct)
        at = np.searchsorted(edges, values)
        equal = edges[np.minimum(at, len(edges) - 1)] == values
        le_hist[src] += np.bincount(at, minlength=len(edges) + 1)
        lt_hist[src] += np.bincount(at + equal, minlength=len(edges) + 1)

    def count(src, values):
        if not len(source_edges[src]):
            return
        if coarse[src] is None:
            return locate(src, values)
        bounds, before = coarse[src]
        # #entries <= each bound (a few comparisons per entry beat a search); entries in a gap,
        # strictly between two runs' values, equal no edge and have the next run's first index
        # as #edges < v
        at_most = np.asarray([np.count_nonzero(values <= b) for b in bounds] + [len(values)])
        gaps = at_most[0::2] - np.concatenate([[0], at_most[1:-1:2]])
        le_hist[src][before] += gaps
        lt_hist[src][before] += gaps
        inside = (values > bounds[0]) & (values <= bounds[1])
        for g in range(2, len(bounds), 2):
            inside |= (values > bounds[g]) & (values <= bounds[g + 1])
        values = values[inside]
        locate(src, values)
        nonlocal keep, room
        if keep is not None:
            room -= len(values)
            if room < 0:
                keep = None  # over the budget: the collect pass reads them again
            else:
                keep[src].append(values + 0.0)  # -0.0 is 0.0

    _scan(refs, source_edges, count)
    lt = {s: np.cumsum(h)[:-1] for s, h in lt_hist.items()}
    le = {s: np.cumsum(h)[:-1] for s, h in le_hist.items()}
    kept = {s: (coarse[s][0], np.concatenate(parts + [np.zeros(0)])) for s, parts in (keep or {}).items()}
    return lt, le, kept


def _edge_runs(edges: np.ndarray, ranges) -> tuple[np.ndarray, np.ndarray] | None:
    """Sorted ``edges`` cut into runs by the value ``ranges`` that hold them: ``(bounds, before)``
    with ``bounds = [prev(first_0), last_0, prev(first_1), last_1, ...]`` (``prev`` the next float
    down, so ``#bounds < v`` is odd exactly inside a run) and ``before[g]`` the number of edges
    below gap ``g`` (the gap before run ``g``; the last, above every run, has all of them). Runs
    overlapping in index are joined; edges outside every range get a run each. None when there
    are no ranges."""
    if not len(ranges) or not len(edges):
        return None
    spans = sorted((int(np.searchsorted(edges, lo, "left")), int(np.searchsorted(edges, hi, "right")))
                   for lo, hi in ranges)
    runs: list[list[int]] = []
    covered = 0
    for i0, i1 in spans:
        if i1 <= i0:
            continue
        for e in range(covered, i0):  # edges no range holds
            runs.append([e, e + 1])
        if runs and i0 < runs[-1][1]:
            runs[-1][1] = max(runs[-1][1], i1)
        else:
            runs.append([i0, i1])
        covered = max(covered, runs[-1][1])
    runs += [[e, e + 1] for e in range(covered, len(edges))]
    first = edges[[r[0] for r in runs]]
    last = edges[[r[1] - 1 for r in runs]]
    bounds = np.column_stack([np.nextafter(first, -np.inf), last]).reshape(-1)
    before = np.asarray([r[0] for r in runs] + [len(edges)], np.int64)
    return bounds, before


def _segments(intervals: Sequence[tuple[float, float]]) -> list[tuple[float, float, list[tuple[float, float]]]]:
    """Sorted open intervals joined where they overlap: ``(lo, hi, members)`` per segment."""
    out: list[tuple[float, float, list]] = []
    for lo, hi in sorted(intervals):
        if out and lo < out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi), out[-1][2] + [(lo, hi)])
        else:
            out.append((lo, hi, [(lo, hi)]))
    return out


def _collect_pass(intervals: dict[Source, list[tuple[float, float]]], refs):
    """Per source cell and open interval ``(lo, hi)``: the entries strictly inside it."""
    out = {s: {iv: [] for iv in ivs} for s, ivs in intervals.items()}
    segments = {s: _segments(ivs) for s, ivs in intervals.items()}

    def collect(src, values):
        for lo, hi, members in segments[src]:
            inside = values[(values > lo) & (values < hi)] + 0.0  # -0.0 is 0.0
            if not len(inside):
                continue
            for a, b in members:
                part = inside if len(members) == 1 else inside[(inside > a) & (inside < b)]
                if len(part):
                    out[src][(a, b)].append(part)

    _scan(refs, intervals, collect)
    return {s: {iv: np.concatenate(parts) if parts else np.zeros(0) for iv, parts in ivs.items()}
            for s, ivs in out.items()}
