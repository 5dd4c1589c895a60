"""torch and jax normalizers agree with the numpy ``Normalizer`` (every mode, mask and clip setting)."""

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from gen import make_episodes
from reference import chunks

from stepnorm.normalize import MODES, Normalizer
from stepnorm.stats import AccumulatorSpec, ChunkStatsAccumulator

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")

from stepnorm import jax_norm  # noqa: E402  (after the optional-dependency skips)
from stepnorm.torch_norm import Normalize, Unnormalize  # noqa: E402

H = 8
Q = [0.01, 0.99]


def _stats(episodes, horizon=H, delta_mask=None):
    acc = ChunkStatsAccumulator(AccumulatorSpec(horizon, delta_mask), "t")
    for a, s in episodes:
        acc.add_episode(a, s)
    out = acc.finalize().to_dict(Q)["action"]
    return out["global"], out["per_timestep"]


@pytest.fixture(scope="module")
def generated():
    """Generated data with a constant (degenerate) dim 2, plus chunks that leave the range."""
    episodes = make_episodes(seed=41, n=60, dim=5, min_len=H, max_len=40)
    for a, _ in episodes:
        a[:, 2] = 3.0
    x = chunks(episodes, H)[0] * 1.5  # some values fall outside [min, max]: clipping matters
    return _stats(episodes), x.astype(np.float32)


@pytest.fixture(scope="module")
def real(real_data):
    """so101 (LeRobot v3.0) with delta actions on the arm dims, read straight from parquet."""
    (path,) = (real_data / "so101_record_test_lerobot_v30").glob("data/chunk-*/*.parquet")
    table = pq.read_table(path).to_pydict()
    action, state = np.array(table["action"], np.float64), np.array(table["observation.state"], np.float64)
    ep = np.array(table["episode_index"])
    episodes = [(action[ep == e], state[ep == e]) for e in np.unique(ep)]
    delta = [True] * 5 + [False]
    return _stats(episodes, H, delta), chunks(episodes, H, delta)[0].astype(np.float32)


MASKS = {"none": None, "gripper_off": [True, True, True, True, False]}
CLIPS = [None, False, True]


