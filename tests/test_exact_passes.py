"""The exact-quantile machinery's fast paths give what the plain definitions give.

- the count pass with value ranges (entries outside every range only counted, not searched) equals
  brute-force counts, for any ranges, ties, -0.0 and entries equal to edges or bounds;
- ``SampleGrid.update_cells`` (cell-major rows, the DELTA layout) keeps the same samples as
  ``SampleGrid.update`` (entry-major with NaN);
- ``Moments.of_rows`` equals ``Moments.of_batch`` of the transpose.
"""

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from stepnorm.stats import AccumulatorSpec, ChunkStatsAccumulator
from stepnorm.stats.exact import DataRef, SampleGrid, Source, _count_pass
from stepnorm.stats.moments import Moments


@st.composite
def values_edges_ranges(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    n = draw(st.integers(1, 300))
    values = np.round(rng.normal(size=n), draw(st.integers(0, 3)))  # ties
    values[rng.random(n) < 0.05] = -0.0
    pool = np.concatenate([values, rng.normal(size=20), [0.0]])
    edges = np.unique(rng.choice(pool, size=draw(st.integers(1, 40))) + 0.0)
    ranges = []
    for _ in range(draw(st.integers(0, 5))):
        i, j = sorted(rng.integers(0, len(edges), size=2))
        ranges.append((float(edges[i]), float(edges[j])))
    return values, edges, ranges


@settings(max_examples=300, deadline=None)
@given(values_edges_ranges())
def test_count_pass_with_ranges_equals_brute_force(case):
    values, edges, ranges = case
    acc = ChunkStatsAccumulator(AccumulatorSpec(1), "p")
    acc.add_episode(values[:, None])
    ref = DataRef(acc, [(values[:, None], None)])
    src = Source(id(ref), "tail", 0)
    lt, le, kept = _count_pass({src: edges}, {src.ref: ref}, {src: ranges})
    np.testing.assert_array_equal(lt[src], (values[:, None] < edges).sum(axis=0))
    np.testing.assert_array_equal(le[src], (values[:, None] <= edges).sum(axis=0))
    if not ranges:
        assert kept == {}
        return
    # kept: every entry in any range (what a collect pass inside it reads), -0.0 as 0.0, and
    # nothing from outside the edges' runs
    bounds, got = kept[src]
    in_range = np.zeros(len(values), bool)
    for lo, hi in ranges:
        in_range |= (values >= lo) & (values <= hi)
    in_runs = np.zeros(len(values), bool)
    for g in range(0, len(bounds), 2):
        in_runs |= (values > bounds[g]) & (values <= bounds[g + 1])
    assert not (in_range & ~in_runs).any()
    np.testing.assert_array_equal(np.sort(got).view(np.uint64), np.sort(values[in_runs] + 0.0).view(np.uint64))
    _, _, none = _count_pass({src: edges}, {src.ref: ref}, {src: ranges}, budget=int(in_runs.sum()) - 1)
    assert none == {}


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 40), st.integers(1, 6), st.integers(1, 400),
       st.sampled_from([2, 50, 1 << 12]))
def test_update_cells_keeps_the_samples_update_keeps(seed, k, cells, n, distinct_min):
    import pytest

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SampleGrid, "DISTINCT_MIN", distinct_min)
        _update_cells_case(seed, k, cells, n)


def _update_cells_case(seed, k, cells, n):
    rng = np.random.default_rng(seed)
    batches = [np.round(rng.standard_t(2, size=(rng.integers(0, n), cells)), rng.integers(0, 3)) for _ in range(3)]
    by_entry, by_cell = SampleGrid((cells,), k), SampleGrid((cells,), k)
    for batch in batches:
        batch[rng.random(batch.shape) < 0.1] = -0.0
        by_entry.update(batch)
        first = int(rng.integers(0, cells))  # rows for a part of the cells, the rest next
        by_cell.update_cells(first, np.ascontiguousarray(batch[:, first:].T))
        by_cell.update_cells(0, np.ascontiguousarray(batch[:, :first].T))
    for c in range(cells):
        a, b = by_entry.cell(c), by_cell.cell(c)
        np.testing.assert_array_equal(a.values.view(np.uint64), b.values.view(np.uint64))
        np.testing.assert_array_equal(a.counts, b.counts)
        assert a.truncated == b.truncated


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 5), st.integers(0, 200))
def test_moments_of_rows_equal_of_batch(seed, rows, n):
    rng = np.random.default_rng(seed)
    data = rng.normal(1e3, rng.uniform(1e-3, 10), size=(rows, n))
    got, want = Moments.of_rows(data), Moments.of_batch(data.T)
    np.testing.assert_array_equal(got.n, want.n)
    np.testing.assert_array_equal(got.min, want.min)
    np.testing.assert_array_equal(got.max, want.max)
    np.testing.assert_allclose(got.mean, want.mean, rtol=1e-15)
    np.testing.assert_allclose(got.m2, want.m2, rtol=1e-9, atol=1e-12)


