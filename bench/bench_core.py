"""Benchmark of the statistics core (not a test): one core, 1M steps, H=50, D=7.

Compares, in the same run:
  stepnorm        ChunkStatsAccumulator (per-timestep [H, D] + global + pooled + state, quantiles)
  stepnorm-delta  the same with a delta_mask on 6 dims (every chunk entry is a distinct value)
  octo-global     Octo's method: all actions in RAM, numpy mean/std/min/max/quantile (global only)
  naive-per-t     seed 000's method: stack every chunk [N, H, D], numpy per timestep (mean/std/quantile)
and checks that stepnorm's q01/q99 equal the exact order statistics (numpy ``inverted_cdf``) at
positions 0, H/2 and H-1. stepnorm's time includes its exact-quantile passes over the data.

Usage: python bench/bench_core.py [--steps 1000000] [--horizon 50]
"""

from __future__ import annotations

import argparse
import os
import resource
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from stepnorm.stats import AccumulatorSpec, ChunkStatsAccumulator  # noqa: E402

Q = [0.01, 0.99]


def episodes(steps: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out, total = [], 0
    while total < steps:
        t_len = int(min(rng.integers(60, 140), steps - total))
        a = np.cumsum(rng.standard_t(3, size=(t_len, dim)) * 0.01, axis=0).astype(np.float32)
        s = (a + rng.normal(0, 0.01, size=(t_len, dim))).astype(np.float32)
        out.append((a, s))
        total += t_len
    return out


def run_stepnorm(eps, horizon, delta_mask=None, k=2000):
    acc = ChunkStatsAccumulator(AccumulatorSpec(horizon, delta_mask, k), "bench")
    for a, s in eps:
        acc.add_episode(a, s)
    t0 = time.perf_counter()
    out = acc.finalize(data=eps).to_dict(Q)
    return out, time.perf_counter() - t0


def run_octo(eps):
    actions = np.concatenate([a for a, _ in eps])
    return {"mean": actions.mean(0), "std": actions.std(0), "min": actions.min(0), "max": actions.max(0),
            "q01": np.quantile(actions, 0.01, axis=0), "q99": np.quantile(actions, 0.99, axis=0)}


def run_naive(eps, horizon):
    chunks = []
    for a, _ in eps:
        idx = np.minimum(np.arange(len(a))[:, None] + np.arange(horizon)[None, :], len(a) - 1)
        chunks.append(a[idx])  # padded by repeating the last action, as LeRobot/Octo do
    stacked = np.concatenate(chunks).astype(np.float64)
    out = {f: np.zeros((horizon, stacked.shape[-1])) for f in ("mean", "std", "q01", "q99")}
    for t in range(horizon):
        out["mean"][t] = stacked[:, t].mean(0)
        out["std"][t] = stacked[:, t].std(0)
        out["q01"][t], out["q99"][t] = np.quantile(stacked[:, t], [0.01, 0.99], axis=0)
    return out


def mismatches(eps, horizon, stats):
    """Quantiles (positions 0, H/2, H-1; all dims; q01/q99) that differ from numpy's inverted_cdf."""
    bad = 0
    for k in (0, horizon // 2, horizon - 1):
        values = np.concatenate([a[k:] for a, _ in eps]).astype(np.float64)
        for q in Q:
            ref = np.quantile(values, q, axis=0, method="inverted_cdf")
            bad += int((stats["action"]["per_timestep"][f"q{int(q * 100):02d}"][k] != ref).sum())
    return bad


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--horizon", type=int, default=50)
    args = parser.parse_args()
    h, d = args.horizon, 7
    eps = episodes(args.steps, d)
    steps = sum(len(a) for a, _ in eps)
    print(f"{len(eps)} episodes, {steps} steps, H={h}, D={d}, one core")
    rows = []
    t_sn, (sn, q_sn) = timed(run_stepnorm, eps, h)
    rows.append(("stepnorm (per-timestep+global+pooled+state, exact q01/q99)", t_sn))
    t_delta, (_, q_delta) = timed(run_stepnorm, eps, h, (True,) * 6 + (False,))
    rows.append(("stepnorm, delta_mask on 6 dims", t_delta))
    t_octo, _ = timed(run_octo, eps)
    rows.append(("octo-global (numpy, all in RAM, global only)", t_octo))
    t_naive, _ = timed(run_naive, eps, h)
    rows.append(("naive per-timestep (stack all chunks, numpy)", t_naive))
    print(f"\n{'method':58s} {'seconds':>8s} {'vs stepnorm':>12s}")
    for name, t in rows:
        print(f"{name:58s} {t:8.2f} {t / t_sn:11.2f}x")
    print(f"\nexact-quantile passes: {q_sn:.2f} s (no delta), {q_delta:.2f} s (delta); "
          f"delta / no-delta: {t_delta / t_sn:.2f}x (target <= 3)")
    print(f"q01/q99 differing from numpy inverted_cdf (positions 0, H/2, H-1; all dims): {mismatches(eps, h, sn)}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
