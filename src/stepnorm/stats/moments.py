"""Exact, mergeable moments: count, mean, M2 (sum of squared deviations), min and max.

Every cell of an array of statistics (e.g. ``[H, D]``) carries its own moments. Batches are
reduced with a two-pass float64 computation and merged with Chan et al.'s pairwise update, so
the result matches a two-pass float64 computation over all data to ~1e-15 relative, also for
dims whose |mean|/std is 1e6.
"""

from __future__ import annotations

import numpy as np


class Moments:
    """Moments of an array of cells.

    Attributes (all of shape ``shape``):
        n: int64 number of values seen per cell.
        mean: float64 mean per cell (0 where n == 0).
        m2: float64 sum of squared deviations from the mean per cell.
        min, max: float64 exact extremes (+inf / -inf where n == 0).
    """

    __slots__ = ("n", "mean", "m2", "min", "max")

    def __init__(self, n, mean, m2, vmin, vmax):
        self.n = n
        self.mean = mean
        self.m2 = m2
        self.min = vmin
        self.max = vmax

    @classmethod
    def empty(cls, shape: tuple[int, ...]) -> "Moments":
        """Moments of no data."""
        return cls(
            np.zeros(shape, np.int64),
            np.zeros(shape, np.float64),
            np.zeros(shape, np.float64),
            np.full(shape, np.inf),
            np.full(shape, -np.inf),
        )

    @classmethod
    def of_batch(cls, values: np.ndarray) -> "Moments":
        """Two-pass float64 moments over axis 0 of ``values [N, *shape]``; NaN marks a missing value."""
        values = np.asarray(values, dtype=np.float64)
        valid = ~np.isnan(values)
        n = valid.sum(axis=0)
        filled = np.where(valid, values, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(n > 0, filled.sum(axis=0) / np.maximum(n, 1), 0.0)
        dev = np.where(valid, values - mean, 0.0)
        m2 = np.einsum("i...,i...->...", dev, dev) if dev.ndim > 1 else np.dot(dev, dev)
        vmin = np.where(valid, values, np.inf).min(axis=0, initial=np.inf)
        vmax = np.where(valid, values, -np.inf).max(axis=0, initial=-np.inf)
        return cls(n.astype(np.int64), mean, np.asarray(m2, np.float64), vmin, vmax)

    @classmethod
    def of_rows(cls, rows: np.ndarray) -> "Moments":
        """Two-pass float64 moments of each row of ``rows [R, n]`` (every entry a value, no NaN):
        the same statistics as ``of_batch`` of its transpose, for data laid out cell by cell."""
        rows = np.asarray(rows, dtype=np.float64)
        r, n = rows.shape
        if n == 0:
            return cls.empty((r,))
        mean = rows.sum(axis=1) / n
        dev = rows - mean[:, None]
        m2 = np.einsum("ij,ij->i", dev, dev)
        return cls(np.full(r, n, np.int64), mean, m2, rows.min(axis=1), rows.max(axis=1))

    @property
    def shape(self) -> tuple[int, ...]:
        return self.n.shape

    def copy(self) -> "Moments":
        return Moments(self.n.copy(), self.mean.copy(), self.m2.copy(), self.min.copy(), self.max.copy())

    def merge(self, other: "Moments") -> "Moments":
        """Chan's pairwise merge, in place; returns self."""
        n_a, n_b = self.n.astype(np.float64), other.n.astype(np.float64)
        n = n_a + n_b
        safe = np.where(n > 0, n, 1.0)
        delta = other.mean - self.mean
        self.mean = np.where(n > 0, self.mean + delta * (n_b / safe), 0.0)
        self.m2 = self.m2 + other.m2 + delta * delta * (n_a * n_b / safe)
        self.n = self.n + other.n
        self.min = np.minimum(self.min, other.min)
        self.max = np.maximum(self.max, other.max)
        return self

    def add_batch(self, values: np.ndarray) -> "Moments":
        """Merge the two-pass moments of ``values [N, *shape]`` in place; returns self."""
        return self.merge(Moments.of_batch(values))

    def take(self, index) -> "Moments":
        """Moments of a sub-array of cells (numpy indexing on the cell axes)."""
        return Moments(self.n[index], self.mean[index], self.m2[index], self.min[index], self.max[index])

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (NaN where n == 0)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.n > 0, np.sqrt(np.maximum(self.m2, 0.0) / self.n), np.nan)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"n": self.n, "mean": self.mean, "m2": self.m2, "min": self.min, "max": self.max}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "Moments":
        return cls(
            np.asarray(arrays["n"], np.int64),
            np.asarray(arrays["mean"], np.float64),
            np.asarray(arrays["m2"], np.float64),
            np.asarray(arrays["min"], np.float64),
            np.asarray(arrays["max"], np.float64),
        )


def mixture_moments(parts: list[tuple[Moments, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population variance of a weighted mixture of distributions.

    Each part's distribution gets probability proportional to its weight, renormalized per cell
    over the parts that have data in that cell. Returns ``(mean, var)``; NaN where no part has data.
    """
    shape = parts[0][0].shape
    wsum = np.zeros(shape)
    for moments, weight in parts:
        wsum += np.where(moments.n > 0, weight, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.zeros(shape)
        for moments, weight in parts:
            p = np.where(moments.n > 0, weight / np.where(wsum > 0, wsum, 1.0), 0.0)
            mean += p * moments.mean
        var = np.zeros(shape)
        for moments, weight in parts:
            p = np.where(moments.n > 0, weight / np.where(wsum > 0, wsum, 1.0), 0.0)
            within = np.where(moments.n > 0, moments.m2 / np.maximum(moments.n, 1), 0.0)
            var += p * (within + (moments.mean - mean) ** 2)
    empty = wsum <= 0
    return np.where(empty, np.nan, mean), np.where(empty, np.nan, var)
