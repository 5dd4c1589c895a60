"""Property tests: any split of the episodes, merged in any order, gives the same statistics
(quantiles identical and equal to the exact order statistics, also when the bracketing samples
hold only part of each cell)."""

import numpy as np
from gen import make_episodes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import chunk_entries, exact_quantile, rank_error

from stepnorm.stats import AccumulatorSpec, ChunkStatsAccumulator

Q = [0.01, 0.5, 0.99]
SPEC = AccumulatorSpec(5, (True, False, False))
# A tiny bracketing sample, so the count/collect passes and window widening run on every cell.
SMALL = AccumulatorSpec(5, (True, False, False), sketch_k=16)
EPISODES = make_episodes(seed=21, n=40, dim=3, state_dim=3, min_len=1, max_len=40, heavy=True)
WHOLE = ChunkStatsAccumulator(SPEC, "p")
for _a, _s in EPISODES:
    WHOLE.add_episode(_a, _s)
WHOLE_OUT = WHOLE.finalize().to_dict(Q)
PER_K = chunk_entries(EPISODES, 5, SPEC.delta_mask)
STORED = np.concatenate([np.asarray(a, np.float64) for a, _ in EPISODES])


def test_raw_block_is_the_stored_actions():
    """With a delta_mask, ``raw`` describes the stored actions (two-pass float64 reference)."""
    raw = WHOLE_OUT["action"]["raw"]
    assert int(raw["count"]) == len(STORED)
    mean = STORED.mean(axis=0)
    np.testing.assert_allclose(raw["mean"], mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(raw["std"], np.sqrt(((STORED - mean) ** 2).mean(axis=0)), rtol=1e-10)
    np.testing.assert_array_equal(raw["min"], STORED.min(axis=0))
    np.testing.assert_array_equal(raw["max"], STORED.max(axis=0))
    # the plain dims' raw statistics are their global ones
    for field in ("mean", "std", "min", "max", "q50"):
        np.testing.assert_array_equal(raw[field][1:], WHOLE_OUT["action"]["global"][field][1:])


def _accumulate(indices, spec=SPEC):
    acc = ChunkStatsAccumulator(spec, "p")
    for i in indices:
        acc.add_episode(*EPISODES[i])
    return acc


def _merge_all(accs, tree):
    if tree:  # pairwise tree merge, through serialized bytes
        while len(accs) > 1:
            nxt = []
            for i in range(0, len(accs), 2):
                left = ChunkStatsAccumulator.from_bytes(accs[i].to_bytes())
                nxt.append(left.merge(accs[i + 1]) if i + 1 < len(accs) else left)
            accs = nxt
        return accs[0]
    total = accs[0]
    for acc in accs[1:]:
        total.merge(acc)
    return total


@st.composite
def splits(draw):
    """A partition of the episodes into parts (some possibly empty) and a merge order."""
    n_parts = draw(st.integers(1, 6))
    labels = draw(st.lists(st.integers(0, n_parts - 1), min_size=len(EPISODES), max_size=len(EPISODES)))
    parts = [[i for i, lab in enumerate(labels) if lab == p] for p in range(n_parts)]
    order = draw(st.permutations(range(n_parts)))
    tree = draw(st.booleans())
    return parts, order, tree


def _close(a, b, rtol=1e-12):
    a, b = np.asarray(a, float), np.asarray(b, float)
    both_nan = np.isnan(a) & np.isnan(b)
    scale = np.maximum(np.abs(b), 1e-300)
    assert (both_nan | (np.abs(a - b) <= rtol * scale + 1e-15)).all(), (a, b)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(splits())
def test_any_split_any_order_same_moments_and_quantiles_within_bound(split):
    parts, order, tree = split
    total = _merge_all([_accumulate(parts[p]) for p in order], tree)
    out = total.finalize().to_dict(Q)
    assert out["num_episodes"] == len(EPISODES)
    for kind in ("global", "per_timestep", "pooled", "raw"):
        got, ref = out["action"][kind], WHOLE_OUT["action"][kind]
        np.testing.assert_array_equal(got["count"], ref["count"])
        _close(got["mean"], ref["mean"])
        _close(got["std"], ref["std"])
        np.testing.assert_array_equal(got["min"], ref["min"])
        np.testing.assert_array_equal(got["max"], ref["max"])
    raw = out["action"]["raw"]  # stored actions, each step once (no delta)
    for d in range(3):
        for q in Q:
            assert rank_error(STORED[:, d], raw[f"q{int(round(q * 100)):02d}"][d], q) <= 0.002
    pt = out["action"]["per_timestep"]
    for k in range(5):
        if len(PER_K[k]) == 0:
            continue
        for d in range(3):
            for q in Q:
                assert rank_error(PER_K[k][:, d], pt[f"q{int(round(q * 100)):02d}"][k, d], q) <= 0.002
    for kind in ("global", "per_timestep", "pooled"):
        for q in Q:
            key = f"q{int(round(q * 100)):02d}"
            np.testing.assert_array_equal(out["action"][kind][key], WHOLE_OUT["action"][kind][key])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(splits())
def test_any_split_any_order_identical_exact_quantiles_with_partial_samples(split):
    parts, order, tree = split
    total = _merge_all([_accumulate(parts[p], SMALL) for p in order], tree)
    total.flush()
    assert all(s.truncated for s in total.groups["tail"].samples.samples)
    out = total.finalize(data=EPISODES).to_dict(Q)
    pooled = np.concatenate([v for v in PER_K if len(v)])
    states = np.concatenate([s for _, s in EPISODES])
    for q in Q:
        key = f"q{int(round(q * 100)):02d}"
        for d in range(3):
            for k in range(5):
                if len(PER_K[k]):
                    assert out["action"]["per_timestep"][key][k, d] == exact_quantile(PER_K[k][:, d], q)
            assert out["action"]["global"][key][d] == exact_quantile(PER_K[0][:, d], q)
            assert out["action"]["pooled"][key][d] == exact_quantile(pooled[:, d], q)
            assert out["state"]["global"][key][d] == exact_quantile(states[:, d], q)
        # and identical to the whole-data accumulator with the default sample (no passes needed there)
        for kind in ("global", "per_timestep", "pooled"):
            np.testing.assert_array_equal(out["action"][kind][key], WHOLE_OUT["action"][kind][key])


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=300),
       st.integers(1, 6), st.sampled_from([1, 2, 4, 64]))