def _check_all(stats, x, mode, mask, clip, rtol=2e-5):
    g, pt = stats
    ref = Normalizer(g, pt, mode=mode, mask=mask, clip=clip)
    tn, tu = Normalize.from_normalizer(ref), Unnormalize.from_normalizer(ref)
    jp = jax_norm.params_from_normalizer(ref)
    jit_n, jit_u = jax.jit(jax_norm.normalize), jax.jit(jax_norm.unnormalize)
    scale = np.abs(ref.normalize(x)).max() + 1
    for label, xi, chunked in [("chunk", x, None), ("short chunk", x[:, : H // 2], True), ("global", x[:, 0], False)]:
        y_ref = ref.normalize(xi, chunked=chunked)
        y_t = tn(torch.from_numpy(xi), chunked=chunked).numpy()
        y_j = np.asarray(jit_n(jp, xi) if chunked is None else jax_norm.normalize(jp, xi, chunked=chunked))
        assert y_t.dtype == y_j.dtype == np.float32
        np.testing.assert_allclose(y_t, y_ref, rtol=rtol, atol=rtol * scale, err_msg=f"torch normalize {label}")
        np.testing.assert_allclose(y_j, y_ref, rtol=rtol, atol=rtol * scale, err_msg=f"jax normalize {label}")
        x_ref = ref.unnormalize(y_ref, chunked=chunked)
        x_t = tu(torch.from_numpy(y_ref), chunked=chunked).numpy()
        x_j = np.asarray(jit_u(jp, y_ref) if chunked is None else jax_norm.unnormalize(jp, y_ref, chunked=chunked))
        big = np.abs(x_ref).max() + 1
        np.testing.assert_allclose(x_t, x_ref, rtol=rtol, atol=rtol * big, err_msg=f"torch unnormalize {label}")
        np.testing.assert_allclose(x_j, x_ref, rtol=rtol, atol=rtol * big, err_msg=f"jax unnormalize {label}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("clip", CLIPS)
def test_generated_equals_numpy(generated, mode, mask, clip):
    stats, x = generated
    _check_all(stats, x, mode, MASKS[mask], clip)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("mask", [None, [True] * 5 + [False]])
@pytest.mark.parametrize("clip", CLIPS)
def test_real_equals_numpy(real, mode, mask, clip):
    stats, x = real
    _check_all(stats, x, mode, mask, clip)


def test_degenerate_dims_and_mask_pass_through(generated):
    stats, x = generated
    norm = Normalize.from_stats(*stats, mode="mean_std", mask=MASKS["gripper_off"])
    y = norm(torch.from_numpy(x)).numpy()
    assert np.isfinite(y).all() and (y[..., 2] == 0).all()  # constant dim: 0, never x / ~0
    np.testing.assert_array_equal(y[..., 4], x[..., 4])
    back = Unnormalize.from_stats(*stats, mode="mean_std", mask=MASKS["gripper_off"])(torch.from_numpy(y)).numpy()
    np.testing.assert_array_equal(back[..., 2], 3.0)


def test_empty_positions_match_numpy():
    episodes = make_episodes(seed=42, n=10, dim=3, min_len=1, max_len=4)
    g, pt = _stats(episodes, horizon=6)
    ref = Normalizer(g, pt, mode="q01_q99", allow_empty_positions=True)
    x = np.random.default_rng(0).normal(size=(4, 6, 3))
    y_t = Normalize.from_normalizer(ref)(torch.from_numpy(x)).numpy()
    y_j = np.asarray(jax_norm.normalize(jax_norm.params_from_normalizer(ref, dtype=np.float32), x.astype(np.float32)))
    np.testing.assert_allclose(y_t, ref.normalize(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y_j, ref.normalize(x), rtol=1e-5, atol=1e-5)
    assert (y_t[:, 4:] == 0).all()
    back = Unnormalize.from_normalizer(ref)(torch.from_numpy(y_t)).numpy()
    assert np.isnan(back[:, 4:]).all() and np.isfinite(back[:, :4]).all()
    with pytest.raises(ValueError, match="have no statistics"):
        Normalize.from_stats(g, pt)


def test_horizon_longer_than_statistics_is_an_error(generated):
    stats, x = generated
    longer = np.concatenate([x, x[:, :1]], axis=1)
    with pytest.raises(ValueError, match="longer than the statistics' horizon 8"):
        Normalize.from_stats(*stats)(torch.from_numpy(longer))
    with pytest.raises(ValueError, match="longer than the statistics' horizon 8"):
        Unnormalize.from_stats(*stats)(torch.from_numpy(longer))
    with pytest.raises(ValueError, match="longer than the statistics' horizon 8"):
        jax_norm.normalize(jax_norm.params_from_stats(*stats), longer)
    with pytest.raises(ValueError, match="longer than the statistics' horizon 8"):
        jax.jit(jax_norm.unnormalize)(jax_norm.params_from_stats(*stats), longer)


def test_wrong_dims_and_global_only(generated):
    (g, pt), x = generated
    with pytest.raises(ValueError, match="5 dims"):
        Normalize.from_stats(g, pt)(torch.zeros(2, H, 3))
    with pytest.raises(ValueError, match="per-timestep"):
        Normalize.from_stats(g)(torch.from_numpy(x), chunked=True)
    with pytest.raises(ValueError, match="per-timestep"):
        jax_norm.normalize(jax_norm.params_from_stats(g), x, chunked=True)
    # without per-timestep statistics, [..., D] inputs use the global ones by default
    y = Normalize.from_stats(g, mode="min_max")(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, Normalizer(g, mode="min_max").normalize(x), rtol=1e-5, atol=1e-6)


def test_state_dict_round_trip(generated, tmp_path):
    stats, x = generated
    norm = Normalize.from_stats(*stats, mode="mean_std", mask=MASKS["gripper_off"], clip=True, clip_value=2.5)
    assert {"global_center", "per_timestep_scale", "per_timestep_active", "clip_bound"} <= set(norm.state_dict())
    torch.save(norm.state_dict(), tmp_path / "norm.pt")
    loaded = torch.load(tmp_path / "norm.pt")
    xt = torch.from_numpy(x)
    # into a module built from other statistics (what a checkpoint restore does) ...
    other = Normalize.from_stats(*_stats(make_episodes(seed=1, n=20, dim=5, min_len=H)), mode="min_max")
    other.load_state_dict(loaded)
    torch.testing.assert_close(other(xt), norm(xt))
    assert other(xt)[..., :4].abs().max() == 2.5  # dim 4 is masked off and passes through
    # ... and from the state dict alone (inference without the artifact)
    rebuilt = Unnormalize.from_state_dict(loaded)
    assert rebuilt.horizon == H
    inner = torch.from_numpy(x).clamp(-1, 1) * 0.1
    keep = [0, 1, 3, 4]  # dim 2 is constant: it unnormalizes to its center, not to the input
    torch.testing.assert_close(rebuilt(norm(inner))[..., keep], inner[..., keep], rtol=1e-5, atol=1e-5)
    buf = io.BytesIO()
    torch.save(Normalize.from_stats(stats[0]).state_dict(), buf)
    buf.seek(0)
    assert Normalize.from_state_dict(torch.load(buf)).horizon is None


def test_dtype_and_device_moves(generated):
    (g, pt), x = generated
    ref = Normalizer(g, pt, mode="q01_q99", clip=False)
    x64 = x.astype(np.float64)
    moved = Normalize.from_normalizer(ref).to(torch.float64).to("cpu")
    assert moved.per_timestep_center.dtype == torch.float64 and moved.per_timestep_active.dtype == torch.bool
    assert moved.clip_bound.dtype == torch.float64 and moved.per_timestep_center.device.type == "cpu"
    y = moved(torch.from_numpy(x64))
    assert y.dtype == torch.float64
    np.testing.assert_allclose(y.numpy(), ref.normalize(x64), rtol=1e-6, atol=1e-6)  # float32-rounded statistics
    # built in float64, the module matches numpy to float64 precision and round-trips exactly
    exact = Normalize.from_normalizer(ref, dtype=torch.float64)
    y = exact(torch.from_numpy(x64))
    np.testing.assert_allclose(y.numpy(), ref.normalize(x64), rtol=1e-12, atol=1e-12)
    back = Unnormalize.from_normalizer(ref, dtype=torch.float64)(y)
    np.testing.assert_allclose(back.numpy(), ref.unnormalize(ref.normalize(x64)), rtol=1e-12, atol=1e-12)
    # float32 buffers with a float64 input compute in float64 (no silent loss of the input's precision)
    assert Normalize.from_normalizer(ref)(torch.from_numpy(x64)).dtype == torch.float64
    # integer input comes back floating
    assert Normalize.from_normalizer(ref)(torch.ones(2, H, 5, dtype=torch.int64)).dtype == torch.float32


def test_jax_params_are_a_pytree_and_jit(generated):
    stats, x = generated
    params = jax_norm.params_from_stats(*stats, mode="q01_q99")
    leaves = jax.tree_util.tree_leaves(params)
    assert len(leaves) == 11  # 5 global + 5 per-timestep + clip bound
    f = jax.jit(lambda p, a: jax_norm.unnormalize(p, jax_norm.normalize(p, a)))
    inside = np.clip(x, -1, 1) * 0.01 + np.asarray(stats[1]["q01"] + stats[1]["q99"], np.float32) / 2
    keep = [0, 1, 3, 4]  # dim 2 is constant: it unnormalizes to its center
    np.testing.assert_allclose(np.asarray(f(params, inside))[..., keep], inside[..., keep], rtol=1e-5, atol=1e-5)
    g = jax.jit(jax_norm.normalize, static_argnames="chunked")
    expected = Normalizer(*stats, mode="q01_q99").normalize(x[:, 0], chunked=False)
    np.testing.assert_allclose(np.asarray(g(params, x[:, 0], chunked=False)), expected, rtol=1e-5, atol=1e-5)


def test_two_dim_input_is_ambiguous_in_torch_and_jax(generated):
    """The shape rule is the numpy one: [B, D] with per-timestep statistics needs chunked=."""
    stats, x = generated
    ref = Normalizer(*stats, mode="q01_q99")
    single = x[:3, 0]
    with pytest.raises(ValueError, match="ambiguous"):
        Normalize.from_normalizer(ref)(torch.from_numpy(single))
    with pytest.raises(ValueError, match="ambiguous"):
        jax_norm.normalize(jax_norm.params_from_normalizer(ref), single)
    y = Normalize.from_normalizer(ref)(torch.from_numpy(single), chunked=False).numpy()
    np.testing.assert_allclose(y, ref.normalize(single, chunked=False), rtol=1e-5, atol=1e-6)
