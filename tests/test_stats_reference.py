"""Every statistic of the accumulator against the independent reference in reference.py."""

from fractions import Fraction

import numpy as np
import pytest
from gen import make_episodes
from reference import assert_stats_match, chunk_entries, exact_quantile, rank_error, two_pass

from stepnorm.errors import InputDataError, NonFiniteError
from stepnorm.stats import AccumulatorSpec, ChunkStatsAccumulator, combine

Q = [0.01, 0.1, 0.5, 0.9, 0.99]


def compute(episodes, horizon, delta_mask=None, name="gen"):
    acc = ChunkStatsAccumulator(AccumulatorSpec(horizon, None if delta_mask is None else tuple(delta_mask)), name)
    for action, state in episodes:
        acc.add_episode(action, state)
    acc.data = episodes  # read again by the exact-quantile passes
    return acc, acc.finalize().to_dict(Q)


def check_all(episodes, horizon, delta_mask=None, rtol=1e-9):
    acc, out = compute(episodes, horizon, delta_mask)
    per_k = chunk_entries(episodes, horizon, delta_mask)
    pt = out["action"]["per_timestep"]
    for k in range(horizon):
        expected_count = sum(max(0, len(a) - k) for a, _ in episodes)
        assert pt["count"][k] == expected_count == len(per_k[k])
        if expected_count == 0:
            assert np.isnan(pt["mean"][k]).all() and np.isnan(pt["q01"][k]).all()
            continue
        assert_stats_match({f: v[k] for f, v in pt.items()}, per_k[k], Q, rtol=rtol, label=f"per_timestep[{k}]")
    # global: each step once, as the chunk's first entry
    assert_stats_match(out["action"]["global"], per_k[0], Q, rtol=rtol, label="global")
    # pooled: every valid chunk entry of every position
    pooled = np.concatenate([v for v in per_k if len(v)])
    assert_stats_match(out["action"]["pooled"], pooled, Q, rtol=rtol, label="pooled")
    states = np.concatenate([s for _, s in episodes])
    assert_stats_match(out["state"]["global"], states, Q, rtol=rtol, label="state")
    assert out["num_episodes"] == len(episodes)
    assert out["num_steps"] == sum(len(a) for a, _ in episodes)
    return out


def test_mixed_lengths_including_1_and_shorter_than_h():
    episodes = make_episodes(seed=1, n=60, min_len=1, max_len=25)
    episodes[0] = (episodes[0][0][:1], episodes[0][1][:1])
    check_all(episodes, horizon=8)


def test_all_episodes_shorter_than_horizon_leaves_empty_positions():
    episodes = make_episodes(seed=2, n=10, min_len=1, max_len=5)
    out = check_all(episodes, horizon=8)
    assert (out["action"]["per_timestep"]["count"][5:] == 0).all()


def test_horizon_one():
    check_all(make_episodes(seed=3, n=20), horizon=1)


def test_delta_mask():
    episodes = make_episodes(seed=4, n=40, dim=4, max_len=30)
    out = check_all(episodes, horizon=10, delta_mask=[True, False, True, False])
    # with delta dims the spread grows with k: the reason per-timestep statistics exist
    std = out["action"]["per_timestep"]["std"]
    assert std[9, 0] > std[0, 0]


def test_heavy_tailed_many_values_quantile_rank_error():
    episodes = make_episodes(seed=5, n=400, dim=3, min_len=40, max_len=120, heavy=True)
    acc, out = compute(episodes, horizon=16)
    per_k = chunk_entries(episodes, 16)
    worst = 0.0
    for k in (0, 7, 15):
        for d in range(3):
            for q in (0.01, 0.99):
                got = out["action"]["per_timestep"][f"q{int(q*100):02d}"][k, d]
                worst = max(worst, rank_error(per_k[k][:, d], got, q))
                assert got == exact_quantile(per_k[k][:, d], q)
    assert worst <= 0.002
    # enough data that the bracketing samples hold a small part of each cell (the passes run)
    assert out["action"]["per_timestep"]["count"][0] > 30_000
    acc.flush()
    assert all(s.truncated for s in acc.groups["tail"].samples.samples)


def test_float32_large_mean_tiny_std_is_exact_to_1e9():
    rng = np.random.default_rng(6)
    episodes = []
    for _ in range(50):
        t_len = int(rng.integers(5, 60))
        action = (1000.0 + 0.001 * rng.normal(size=(t_len, 2))).astype(np.float32)
        episodes.append((action, action.copy()))
    acc, out = compute(episodes, horizon=4)
    values = np.concatenate([a for a, _ in episodes]).astype(np.float64)
    _, mean, std, _, _ = two_pass(values)
    got = out["action"]["global"]
    assert np.abs(got["std"] / std - 1).max() <= 1e-9
    assert np.abs(got["mean"] - mean).max() <= 1e-9 * std.max()
    # |mean| / std = 1e6 also per timestep and pooled
    check_all(episodes, horizon=4)