def test_distinct_samples_merge_to_the_same_sample_in_any_split(values, n_parts, k):
    """Bottom-k distinct sample: same values, counts and truncation flag however it is split."""
    from stepnorm.stats.exact import DistinctSample

    values = np.asarray(values, np.float64)
    whole = DistinctSample(k)
    whole.add(values)
    parts = [DistinctSample(k) for _ in range(n_parts)]
    for i, v in enumerate(values):
        parts[i % n_parts].add(np.asarray([v]))
    merged = parts[-1]
    for p in reversed(parts[:-1]):
        merged.merge(p)
    np.testing.assert_array_equal(merged.values, whole.values)
    np.testing.assert_array_equal(merged.counts, whole.counts)
    assert merged.truncated == whole.truncated == (len(np.unique(values)) > k)
    uniq, counts = np.unique(values, return_counts=True)
    for v, c in zip(merged.values, merged.counts):
        assert c == counts[np.searchsorted(uniq, v)]  # kept values carry their exact count


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.sampled_from([0.0, -0.0, 1.0, 2.5, float("nan")]) | st.floats(-50, 50, width=16),
                         min_size=3, max_size=3), min_size=1, max_size=200),
       st.integers(1, 40), st.sampled_from([1, 2, 3, 8, 64]), st.sampled_from([1, 7, 1 << 16]),
       st.sampled_from([1, 3, 1 << 12]))
