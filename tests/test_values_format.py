"""A values-cache entry gives back the episodes it was given: stacked (one array per field when
every episode has one width and dtype) or per episode (widths or dtypes that differ, which the
accumulator then reports naming the episode), with and without states, empty episodes included."""

import numpy as np
import pytest

from stepnorm.sources.base import Episode
from stepnorm.values import TaskValues, ValuesCache


def _episodes(widths, dtypes, with_state):
    rng = np.random.default_rng(len(widths))
    out = []
    for i, (w, dt) in enumerate(zip(widths, dtypes)):
        t = 0 if i == 1 else int(rng.integers(1, 9))
        state = rng.normal(size=(t, 3)).astype(np.float32) if with_state else None
        out.append(Episode("d", f"file-{i}", 10 + i, rng.normal(size=(t, w)).astype(dt), state, {}))
    return out


@pytest.mark.parametrize("widths,dtypes,with_state", [
    ((4, 4, 4), ("float32",) * 3, True),                   # stacked
    ((4, 4, 4), ("float32",) * 3, False),                  # stacked, no state
    ((4, 5, 4), ("float32",) * 3, True),                   # a width differs: per episode
    ((4, 4, 4), ("float32", "float64", "float32"), True),  # a dtype differs: per episode
])
def test_entry_round_trip(tmp_path, widths, dtypes, with_state):
    episodes = _episodes(widths, dtypes, with_state)
    values = TaskValues()
    for ep in episodes:
        values.add(ep)
    cache = ValuesCache(tmp_path)
    cache.write("ab" * 32, values, "d", "file")
    got = list(cache.episodes(["ab" * 32], "d"))
    assert len(got) == len(episodes)
    for a, b in zip(got, episodes):
        assert (a.source, a.index, a.length) == (b.source, b.index, b.length)
        assert a.action.dtype == b.action.dtype and a.action.shape == b.action.shape
        np.testing.assert_array_equal(a.action, b.action)
        if with_state:
            np.testing.assert_array_equal(a.state, b.state)
        else:
            assert a.state is None
