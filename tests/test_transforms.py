"""Standardization transforms, checked against hand-written numpy expectations."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from stepnorm.errors import ConfigError
from stepnorm.sources.base import Episode
from stepnorm.sources.transforms import (
    TRANSFORMS,
    RelativeToAbsoluteGripper,
    apply_transforms,
    build_transforms,
    transform_identity,
)

WHERE = "config.yaml: datasets[0].transforms"


def episode(seed: int = 0, t: int = 50, d: int = 7, ds: int = 5, dtype=np.float32) -> Episode:
    rng = np.random.default_rng(seed)
    return Episode(
        dataset="synthetic",
        source="synthetic episode",
        index=0,
        action=rng.normal(size=(t, d)).astype(dtype),
        state=rng.normal(size=(t, ds)).astype(dtype),
    )


def run(specs, ep: Episode) -> Episode:
    return apply_transforms(ep, build_transforms(specs, WHERE))


def test_select_dims_reorders_and_drops():
    ep = episode()
    out = run([{"name": "select_dims", "args": {"key": "action", "dims": [6, 0, 2, -2]}}], ep)
    expected = np.stack(
        [ep.action[:, 6], ep.action[:, 0], ep.action[:, 2], ep.action[:, 5]], axis=1
    )
    np.testing.assert_array_equal(out.action, expected)
    np.testing.assert_array_equal(out.state, ep.state)


def test_select_dims_on_state():
    ep = episode()
    out = run([{"name": "select_dims", "args": {"key": "state", "dims": [4, 3]}}], ep)
    np.testing.assert_array_equal(out.state, ep.state[:, [4, 3]])
    np.testing.assert_array_equal(out.action, ep.action)


def test_binarize_gripper():
    ep = episode()
    ep.action[3, 6] = np.nan
    out = run(
        [{"name": "binarize_gripper", "args": {"dim": 6, "threshold": 0.25, "low": -1, "high": 2}}],
        ep,
    )
    g = ep.action[:, 6]
    expected = ep.action.copy()
    expected[:, 6] = [2.0 if x > 0.25 else (x if np.isnan(x) else -1.0) for x in g]
    np.testing.assert_array_equal(out.action, expected)
    assert np.isnan(out.action[3, 6])
    assert out.action.dtype == np.float32


def test_binarize_gripper_defaults_to_zero_one():
    ep = episode()
    out = run([{"name": "binarize_gripper", "args": {"dim": -1, "threshold": 0.0}}], ep)
    assert set(np.unique(out.action[:, 6])) <= {0.0, 1.0}
    np.testing.assert_array_equal(out.action[:, 6], (ep.action[:, 6] > 0).astype(np.float32))


def test_invert_gripper():
    ep = episode(dtype=np.float64)
    out = run([{"name": "invert_gripper", "args": {"dim": 6, "low": 0.0, "high": 0.08}}], ep)
    expected = ep.action.copy()
    expected[:, 6] = 0.08 - ep.action[:, 6]
    np.testing.assert_array_equal(out.action, expected)


def saturating_loop(rel: np.ndarray, start: float, low: float, high: float) -> np.ndarray:
    """Reference: the gripper integrator written as the obvious loop."""
    out, g = [], start
    for r in rel:
        g = min(max(g + r, low), high)
        out.append(g)
    return np.array(out)


def test_relative_to_absolute_gripper_matches_loop():
    ep = episode(t=1000, dtype=np.float64)
    ep.action[:, 6] = np.random.default_rng(1).choice([-1.0, -0.3, 0.0, 0.3, 1.0], size=1000)
    out = run([{"name": "relative_to_absolute_gripper", "args": {"dim": 6, "start": 0.5}}], ep)
    np.testing.assert_allclose(
        out.action[:, 6], saturating_loop(ep.action[:, 6], 0.5, 0.0, 1.0), atol=1e-12
    )
    np.testing.assert_array_equal(out.action[:, :6], ep.action[:, :6])


@pytest.mark.parametrize("t", [1, 2, 3, 7, 8, 9, 257])
def test_saturating_cumsum_all_lengths(t):
    rel = np.random.default_rng(t).normal(scale=0.6, size=t)
    got = RelativeToAbsoluteGripper.saturating_cumsum(rel, 0.2, -0.5, 0.9)
    np.testing.assert_allclose(got, saturating_loop(rel, 0.2, -0.5, 0.9), atol=1e-12)


def test_relative_to_absolute_gripper_redundant_close_does_not_bank_travel():
    ep = episode(t=4, d=1, dtype=np.float64)
    ep.action[:, 0] = [-1.0, -1.0, 1.0, -1.0]  # close, close again (redundant), open, close
    out = run([{"name": "relative_to_absolute_gripper", "args": {"dim": 0}}], ep)
    np.testing.assert_array_equal(out.action[:, 0], [0.0, 0.0, 1.0, 0.0])


def test_scale_single_and_per_dim_factor():
    ep = episode()
    out = run([{"name": "scale", "args": {"key": "action", "dims": [0, 2], "factor": 0.001}}], ep)
    expected = ep.action.copy()
    expected[:, [0, 2]] *= np.float32(0.001)
    np.testing.assert_array_equal(out.action, expected)
    out = run([{"name": "scale", "args": {"key": "state", "dims": [1, 3], "factor": [2, -1]}}], ep)
    expected = ep.state.copy()
    expected[:, 1] *= 2
    expected[:, 3] *= -1
    np.testing.assert_array_equal(out.state, expected)


def test_chain_applies_in_order_and_leaves_input_untouched():
    ep = episode()
    before = ep.action.copy()
    specs = [
        {"name": "select_dims", "args": {"key": "action", "dims": [6, 0]}},
        {"name": "invert_gripper", "args": {"dim": 0}},
        {"name": "scale", "args": {"key": "action", "dims": [1], "factor": 10}},
    ]
    out = run(specs, ep)
    expected = np.stack([1.0 - before[:, 6], before[:, 0] * np.float32(10)], axis=1)
    np.testing.assert_array_equal(out.action, expected)
    np.testing.assert_array_equal(ep.action, before)


@pytest.mark.parametrize(
    "spec, problem",
    [
        ({"name": "flip_everything"}, "unknown transform 'flip_everything'"),
        ({"args": {}}, "mapping with 'name'"),
        ({"name": "scale", "dims": [0]}, "put arguments under 'args'"),
        ({"name": "invert_gripper", "args": {}}, "missing required argument.* dim"),
        ({"name": "invert_gripper", "args": {"dim": 1, "colour": 3}}, "unknown argument.* colour"),
        ({"name": "invert_gripper", "args": {"dim": 1.5}}, "dim must be an integer"),
        (
            {"name": "binarize_gripper", "args": {"dim": 1, "threshold": "half"}},
            "threshold must be a number",
        ),
        (
            {"name": "select_dims", "args": {"key": "image", "dims": [0]}},
            "key must be 'action' or 'state'",
        ),
        ({"name": "select_dims", "args": {"key": "action", "dims": []}}, "non-empty list"),
        ({"name": "select_dims", "args": {"key": "action", "dims": [1, 1]}}, "repeated"),
        (
            {"name": "scale", "args": {"key": "action", "dims": [0, 1], "factor": [1]}},
            "factor has 1 entries",
        ),
        (
            {"name": "relative_to_absolute_gripper", "args": {"dim": 0, "low": 1, "high": 0}},
            "must not exceed",
        ),
        ({"name": "clip", "args": {"dims": [6], "low": 1, "high": 0}}, "must not exceed"),
        ({"name": "insert_constant", "args": {"at": 3, "count": 0}}, "count >= 1"),
        ({"name": "latch_gripper", "args": {"dim": 6, "closing": "up"}}, "closing must be"),
        ({"name": "quat_to_euler", "args": {"dim": -1}}, "dim must be >= 0"),
    ],
)
def test_bad_specs_raise_config_error(spec, problem):
    with pytest.raises(ConfigError, match=problem) as info:
        build_transforms([spec], WHERE)
    assert str(info.value).startswith(f"{WHERE}[0]: ")


def test_out_of_range_dim_and_missing_state_raise_config_error():
    ep = episode(d=7)
    with pytest.raises(ConfigError, match="dim 7 is out of range for action with 7 dims"):
        run([{"name": "invert_gripper", "args": {"dim": 7}}], ep)
    ep.state = None
    with pytest.raises(ConfigError, match="no state key configured"):
        run([{"name": "scale", "args": {"key": "state", "dims": [0], "factor": 2}}], ep)


def test_identity_names_args_and_hashes():
    specs = [
        {"name": "invert_gripper", "args": {"dim": 6}},
        {"name": "binarize_gripper", "args": {"dim": 6, "threshold": 0.5}},
    ]
    identity = transform_identity(build_transforms(specs, WHERE))
    assert identity[0]["name"] == "invert_gripper"
    assert identity[0]["args"] == {"key": "action", "dim": 6, "low": 0.0, "high": 1.0}
    assert identity[0]["source_sha256"] != identity[1]["source_sha256"]
    assert all(len(item["source_sha256"]) == 64 for item in identity)
    # Stable across calls and builds.
    assert transform_identity(build_transforms(specs, WHERE)) == identity


def test_identity_normalizes_equal_arguments():
    a = transform_identity(
        build_transforms([{"name": "invert_gripper", "args": {"dim": 6, "high": 1}}], WHERE)
    )
    b = transform_identity(
        build_transforms([{"name": "invert_gripper", "args": {"dim": 6, "high": 1.0}}], WHERE)
    )
    assert a == b


def test_every_registered_transform_has_a_distinct_hash():
    from stepnorm.sources.transforms import _source_sha256

    hashes = {name: _source_sha256(cls) for name, cls in TRANSFORMS.items()}
    assert set(hashes) == {
        "select_dims",
        "binarize_gripper",
        "invert_gripper",
        "relative_to_absolute_gripper",
        "scale",
        "clip",
        "insert_constant",
        "latch_gripper",
        "quat_to_euler",
    }
    assert len(set(hashes.values())) == len(hashes)


def load_transform_class(tmp_path, monkeypatch, module_name: str, body: str):
    """Define a ``Transform`` subclass in a real module file, so ``inspect`` finds its source."""
    path = tmp_path / f"{module_name}.py"
    path.write_text(
        "from stepnorm.sources.transforms import Transform\n\n\n"
        "class Custom(Transform):\n"
        "    name = 'custom'\n"
        "    params = {}\n\n"
        "    def apply(self, episode):\n"
        f"        {body}\n"
    )
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, module_name, module)  # inspect finds source via sys.modules
    spec.loader.exec_module(module)
    return module.Custom


def test_editing_a_transform_body_changes_its_hash(tmp_path, monkeypatch):
    original = load_transform_class(tmp_path, monkeypatch, "custom_a", "return episode")
    same = load_transform_class(tmp_path, monkeypatch, "custom_b", "return episode")
    edited = load_transform_class(tmp_path, monkeypatch, "custom_c", "return episode  # edited")

    def identity(cls):
        return transform_identity([cls({}, WHERE)])[0]["source_sha256"]

    assert identity(original) == identity(same)
    assert identity(original) != identity(edited)


def octo_rel2abs_loop(actions: np.ndarray) -> np.ndarray:
    """Octo's ``rel2abs_gripper_actions`` (+1 closes, -1 opens; 1 = open, 0 = closed), step by step."""
    thresholded = [1 if a < -0.1 else -1 if a > 0.1 else 0 for a in actions]
    nonzero = [t for t in thresholded if t != 0]
    carry = -nonzero[0] if nonzero else 1
    out = []
    for t in thresholded:
        carry = carry if t == 0 else t
        out.append(carry / 2 + 0.5)
    return np.asarray(out)


