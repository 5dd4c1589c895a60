"""Float64 references for the LeRobot integration tests, written plainly (numpy, json, pyarrow only).

Used by tests/test_lerobot_integration.py (main venv) and tests/lerobot_env/check_lerobot.py (the
LeRobot venv); chunks come from the suite's one chunk reference, tests/reference.py ``chunk_at``. Nothing from stepnorm: the statistics are read from ``stats.json`` with ``json`` and
the formulas are SPEC section 4's, written out again here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

FLOOR = 1e-8


def read_episodes(root: Path, action_key: str = "action", state_key: str = "observation.state"):
    """``[(action [T, D], state [T, Ds])]`` float64 from a LeRobot dataset's parquet files."""
    episodes = []
    for f in sorted(Path(root).glob("data/chunk-*/*.parquet")):
        table = pq.read_table(f, columns=[action_key, state_key, "episode_index", "frame_index"]).to_pydict()
        action = np.array(table[action_key], np.float64)
        state = np.array(table[state_key], np.float64)
        ep_index, frame = np.array(table["episode_index"]), np.array(table["frame_index"])
        for ep in np.unique(ep_index):
            rows = np.flatnonzero(ep_index == ep)
            rows = rows[np.argsort(frame[rows], kind="stable")]
            episodes.append((action[rows], state[rows]))
    return episodes


def pick_frames(episodes, count: int, horizon: int, seed: int):
    """``count`` (episode, t) pairs, half of them within ``horizon`` of the episode's end (padded chunks)."""
    rng = np.random.default_rng(seed)
    picks = []
    for i in range(count):
        e = int(rng.integers(len(episodes)))
        t_len = len(episodes[e][0])
        t = int(rng.integers(max(0, t_len - horizon), t_len)) if i % 2 else int(rng.integers(t_len))
        picks.append((e, t))
    return picks


class Reference:
    """Per-position affine parameters of ``stats.json`` (combined block), as SPEC section 4 defines them."""

    def __init__(self, artifact_dir: Path, mode: str):
        doc = json.loads((Path(artifact_dir) / "stats.json").read_text())
        stats = {k: np.array([[np.nan if v is None else v for v in row] for row in rows], np.float64)
                 for k, rows in doc["combined"]["action"]["per_timestep"].items() if k != "count"}
        spec = (doc["config"].get("normalization") or {}).get("action") or {}
        self.delta_mask = None if doc["config"].get("delta_mask") is None else np.array(doc["config"]["delta_mask"])
        if mode == "mean_std":
            center, spread = stats["mean"], stats["std"]
        else:
            lo, hi = (stats["min"], stats["max"]) if mode == "min_max" else (stats["q01"], stats["q99"])
            center, spread = (lo + hi) / 2, (hi - lo) / 2
        dims = center.shape[1]
        on = np.ones(dims, bool) if spec.get("mask") is None else np.array(spec["mask"], bool)
        clip = spec.get("clip")
        self.clip = (mode != "mean_std") if clip is None else bool(clip)
        self.bound = 1.0 if mode != "mean_std" else 5.0
        self.center, self.spread, self.mask = center, spread, on
        self.degenerate = on & (spread < FLOOR * np.maximum(1.0, np.abs(center)))
        self.active = on & ~self.degenerate

    def normalize(self, chunk: np.ndarray, state: np.ndarray | None) -> np.ndarray:
        """One chunk ``[h, D]`` (and its state ``[Ds]``) -> normalized, position k with row k."""
        x = np.array(chunk, np.float64)
        if self.delta_mask is not None:
            x[:, self.delta_mask] -= state[self.delta_mask]
        h = len(x)
        y = (x - self.center[:h]) / np.where(self.active[:h], self.spread[:h], 1.0)
        if self.clip:
            y = np.clip(y, -self.bound, self.bound)
        y = np.where(self.active[:h], y, x)
        return np.where(self.degenerate[:h], 0.0, y)

    def unnormalize_action(self, y: np.ndarray, position: int, state: np.ndarray | None) -> np.ndarray:
        """One normalized action ``[D]`` that sits at chunk ``position`` -> robot units."""
        y = np.asarray(y, np.float64)
        k = position
        x = np.where(self.active[k], y * self.spread[k] + self.center[k], y)
        x = np.where(self.degenerate[k], self.center[k], x)
        if self.delta_mask is not None:
            x[self.delta_mask] += state[self.delta_mask]
        return x
