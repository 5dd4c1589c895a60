"""`make demo`: the statistics core on a generated sim + real mixture.

Generates two datasets of 7-D end-effector-delta + gripper episodes (a continuous-gripper "sim"
set and a quantized-gripper "real" set), accumulates per-timestep statistics with delta actions,
combines them, writes the stats artifact and prints what per-timestep normalization changes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from stepnorm.artifact import read_artifact, write_artifact
from stepnorm.compute import accumulate, artifact_from_accumulators
from stepnorm.config import parse_config
from stepnorm.normalize import Normalizer
from stepnorm.sources.base import Episode


def generated_episodes(name: str, seed: int, n: int, quantized_gripper: bool):
    """Smooth reaching motions: state = end-effector position (+ gripper), action = next target."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        t_len = int(rng.integers(20, 120))
        velocity = rng.normal(0, 0.01, size=(1, 6)) + np.cumsum(rng.normal(0, 0.002, size=(t_len, 6)), axis=0)
        pos = np.cumsum(velocity, axis=0) + rng.uniform(-0.2, 0.2, size=6)
        grip = np.clip(np.sin(np.linspace(0, np.pi * rng.uniform(1, 3), t_len)) + rng.normal(0, 0.1, t_len), -1, 1)
        if quantized_gripper:
            grip = np.where(grip > 0.0, 1.0, -1.0)
        action = np.concatenate([pos, grip[:, None]], axis=1).astype(np.float32)
        state = np.concatenate([pos - velocity, grip[:, None]], axis=1).astype(np.float32)
        yield Episode(name, f"generated:{name}", i, action, state)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    horizon = 16
    cfg = parse_config({
        "horizon": horizon, "weighting": "mixture",
        "delta_mask": [True] * 6 + [False],
        "normalization": {"action": {"mode": "q01_q99", "mask": [True] * 6 + [False]}},
        "datasets": [
            {"name": "sim_reach", "format": "rlds", "path": str(out), "domain": "sim", "weight": 1.0},
            {"name": "real_reach", "format": "rlds", "path": str(out), "domain": "real", "weight": 2.0},
        ]}, where="<demo config>")
    t0 = time.perf_counter()
    accs = {
        "sim_reach": accumulate(cfg, "sim_reach", generated_episodes("sim_reach", 0, 400, quantized_gripper=False)),
        "real_reach": accumulate(cfg, "real_reach", generated_episodes("real_reach", 1, 150, quantized_gripper=True)),
    }
    elapsed = time.perf_counter() - t0
    doc = artifact_from_accumulators(cfg, accs, {n: f"generated-seed-{i}" for i, n in enumerate(accs)})
    stats_path = write_artifact(out / "stats", doc, {n: a.to_bytes() for n, a in accs.items()})
    art = read_artifact(stats_path)
    steps = sum(a.num_steps for a in accs.values())
    print(f"accumulated {steps} steps from {sum(a.num_episodes for a in accs.values())} episodes "
          f"in {elapsed:.2f}s (H={horizon}, D=7, delta on dims 0-5)")
    pt = art.stats("action", "per_timestep")
    pooled = art.stats("action", "pooled")
    print("\ncombined (mixture-weighted) std of delta dim 0 by chunk position vs pooled:")
    print("  k  " + " ".join(f"{k:>7d}" for k in range(0, horizon, 3)) + "   pooled")
    print("  std" + " ".join(f"{pt['std'][k, 0]:7.4f}" for k in range(0, horizon, 3)) + f"  {pooled['std'][0]:7.4f}")
    print("  q99" + " ".join(f"{pt['q99'][k, 0]:7.4f}" for k in range(0, horizon, 3)) + f"  {pooled['q99'][0]:7.4f}")
    norm_pt = Normalizer.from_artifact(art, mode="q01_q99", mask=cfg.normalization["action"].mask, clip=False)
    norm_pooled = Normalizer(pooled, None, mode="q01_q99", mask=cfg.normalization["action"].mask, clip=False)
    ep = next(generated_episodes("real_reach", 99, 1, True))
    chunk = ep.action[:horizon].astype(np.float64).copy()
    chunk[:, :6] -= ep.state[0, :6]
    a = norm_pt.normalize(chunk)
    b = norm_pooled.normalize(chunk, chunked=False)
    print("\nnormalized |value| of one real chunk, dim 0, first vs last position:")
    print(f"  per-timestep: {abs(a[0, 0]):.3f} .. {abs(a[-1, 0]):.3f}    pooled: {abs(b[0, 0]):.3f} .. {abs(b[-1, 0]):.3f}")
    print(f"\nstats artifact: {stats_path}")
    print(f"accumulators:   {stats_path.parent / 'accumulators'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
