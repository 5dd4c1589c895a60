"""Statistics of the real datasets in ../shared/data/real against the independent reference."""

import numpy as np
import pyarrow.parquet as pq
import pytest
from reference import assert_stats_match, chunk_entries

from stepnorm.sources.lerobot import iter_lerobot_episodes
from stepnorm.stats import AccumulatorSpec, ChunkStatsAccumulator

Q = [0.01, 0.5, 0.99]


def _reference_episodes(root, action_key, state_key):
    """Episodes read independently: every parquet file whole (as Python lists), grouped by episode_index."""
    episodes = []
    for f in sorted(root.glob("data/chunk-*/*.parquet")):
        table = pq.read_table(f).to_pydict()
        order_key = "frame_index" if "frame_index" in table else "index"
        action = np.array(table[action_key], np.float64)
        state = np.array(table[state_key], np.float64)
        ep_index, order = np.array(table["episode_index"]), np.array(table[order_key])
        for ep in sorted(set(ep_index.tolist())):
            rows = np.flatnonzero(ep_index == ep)
            rows = rows[np.argsort(order[rows], kind="stable")]
            episodes.append((action[rows], state[rows]))
    return episodes


@pytest.mark.parametrize("name, action_key, state_key, delta", [
    ("so101_record_test_lerobot_v30", "action", "observation.state", True),
    ("unitree_g1_pick_bottle_lerobot_v21", "action", "observation.state", False),
    ("gr1_sim_picknplace_lerobot_v20_SIM", "action", "observation.state", False),
    ("lingzu_open50_lerobot_v30", "actions", "state", False),
])
def test_lerobot_statistics_match_reference(real_data, name, action_key, state_key, delta):
    root = real_data / name
    horizon = 10
    ref_eps = _reference_episodes(root, action_key, state_key)
    dim = ref_eps[0][0].shape[1]
    delta_mask = tuple([True] * (dim - 1) + [False]) if delta else None
    acc = ChunkStatsAccumulator(AccumulatorSpec(horizon, delta_mask), name)
    episodes = list(iter_lerobot_episodes(root, dataset=name, action_key=action_key, state_key=state_key))
    for ep in episodes:
        acc.add_episode(ep.action, ep.state, source=ep.source)
    assert len(episodes) == len(ref_eps)
    out = acc.finalize(data=episodes).to_dict(Q)
    per_k = chunk_entries(ref_eps, horizon, delta_mask)
    for k in (0, 1, horizon // 2, horizon - 1):
        assert_stats_match({f: v[k] for f, v in out["action"]["per_timestep"].items()}, per_k[k], Q,
                           label=f"{name} k={k}")
    assert_stats_match(out["action"]["pooled"], np.concatenate(per_k), Q, label=f"{name} pooled")
    assert_stats_match(out["state"]["global"], np.concatenate([s for _, s in ref_eps]), Q, label=f"{name} state")