@pytest.mark.parametrize("seed", range(20))
def test_latch_gripper_matches_octo_rel2abs(seed):
    rng = np.random.default_rng(seed)
    t = int(rng.integers(1, 60))
    rel = rng.choice([-1.0, -0.5, -0.05, 0.0, 0.05, 0.5, 1.0], size=t, p=[.1, .05, .05, .6, .05, .05, .1])
    ep = episode(t=t)
    ep.action[:, 6] = rel
    out = run([{"name": "latch_gripper", "args": {"dim": 6}}], ep)
    np.testing.assert_array_equal(out.action[:, 6], octo_rel2abs_loop(rel))
    np.testing.assert_array_equal(out.action[:, :6], ep.action[:, :6])
    flipped = episode(t=t)
    flipped.action[:, 6] = -rel
    out = run([{"name": "latch_gripper", "args": {"dim": 6, "closing": "negative", "open": 0, "closed": 1}}],
              flipped)
    np.testing.assert_array_equal(out.action[:, 6], 1 - octo_rel2abs_loop(rel))


def test_latch_gripper_keeps_nan_and_defaults_to_open():
    ep = episode(t=4)
    ep.action[:, 6] = [0.0, np.nan, 0.0, 0.0]
    out = run([{"name": "latch_gripper", "args": {"dim": 6}}], ep)
    np.testing.assert_array_equal(out.action[:, 6], [1.0, np.nan, 1.0, 1.0])


