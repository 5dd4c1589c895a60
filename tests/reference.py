"""Independent reference implementations for tests: materialize every valid chunk entry with
plain loops, then two-pass float64 moments, exact order statistics (a sort of all valid entries)
and exact empirical quantile ranks."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

RANK_TOL = 0.002


def chunk_at(action, state, t, horizon, delta_mask=None):
    """The chunk at step ``t`` with loops: ``[H, D]`` entries ``a_{t+k}`` (padding repeats the last
    action, as LeRobot and Octo pad), the delta ``- s_t[d]`` applied after the repeat on marked
    dims, and ``[H]`` validity flags (``t + k < T``)."""
    action = np.asarray(action, np.float64)
    t_len, dim = action.shape
    chunk = np.zeros((horizon, dim))
    valid = np.zeros(horizon, bool)
    for k in range(horizon):
        valid[k] = t + k < t_len
        chunk[k] = action[min(t + k, t_len - 1)]
        for d, on in enumerate(delta_mask or []):
            if on:
                chunk[k, d] -= float(state[t][d])
    return chunk, valid


def chunks(episodes, horizon, delta_mask=None):
    """Every step's chunk over ``(action, state)`` episodes: ``[N, H, D]`` and validity ``[N, H]``."""
    out, valid = [], []
    for action, state in episodes:
        for t in range(len(action)):
            chunk, ok = chunk_at(action, state, t, horizon, delta_mask)
            out.append(chunk)
            valid.append(ok)
    dim = np.asarray(episodes[0][0]).shape[1]
    return np.asarray(out, np.float64).reshape(-1, horizon, dim), np.asarray(valid, bool).reshape(-1, horizon)


def chunk_entries(episodes, horizon, delta_mask=None):
    """Per chunk position k, the ``[n_k, D]`` array of valid entries ``A_t[k]``."""
    chunk, valid = chunks(episodes, horizon, delta_mask)
    return [chunk[valid[:, k], k] for k in range(horizon)]


def two_pass(values):
    """``(count, mean, population std, min, max)`` over axis 0, float64 two-pass."""
    values = np.asarray(values, np.float64)
    n = len(values)
    mean = values.sum(axis=0) / n
    std = np.sqrt(((values - mean) ** 2).sum(axis=0) / n)
    return n, mean, std, values.min(axis=0), values.max(axis=0)


def exact_quantile(values, q, weights=None):
    """The documented rule, numpy's ``inverted_cdf``: the ``max(0, ceil(n*q - 1))``-th entry of the
    sorted values (0-based). With ``weights`` (a probability mass per entry, as Fractions or
    floats): the smallest sorted value whose total mass at or below it is >= q, summed exactly."""
    values = np.asarray(values, np.float64)
    if weights is None:
        return float(np.sort(values)[max(0, math.ceil(len(values) * q - 1))])
    order = np.argsort(values, kind="stable")
    mass = [Fraction(w) for w in weights]
    goal = Fraction(q) * sum(mass)
    total = Fraction(0)
    for pos, i in enumerate(order):
        total += mass[i]
        last_of_value = pos + 1 == len(order) or values[order[pos + 1]] != values[i]
        if last_of_value and total >= goal:
            return float(values[i])
    raise AssertionError("weights sum below q")


def rank_error(values, reported, q, weights=None):
    """Distance of ``q`` from the empirical rank interval of ``reported`` among ``values``.

    With ties, a value's rank is an interval [P(X < v), P(X <= v)]; 0 when q lies inside it.
    ``weights`` gives each value a probability mass (mixture weighting).
    """
    values = np.asarray(values, np.float64)
    w = np.ones(len(values)) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    lo = w[values < reported].sum()
    hi = w[values <= reported].sum()
    if lo - 1e-12 <= q <= hi + 1e-12:
        return 0.0
    return float(min(abs(lo - q), abs(hi - q)))


def assert_stats_match(stats, values, quantiles, rtol=1e-9, tol=RANK_TOL, label=""):
    """Check one STATS block (arrays ``[D]``) against the data ``values [n, D]``."""
    n, mean, std, vmin, vmax = two_pass(values)
    assert int(stats["count"]) == n, f"{label}: count {stats['count']} != {n}"
    np.testing.assert_allclose(stats["mean"], mean, rtol=rtol, atol=rtol * std.max(), err_msg=f"{label} mean")
    np.testing.assert_allclose(stats["std"], std, rtol=rtol, atol=1e-300, err_msg=f"{label} std")
    np.testing.assert_array_equal(stats["min"], vmin, err_msg=f"{label} min")
    np.testing.assert_array_equal(stats["max"], vmax, err_msg=f"{label} max")
    worst = 0.0
    for q in quantiles:
        key = f"q{int(round(q * 100)):02d}"
        for d in range(values.shape[1]):
            err = rank_error(values[:, d], stats[key][d], q)
            worst = max(worst, err)
            assert err <= tol, f"{label} {key} dim {d}: rank error {err} > {tol}"
            expected = exact_quantile(values[:, d], q)
            assert stats[key][d] == expected, f"{label} {key} dim {d}: {stats[key][d]!r} != exact {expected!r}"
    return worst
