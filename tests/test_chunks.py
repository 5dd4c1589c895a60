"""stepnorm.chunks, the one definition of chunks, against the suite's loop reference (tests/reference.py).

Both views are checked: the materialized chunks and validity the writer uses, and the grouped
entries the accumulator adds (the union named by ``position_members`` is each position's valid
entries, each action added once).
"""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from reference import chunk_entries, chunks

from stepnorm import chunks as sn_chunks


@st.composite
def episodes_and_spec(draw):
    dim = draw(st.integers(1, 4))
    horizon = draw(st.integers(1, 7))
    mask = draw(st.one_of(st.none(), st.lists(st.booleans(), min_size=dim, max_size=dim)))
    seed = draw(st.integers(0, 2**31 - 1))
    lengths = draw(st.lists(st.integers(1, 12), min_size=1, max_size=5))
    rng = np.random.default_rng(seed)
    episodes = [(rng.normal(size=(t, dim)), rng.normal(size=(t, dim))) for t in lengths]
    return episodes, horizon, mask


@settings(max_examples=150, deadline=None)
@given(episodes_and_spec())
def test_action_chunks_equal_the_reference(case):
    episodes, horizon, mask = case
    expect, expect_valid = chunks(episodes, horizon, mask)
    got = [sn_chunks.action_chunks(a, s, horizon, mask) for a, s in episodes]
    np.testing.assert_array_equal(np.concatenate([c for c, _ in got]), expect)
    np.testing.assert_array_equal(np.concatenate([v for _, v in got]), expect_valid)


@settings(max_examples=150, deadline=None)
@given(episodes_and_spec())
def test_grouped_entries_are_each_positions_valid_entries(case):
    episodes, horizon, mask = case
    dim = episodes[0][0].shape[1]
    plain, delta = sn_chunks.plain_dims(dim, mask), sn_chunks.delta_dims(mask)
    shapes = sn_chunks.group_shapes(horizon, dim, dim, mask)
    groups = {key: [] for key in shapes}
    steps = 0
    for a, s in episodes:
        steps += len(a)
        for key, batch in sn_chunks.episode_entries(a, s, horizon, mask).items():
            assert batch.shape[1:] == shapes[key], key
            groups[key].append(batch)
    groups = {key: np.concatenate(v) for key, v in groups.items() if v}  # DELTA has no entries without delta dims
    expected = chunk_entries(episodes, horizon, mask)
    for pos in range(horizon):
        for i, d in enumerate(plain):
            parts = [groups[g][:, i] if j is None else groups[g][:, j, i]
                     for g, j in sn_chunks.position_members(pos, horizon)]
            got = np.concatenate(parts)
            np.testing.assert_array_equal(np.sort(got[~np.isnan(got)]), np.sort(expected[pos][:, d]))
        for i, d in enumerate(delta):
            got = groups[sn_chunks.DELTA][:, pos, i]
            np.testing.assert_array_equal(np.sort(got[~np.isnan(got)]), np.sort(expected[pos][:, d]))
    # every action once: HEAD and TAIL together hold each plain action exactly once
    if len(plain):
        held = np.concatenate([groups[sn_chunks.HEAD].reshape(-1, len(plain)), groups[sn_chunks.TAIL]])
        held = held[~np.isnan(held).all(axis=1)]
        assert len(held) == steps
        np.testing.assert_array_equal(np.sort(held, axis=0),
                                      np.sort(np.concatenate([a[:, plain] for a, _ in episodes]), axis=0))
    if len(delta):
        assert len(groups[sn_chunks.RAW]) == steps and len(groups[sn_chunks.DELTA]) == steps
    assert len(groups[sn_chunks.STATE]) == steps


@settings(max_examples=150, deadline=None)
@given(episodes_and_spec(), st.data())
def test_delta_by_lag_is_episode_entries_delta_bit_for_bit(case, data):
    """The accumulator's and the passes' DELTA entries (a batch of episodes at once, per position)
    are episode_entries' DELTA cells: the same values, bits included, in step order."""
    episodes, horizon, mask = case
    delta = sn_chunks.delta_dims(mask)
    if not len(delta):
        return
    lags = sorted(data.draw(st.sets(st.integers(0, horizon - 1), min_size=1)))
    expect = np.concatenate([sn_chunks.episode_entries(a, s, horizon, mask)[sn_chunks.DELTA] for a, s in episodes])
    got = list(sn_chunks.delta_by_lag([(a[:, delta], s[:, delta]) for a, s in episodes], horizon, lags))
    assert [k for k, _ in got] == lags
    for k, rows in got:
        assert rows.shape[0] == len(delta) and all(r.flags.c_contiguous for r in rows)
        for j, row in enumerate(rows):
            column = expect[:, k, j]
            np.testing.assert_array_equal(row.view(np.uint64), column[~np.isnan(column)].view(np.uint64))