def test_sample_grid_equals_each_cells_own_sample(rows, n_batches, k, consolidate_min, distinct_min):
    """SampleGrid's bulk update (thresholds, buffered candidates, bulk merges at any buffer size,
    a filling cell's candidates buffered as distinct values from any count) gives, per cell,
    exactly the DistinctSample of that cell's values (NaN = no value), and so do its merge and
    serialized form, however the rows are batched and the grids merged."""
    from stepnorm.stats.exact import DistinctSample, SampleGrid

    data = np.asarray(rows, np.float64).reshape(len(rows), 3)
    old_min, old_distinct = SampleGrid.CONSOLIDATE_MIN, SampleGrid.DISTINCT_MIN
    SampleGrid.CONSOLIDATE_MIN, SampleGrid.DISTINCT_MIN = consolidate_min, distinct_min
    try:
        whole = SampleGrid((3,), k)
        for batch in np.array_split(data, n_batches):
            whole.update(batch)
        halves = [SampleGrid((3,), k), SampleGrid((3,), k)]
        for i, batch in enumerate(np.array_split(data, max(2, n_batches))):
            halves[i % 2].update(batch)
        halves[1].merge(halves[0])
    finally:
        SampleGrid.CONSOLIDATE_MIN, SampleGrid.DISTINCT_MIN = old_min, old_distinct
    for c in range(3):
        col = data[:, c]
        ref = DistinctSample(k)
        ref.add(col[~np.isnan(col)])
        for grid in (whole, halves[1], SampleGrid.from_arrays((3,), k, whole.to_arrays("g"), "g")):
            got = grid.cell(c)
            np.testing.assert_array_equal(got.values, ref.values)
            np.testing.assert_array_equal(got.counts, ref.counts)
            assert got.truncated == ref.truncated


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(0, len(EPISODES) - 1), min_size=0, max_size=12))
def test_serialization_round_trip(indices):
    acc = _accumulate(indices)
    back = ChunkStatsAccumulator.from_bytes(acc.to_bytes())
    assert back.to_bytes() == acc.to_bytes()
    assert (back.num_episodes, back.num_steps, back.action_dim, back.state_dim) == (
        acc.num_episodes, acc.num_steps, acc.action_dim, acc.state_dim)
    a, b = acc.finalize().to_dict(Q), back.finalize().to_dict(Q)
    if indices:
        for kind in ("global", "per_timestep", "pooled", "raw"):
            for field in a["action"][kind]:
                np.testing.assert_array_equal(a["action"][kind][field], b["action"][kind][field])


def test_merge_with_empty_is_identity():
    empty = ChunkStatsAccumulator(SPEC, "p")
    merged = ChunkStatsAccumulator(SPEC, "p").merge(empty).merge(_accumulate(range(len(EPISODES)))).merge(empty)
    out = merged.finalize().to_dict(Q)
    _close(out["action"]["per_timestep"]["std"], WHOLE_OUT["action"]["per_timestep"]["std"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(1, 12), min_size=1, max_size=8), st.sampled_from([SPEC, SMALL]))
def test_parts_sharing_samples_equal_parts_with_their_own(sizes, spec):
    """Consecutive parts of the episodes: accumulated with one shared bracketing sample and
    merged moments-only (``shared_samples``, in-process stage 2) give the same accumulator bytes
    as parts with their own samples merged in part order (stage 2 on Beam)."""
    bounds = np.minimum(np.cumsum([0] + sizes), len(EPISODES))
    parts = [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    own = None
    for part in parts:
        acc = ChunkStatsAccumulator.from_bytes(_accumulate(part, spec).to_bytes())
        own = acc if own is None else own.merge(acc)
    shared, total = {}, None
    for part in parts:
        acc = ChunkStatsAccumulator(spec, "p", shared_samples=shared)
        for i in part:
            acc.add_episode(*EPISODES[i])
        acc.flush()
        total = acc if total is None else total.merge(acc, samples=False)
    for key, group in total.groups.items():
        group.samples = shared[key]
    assert total.to_bytes() == own.to_bytes()
