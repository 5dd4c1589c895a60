"""Generated episodes for tests: varied lengths (including 1 and < H), trends, heavy tails."""

from __future__ import annotations

import numpy as np


def make_episodes(seed=0, n=40, dim=4, state_dim=5, min_len=1, max_len=30, heavy=False, dtype=np.float64):
    rng = np.random.default_rng(seed)
    episodes = []
    for i in range(n):
        t_len = int(rng.integers(min_len, max_len + 1))
        steps = rng.standard_t(1.5, size=(t_len, dim)) if heavy else rng.normal(size=(t_len, dim))
        action = (np.cumsum(steps * 0.1, axis=0) + rng.normal(size=dim)).astype(dtype)
        state = (rng.normal(size=(t_len, state_dim)) + np.arange(state_dim)).astype(dtype)
        episodes.append((action, state))
    return episodes