def test_nan_and_inf_raise_naming_dataset_and_dim():
    acc = ChunkStatsAccumulator(AccumulatorSpec(4), "bridge")
    action = np.zeros((5, 3))
    action[2, 1] = np.nan
    with pytest.raises(NonFiniteError, match=r"bridge.*dim 1"):
        acc.add_episode(action, None, source="shard-0")
    state = np.zeros((5, 2))
    state[4, 0] = np.inf
    with pytest.raises(NonFiniteError, match=r"bridge \(ep 7\): state dim 0"):
        acc.add_episode(np.zeros((5, 3)), state, source="ep 7")


def test_dims_that_change_between_episodes_are_an_error():
    acc = ChunkStatsAccumulator(AccumulatorSpec(4), "mixed")
    acc.add_episode(np.zeros((5, 3)))
    with pytest.raises(InputDataError, match="differ"):
        acc.add_episode(np.zeros((5, 4)))


def test_delta_mask_needs_state_dims():
    acc = ChunkStatsAccumulator(AccumulatorSpec(4, (True, False)), "d")
    with pytest.raises(InputDataError, match="state"):
        acc.add_episode(np.zeros((5, 2)), None)


def test_empty_episodes_count_but_add_no_steps():
    episodes = make_episodes(seed=7, n=5)
    acc = ChunkStatsAccumulator(AccumulatorSpec(4), "e")
    acc.add_episode(np.zeros((0, 4)), np.zeros((0, 5)))
    for a, s in episodes:
        acc.add_episode(a, s)
    out = acc.finalize().to_dict(Q)
    assert out["num_episodes"] == 6
    assert out["num_steps"] == sum(len(a) for a, _ in episodes)


def test_large_batches_cross_the_flush_threshold():
    # more than FLUSH_VALUES buffered values: exercises several flushes
    episodes = make_episodes(seed=8, n=300, dim=7, state_dim=8, min_len=200, max_len=400)
    acc, out = compute(episodes, horizon=50, delta_mask=[True] * 6 + [False])
    values = np.concatenate([a for a, _ in episodes])
    _, mean, std, vmin, vmax = two_pass(values[:, 6:])
    np.testing.assert_allclose(out["action"]["global"]["std"][6:], std, rtol=1e-9)
    np.testing.assert_array_equal(out["action"]["global"]["max"][6:], vmax)


def test_combine_samples_equals_statistics_of_the_union():
    a = make_episodes(seed=9, n=30, dim=3)
    b = make_episodes(seed=10, n=50, dim=3, heavy=True)
    fa = compute(a, 6)[0].finalize()
    fb = compute(b, 6)[0].finalize()
    out = combine([(fa, 1.0), (fb, 5.0)], "samples").to_dict(Q)
    per_k = chunk_entries(a + b, 6)
    for k in range(6):
        assert_stats_match({f: v[k] for f, v in out["action"]["per_timestep"].items()}, per_k[k], Q, label=f"k={k}")
    assert out["num_episodes"] == 80


def test_combine_mixture_weights_each_dataset_distribution():
    a = make_episodes(seed=11, n=30, dim=2)
    b = [(x + 5.0, s) for x, s in make_episodes(seed=12, n=90, dim=2)]
    fa, fb = compute(a, 4)[0].finalize(), compute(b, 4)[0].finalize()
    wa, wb = 3.0, 1.0
    out = combine([(fa, wa), (fb, wb)], "mixture").to_dict(Q)
    ka, kb = chunk_entries(a, 4), chunk_entries(b, 4)
    for k in range(4):
        values = np.concatenate([ka[k], kb[k]])
        weights = np.concatenate([np.full(len(ka[k]), wa / (wa + wb) / len(ka[k])),
                                  np.full(len(kb[k]), wb / (wa + wb) / len(kb[k]))])
        exact_mass = [Fraction(wa) / len(ka[k])] * len(ka[k]) + [Fraction(wb) / len(kb[k])] * len(kb[k])
        mean = (weights[:, None] * values).sum(0) / weights.sum()
        var = (weights[:, None] * (values - mean) ** 2).sum(0) / weights.sum()
        got = {f: v[k] for f, v in out["action"]["per_timestep"].items()}
        np.testing.assert_allclose(got["mean"], mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got["std"], np.sqrt(var), rtol=1e-9)
        np.testing.assert_array_equal(got["min"], values.min(0))
        for q in Q:
            for d in range(2):
                assert rank_error(values[:, d], got[f"q{int(round(q*100)):02d}"][d], q, weights) <= 0.002
                assert got[f"q{int(round(q*100)):02d}"][d] == exact_quantile(values[:, d], q, exact_mass)
        assert got["count"] == len(values)