def test_clip_and_insert_constant():
    ep = episode(t=30)
    out = run([{"name": "clip", "args": {"dims": [6, 0], "low": 0, "high": 1}},
               {"name": "insert_constant", "args": {"at": 3, "count": 3, "value": 0.0}}], ep)
    assert out.action.shape == (30, 10) and out.action.dtype == np.float32
    np.testing.assert_array_equal(out.action[:, 0], np.clip(ep.action[:, 0], 0, 1))
    np.testing.assert_array_equal(out.action[:, 1:3], ep.action[:, 1:3])
    np.testing.assert_array_equal(out.action[:, 3:6], 0.0)
    np.testing.assert_array_equal(out.action[:, 6:9], ep.action[:, 3:6])
    np.testing.assert_array_equal(out.action[:, 9], np.clip(ep.action[:, 6], 0, 1))
    appended = run([{"name": "insert_constant", "args": {"at": 7, "value": 1}}], ep)
    np.testing.assert_array_equal(appended.action[:, 7], 1.0)
    with pytest.raises(ConfigError, match="at=8 is past the 7 dims"):
        run([{"name": "insert_constant", "args": {"at": 8}}], ep)


def test_quat_to_euler_matches_scipy_extrinsic_xyz():
    from scipy.spatial.transform import Rotation

    quats = Rotation.random(500, random_state=3).as_quat()  # (x, y, z, w)
    quats = np.concatenate([quats, [[0.0, np.sqrt(0.5), 0.0, np.sqrt(0.5)], [0.0, -np.sqrt(0.5), 0.0, np.sqrt(0.5)]]])
    ep = Episode("q", "q", 0, np.concatenate([np.ones((len(quats), 3)), 2 * quats, np.zeros((len(quats), 1))], axis=1))
    out = run([{"name": "quat_to_euler", "args": {"dim": 3}}], ep)  # unnormalized input is normalized
    assert out.action.shape == (len(quats), 7)
    np.testing.assert_array_equal(out.action[:, :3], 1.0)
    np.testing.assert_array_equal(out.action[:, 6], 0.0)
    got = Rotation.from_euler("xyz", out.action[:, 3:6]).as_matrix()
    np.testing.assert_allclose(got, Rotation.from_quat(quats).as_matrix(), atol=1e-7)  # same rotation, gimbal too
    np.testing.assert_allclose(out.action[:-2, 3:6], Rotation.from_quat(quats[:-2]).as_euler("xyz"), atol=1e-9)
    np.testing.assert_allclose(out.action[-2:, 4], [np.pi / 2, -np.pi / 2], atol=1e-6)


