"""Normalizer: round trips for every mode, masks, clipping, degenerate dims, horizons."""

import numpy as np
import pytest
from gen import make_episodes

from stepnorm.normalize import MODES, Normalizer
from stepnorm.stats import AccumulatorSpec, ChunkStatsAccumulator

H = 6
Q = [0.01, 0.99]


@pytest.fixture(scope="module")
def stats():
    episodes = make_episodes(seed=31, n=80, dim=4, min_len=8, max_len=30)
    acc = ChunkStatsAccumulator(AccumulatorSpec(H), "n")
    for a, s in episodes:
        acc.add_episode(a, s)
    out = acc.finalize().to_dict(Q)["action"]
    return out["global"], out["per_timestep"]


def _bounds(stats_block, mode):
    lo, hi = ("min", "max") if mode == "min_max" else ("q01", "q99")
    return stats_block[lo], stats_block[hi]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("mask", [None, [True, False, True, False]])
def test_round_trip_unclipped(stats, mode, mask):
    g, pt = stats
    norm = Normalizer(g, pt, mode=mode, mask=mask, clip=False)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, H, 4)) * 3
    y = norm.normalize(x)
    np.testing.assert_allclose(norm.unnormalize(y), x, rtol=1e-12, atol=1e-12)
    if mask is not None:
        np.testing.assert_array_equal(y[..., 1], x[..., 1])
    # per-timestep formula, row by row
    for k in range(H):
        if mode == "mean_std":
            expected = (x[:, k] - pt["mean"][k]) / pt["std"][k]
        else:
            lo, hi = _bounds({f: v[k] for f, v in pt.items()}, mode)
            expected = 2 * (x[:, k] - lo) / (hi - lo) - 1
        on = np.ones(4, bool) if mask is None else np.asarray(mask)
        np.testing.assert_allclose(y[:, k][:, on], expected[:, on], rtol=1e-12, atol=1e-12)
    # global statistics for [..., D]
    x1 = rng.normal(size=(7, 4))
    y1 = norm.normalize(x1, chunked=False)
    np.testing.assert_allclose(norm.unnormalize(y1, chunked=False), x1, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["min_max", "q01_q99"])
def test_bounds_modes_clip_by_default(stats, mode):
    g, pt = stats
    norm = Normalizer(g, pt, mode=mode)
    y = norm.normalize(np.full((2, H, 4), 1e6))
    assert (y == 1.0).all()
    inside = (np.asarray(_bounds(g, mode)[0]) + np.asarray(_bounds(g, mode)[1])) / 2
    np.testing.assert_allclose(norm.unnormalize(norm.normalize(inside, chunked=False), chunked=False), inside)


def test_mean_std_clip_optional(stats):
    g, pt = stats
    assert Normalizer(g, pt, mode="mean_std").normalize(np.full((H, 4), 1e6), chunked=True).max() > 1e3
    assert Normalizer(g, pt, mode="mean_std", clip=True, clip_value=3.0).normalize(
        np.full((H, 4), 1e6), chunked=True).max() == 3.0


def test_degenerate_dims_never_divide_by_zero():
    g = {"mean": np.array([0.0, 5.0]), "std": np.array([1.0, 0.0]), "min": np.array([-1.0, 5.0]),
         "max": np.array([1.0, 5.0]), "q01": np.array([-1.0, 5.0]), "q99": np.array([1.0, 5.0])}
    for mode in MODES:
        norm = Normalizer(g, mode=mode)
        y = norm.normalize(np.array([[0.5, 5.0], [0.2, 5.0000001]]))
        assert np.isfinite(y).all() and (y[:, 1] == 0).all()
        np.testing.assert_array_equal(norm.unnormalize(np.array([[0.0, 0.7]]))[:, 1], [5.0])


def test_horizon_longer_than_statistics_is_an_error(stats):
    g, pt = stats
    norm = Normalizer(g, pt)
    with pytest.raises(ValueError, match="longer than the statistics"):
        norm.normalize(np.zeros((2, H + 1, 4)))
    # a shorter chunk uses the first rows
    short = norm.normalize(np.zeros((3, 4)), chunked=True)
    np.testing.assert_allclose(short, norm.normalize(np.zeros((H, 4)), chunked=True)[:3])
    with pytest.raises(ValueError, match="longer than the statistics"):
        norm.normalize(np.zeros((H + 1, 4)), chunked=True)


def test_wrong_dims_and_missing_per_timestep(stats):
    g, pt = stats
    with pytest.raises(ValueError, match="4 dims"):
        Normalizer(g, pt).normalize(np.zeros((H, 3)))
    with pytest.raises(ValueError, match="per-timestep"):
        Normalizer(g).normalize(np.zeros((H, 4)), chunked=True)
    with pytest.raises(ValueError, match="mask has 2"):
        Normalizer(g, mask=[True, False])


def test_empty_positions_need_explicit_permission():
    episodes = make_episodes(seed=32, n=10, dim=2, min_len=1, max_len=3)
    acc = ChunkStatsAccumulator(AccumulatorSpec(5), "short")
    for a, s in episodes:
        acc.add_episode(a, s)
    out = acc.finalize().to_dict(Q)["action"]
    with pytest.raises(ValueError, match=r"positions \[3, 4\] have no statistics"):
        Normalizer(out["global"], out["per_timestep"])
    norm = Normalizer(out["global"], out["per_timestep"], allow_empty_positions=True)
    y = norm.normalize(np.ones((5, 2)), chunked=True)
    assert (y[3:] == 0).all() and np.isfinite(y).all()
    assert np.isnan(norm.unnormalize(y, chunked=True)[3:]).all()


def test_float32_in_float32_out(stats):
    g, pt = stats
    x = np.random.default_rng(1).normal(size=(4, H, 4)).astype(np.float32)
    y = Normalizer(g, pt, mode="mean_std").normalize(x)
    assert y.dtype == np.float32


@pytest.mark.parametrize("batch", [1, 3, H, H + 2])
def test_two_dim_input_needs_explicit_chunked(stats, batch):
    """[B, D] is a batch of single actions or one chunk: with per-timestep statistics it is never guessed."""
    g, pt = stats
    norm = Normalizer(g, pt, mode="mean_std")
    x = np.random.default_rng(2).normal(size=(batch, 4))
    with pytest.raises(ValueError, match="ambiguous.*chunked=True.*chunked=False"):
        norm.normalize(x)
    with pytest.raises(ValueError, match="ambiguous"):
        norm.unnormalize(x)
    np.testing.assert_allclose(norm.normalize(x, chunked=False), (x - g["mean"]) / g["std"], rtol=1e-12)
    if batch <= H:
        np.testing.assert_allclose(norm.normalize(x, chunked=True), (x - pt["mean"][:batch]) / pt["std"][:batch],
                                   rtol=1e-12)
    # a single action [D] and batched chunks [B, h, D] are not ambiguous
    np.testing.assert_allclose(norm.normalize(x[0]), (x[0] - g["mean"]) / g["std"], rtol=1e-12)
    # without per-timestep statistics every shape uses the [D] ones
    flat = Normalizer(g, mode="mean_std")
    np.testing.assert_allclose(flat.normalize(x), (x - g["mean"]) / g["std"], rtol=1e-12)