def test_mixture_with_zero_weight_dataset_excludes_it():
    a = make_episodes(seed=13, n=20, dim=2)
    b = [(x + 100.0, s) for x, s in make_episodes(seed=14, n=20, dim=2)]
    fa, fb = compute(a, 3)[0].finalize(), compute(b, 3)[0].finalize()
    out = combine([(fa, 1.0), (fb, 0.0)], "mixture").to_dict(Q)
    ref = compute(a, 3)[1]
    np.testing.assert_allclose(out["action"]["global"]["mean"], ref["action"]["global"]["mean"], rtol=1e-12)
    assert out["action"]["global"]["max"].max() < 50


def _hard_episodes(seed, shift=0.0):
    """Length-1 and shorter-than-H episodes, heavy tails, ties, a constant dim, |mean|/std = 1e6."""
    rng = np.random.default_rng(seed)
    episodes = make_episodes(seed=seed, n=40, dim=4, state_dim=4, min_len=1, max_len=30, heavy=True)
    out = []
    for i, (a, s) in enumerate(episodes):
        a = a.copy()
        a[:, 1] = np.round(a[:, 1])                      # heavy ties
        a[:, 2] = 7.0                                      # constant dim
        a[:, 3] = 1e6 + rng.normal(size=len(a))            # |mean| / std = 1e6
        out.append((a[:1] if i == 0 else a, s[:1] if i == 0 else s))
    return [(a + shift, s) for a, s in out]


@pytest.mark.parametrize("k", [4, 64, 2000])
@pytest.mark.parametrize("weighting", ["samples", "mixture"])
def test_every_quantile_is_the_exact_order_statistic_on_hard_cases(k, weighting):
    horizon, mask = 6, (True, False, False, False)
    a, b = _hard_episodes(31), _hard_episodes(32, shift=3.0)
    accs = []
    for eps in (a, b):
        acc = ChunkStatsAccumulator(AccumulatorSpec(horizon, mask, sketch_k=k), "hard")
        for x, s in eps:
            acc.add_episode(x, s)
        accs.append(acc)
    fa, fb = accs[0].finalize(data=a), accs[1].finalize(data=b)
    wa, wb = 2.0, 0.5
    out = combine([(fa, wa), (fb, wb)], weighting).to_dict(Q)
    own = fa.to_dict(Q)
    ka, kb = chunk_entries(a, horizon, mask), chunk_entries(b, horizon, mask)
    pooled_a, pooled_b = np.concatenate(ka), np.concatenate(kb)
    blocks = [(out["action"]["per_timestep"], [(ka[j], kb[j]) for j in range(horizon)]),
              (out["action"]["pooled"], (pooled_a, pooled_b)),
              (out["action"]["global"], (ka[0], kb[0]))]
    for q in Q:
        key = f"q{int(round(q * 100)):02d}"
        for d in range(4):
            for j in range(horizon):
                assert own["action"]["per_timestep"][key][j, d] == exact_quantile(ka[j][:, d], q)
            assert own["action"]["pooled"][key][d] == exact_quantile(pooled_a[:, d], q)
            for block, parts in blocks:
                rows = parts if isinstance(parts, list) else [parts]
                for j, (va, vb) in enumerate(rows):
                    got = block[key][j, d] if isinstance(parts, list) else block[key][d]
                    values = np.concatenate([va[:, d], vb[:, d]])
                    mass = None
                    if weighting == "mixture":
                        mass = [Fraction(wa) / len(va)] * len(va) + [Fraction(wb) / len(vb)] * len(vb)
                    assert got == exact_quantile(values, q, mass), (key, d, j)


def test_empty_episodes_in_the_data_passes():
    episodes = make_episodes(seed=41, n=30, dim=2, min_len=1, max_len=30)
    episodes.insert(5, (np.zeros((0, 2)), np.zeros((0, 5))))
    acc = ChunkStatsAccumulator(AccumulatorSpec(4, sketch_k=8), "e")
    for a, s in episodes:
        acc.add_episode(a, s)
    out = acc.finalize(data=episodes).to_dict(Q)
    per_k = chunk_entries([e for e in episodes if len(e[0])], 4)
    for q in Q:
        assert out["action"]["global"][f"q{int(round(q * 100)):02d}"][0] == exact_quantile(per_k[0][:, 0], q)