def test_quat_to_euler_zero_quaternion_gives_nan_for_the_finite_check():
    ep = Episode("q", "q", 0, np.array([[0.0, 0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0, 1.0]]))
    out = run([{"name": "quat_to_euler", "args": {"dim": 0}}], ep)
    assert np.isnan(out.action[0, :3]).all() and np.isfinite(out.action[1]).all()


def test_registry_refuses_a_duplicate_name(tmp_path, monkeypatch):
    from stepnorm.sources.transforms import register

    monkeypatch.setattr("stepnorm.sources.transforms.TRANSFORMS", dict(TRANSFORMS))
    import stepnorm.sources.transforms as transforms

    original = transforms.TRANSFORMS["clip"]
    clash = load_transform_class(tmp_path, monkeypatch, "custom_clash", "return episode")
    clash.name = "clip"
    with pytest.raises(ValueError, match=r"transform name 'clip' is already registered by "
                                         r"stepnorm\.sources\.transforms\.Clip; custom_clash\.Custom needs another name"):
        register(clash)
    assert transforms.TRANSFORMS["clip"] is original  # not overwritten
    # a new name registers; the same definition again (a reloaded module) replaces itself
    fresh = load_transform_class(tmp_path, monkeypatch, "custom_fresh", "return episode")
    fresh.name = "custom_fresh"
    assert register(fresh) is fresh
    reloaded = load_transform_class(tmp_path, monkeypatch, "custom_fresh", "return episode")
    reloaded.name = "custom_fresh"
    assert register(reloaded) is reloaded and transforms.TRANSFORMS["custom_fresh"] is reloaded
    nameless = load_transform_class(tmp_path, monkeypatch, "custom_nameless", "return episode")
    del nameless.name
    with pytest.raises(TypeError, match="custom_nameless.Custom has no name"):
        register(nameless)