def test_intervals_from_kept_entries_equal_a_collect_pass(monkeypatch):
    """Quantiles whose last interval is answered from the entries the count pass kept are the
    ones a collect pass over the data gives (bits), and the collect pass is then not run."""
    import stepnorm.stats.exact as exact
    from gen import make_episodes

    episodes = make_episodes(seed=5, n=30, dim=3, state_dim=3, min_len=1, max_len=60, heavy=True)
    spec = AccumulatorSpec(6, (True, False, True), sketch_k=12)

    def run():
        acc = ChunkStatsAccumulator(spec, "p")
        for a, s in episodes:
            acc.add_episode(a, s)
        return acc.finalize(data=episodes).to_dict([0.01, 0.3, 0.99])

    calls = []
    real = exact._collect_pass
    monkeypatch.setattr(exact, "_collect_pass", lambda *a: calls.append(1) or real(*a))
    kept = run()
    kept_calls = len(calls)
    monkeypatch.setattr(exact, "KEEP_VALUES", 0)
    passed = run()
    assert len(calls) > kept_calls  # without the kept entries, a collect pass ran

    def leaves(d, path=()):
        for key, value in d.items():
            if isinstance(value, dict):
                yield from leaves(value, path + (key,))
            else:
                yield path + (key,), np.asarray(value)

    got, want = dict(leaves(kept)), dict(leaves(passed))
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=str(key))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 6), st.sampled_from([None, (True, False, True)]))
def test_held_scan_sees_the_entries_of_the_streamed_scan(seed, horizon, delta_mask):
    """The passes over episodes held in memory (``_scan_held``, a column at a time) see, per
    source cell, the same multiset of entries as the episode-by-episode scan; episodes of length
    0, 1 and shorter than H included."""
    from stepnorm import chunks
    from stepnorm.stats.exact import _scan

    rng = np.random.default_rng(seed)
    episodes = [(np.round(rng.normal(size=(t, 3)), 1).astype(np.float32), rng.normal(size=(t, 4)))
                for t in rng.choice([0, 1, 2, horizon - 1, horizon, horizon + 3, 17], size=9)]
    acc = ChunkStatsAccumulator(AccumulatorSpec(horizon, delta_mask), "h")
    for a, s in episodes:
        acc.add_episode(a, s)
    acc.flush()
    sources = [Source(0, group, c) for group, g in acc.groups.items()
               for c in range(int(np.prod(g.shape, dtype=np.int64)))]
    seen = {}
    for data in (list(episodes), lambda: iter(episodes)):
        got = {src: [] for src in sources}
        _scan({0: DataRef(acc, data)}, sources, lambda src, v: got[src].append(np.asarray(v, np.float64)))
        seen[callable(data)] = {src: np.sort(np.concatenate(v + [np.zeros(0)])) for src, v in got.items()}
    for src in sources:
        np.testing.assert_array_equal(seen[True][src], seen[False][src])
        assert len(seen[True][src]) == int(acc.groups[src.group].moments.n.reshape(-1)[src.cell])
    assert any(len(v) for v in seen[False].values()) and (delta_mask is None or chunks.DELTA in acc.groups)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 60), max_size=300), st.integers(1, 80))
@example(values=[0, 0, 1, 2], k=2)  # the look-ahead passes every entry with > k distinct left
def test_bottom_distinct_keeps_the_entries_of_the_k_smallest_distinct_hashes(values, k):
    """A target's merged sample keeps every member entry of the union's k distinct values of
    smallest hash (``_bottom_distinct``, by partitions): against a sort of the distinct hashes."""
    from stepnorm.stats.exact import _bottom_distinct

    hashes = np.asarray(values, np.uint64) * np.uint64(0x9E3779B97F4A7C15)  # duplicates, any order
    got = _bottom_distinct(hashes, k)
    distinct = np.unique(hashes)
    want = hashes <= distinct[k - 1] if len(distinct) > k else np.ones(len(hashes), bool)
    np.testing.assert_array_equal(np.ones(len(hashes), bool) if got is None else got, want)
