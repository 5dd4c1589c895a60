"""Validators and the gate: planted sim/real mismatches at several strengths, clean pairs, real data.

Artifacts are built straight from generated episodes (accumulators + samples, no Beam) over the
sample mixture's TFDS directories, so dataset fingerprints are real and stale_stats is exact.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from stepnorm.artifact import read_artifact, write_artifact
from stepnorm.artifact import accumulate, artifact_from_accumulators
from stepnorm.config import parse_config
from stepnorm.errors import ConfigError
from stepnorm.samples import DatasetSample
from stepnorm.sources import dataset_fingerprint
from stepnorm.sources.base import Episode
from stepnorm.validators import check_image_batch, classify_ranges, run_gate
from stepnorm.validators.drift import js_distance
from stepnorm.validators.expectations import load_suite

IMAGE_KEY = "observation/image"


def _frame(rng, blank=False, bits=8):
    import tensorflow as tf

    if bits == 16:
        img = rng.integers(0, 65535, size=(16, 16, 3), dtype=np.uint16)
    else:
        img = np.zeros((16, 16, 3), np.uint8) if blank else rng.integers(20, 236, size=(16, 16, 3), dtype=np.uint8)
    return tf.io.encode_png(img).numpy()


def make_episodes(seed, n=60, half_width=0.1, gripper="binary", grip_fn=None, length=(30, 50), dim0_shift=0.0,
                  spike_dim=None):
    """Pick-and-place-like episodes: action [T, 7] (pos delta, rot, gripper), state [T, 8]."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        t_len = int(rng.integers(length[0], length[1] + 1))
        pos = rng.uniform(-half_width, half_width, size=(t_len, 3)) + np.array([0.25, 0.0, 0.15])
        phase = np.linspace(0, 1, t_len)
        if grip_fn is not None:
            grip = grip_fn(rng, phase)
        elif gripper == "binary":
            grip = (phase > rng.uniform(0.3, 0.7)).astype(float)
        else:
            grip = np.clip(np.tanh(6 * (phase - 0.5)) + rng.normal(0, 0.05, t_len), -1, 1)
        action = np.concatenate([rng.normal(0, 0.01, (t_len, 3)), rng.normal(0, 0.05, (t_len, 3)), grip[:, None]], 1)
        action[:, 0] += dim0_shift * 0.01
        if spike_dim is not None:
            dim, scale = spike_dim
            action[:, dim] = rng.normal(0, scale, t_len) + (rng.random(t_len) < 0.005) * 1.0
        state = np.concatenate([pos, rng.normal(0, 0.1, (t_len, 3)), grip[:, None], np.zeros((t_len, 1))], 1)
        out.append((action, state))
    return out


def build(tmp_path, sample_dir, sim, real, *, sim_frames=None, real_frames=None, extra_datasets=(), doc_edit=None,
          **cfg_extra):
    """Write an artifact (stats + samples) for generated sim/real episodes; returns (cfg, artifact)."""
    common = {"format": "rlds", "action_key": "action", "state_key": "observation/state", "image_keys": [IMAGE_KEY],
              "gripper_dims": [6], "position_dims": [0, 1, 2]}
    raw = {"horizon": 4, "quantiles": [0.01, 0.5, 0.99], "model": {"image_input": "uint8"},
           "normalization": {"action": {"mode": "q01_q99", "mask": [True] * 6 + [False]}, "state": {"mode": "mean_std"}},
           "datasets": [{"name": "sim", "path": str(sample_dir / "sim_pick" / "1.0.0"), "domain": "sim", **common},
                        {"name": "real", "path": str(sample_dir / "real_pick" / "1.0.0"), "domain": "real", **common},
                        *extra_datasets]}
    raw.update(cfg_extra)
    cfg = parse_config(raw, where=str(tmp_path / "cfg.yaml"))
    episodes = {"sim": sim, "real": real}
    rng = np.random.default_rng(7)
    frames = {"sim": sim_frames, "real": real_frames}
    accs, samples = {}, {}
    for ds in cfg.datasets:
        eps = episodes.get(ds.name) or real
        accs[ds.name] = accumulate(cfg, ds.name, [Episode(ds.name, "gen", i, a, s) for i, (a, s) in enumerate(eps)])
        sample = DatasetSample()
        for i, (a, s) in enumerate(eps):
            imgs = frames.get(ds.name)
            frame = imgs(rng, i) if imgs else _frame(rng)
            sample.add_episode(ds.name, i, a, s, {IMAGE_KEY: [frame]} if ds.format == "rlds" else None)
        samples[ds.name] = sample
    fps = {ds.name: dataset_fingerprint(cfg, ds) for ds in cfg.datasets}
    doc = artifact_from_accumulators(cfg, accs, fps)
    if doc_edit:
        doc_edit(doc)
    out = tmp_path / "stats"
    write_artifact(out, doc, {f"{n}-{fps[n]}": a.to_bytes() for n, a in accs.items()},
                   {f"{n}-{fps[n]}": s.to_bytes() for n, s in samples.items()})
    return cfg, read_artifact(out)


def gate(tmp_path, cfg, art, only=None):
    return run_gate(cfg, art, tmp_path / "report", only=only, html=False)


def ids(result, severity=None):
    return {f.id for f in result.findings if severity is None or f.severity == severity}


def findings(result, fid):
    return [f for f in result.findings if f.id == fid]


# -- a clean pair: the whole gate passes -------------------------------------------------------------
def test_clean_pair_passes_every_validator(tmp_path, sample_dir):
    cfg, art = build(tmp_path, sample_dir, make_episodes(1), make_episodes(2))
    result = gate(tmp_path, cfg, art)
    assert result.passed and result.exit_code == 0, [f.message for f in result.findings]
    assert not ids(result, "warning"), [f.message for f in result.findings]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["passed"] and set(report["validators"]) == {"image_scale", "gripper", "workspace", "stats_health",
                                                              "stale_stats", "drift"}
    assert report["tables"]["workspace"]["pairs"]
    assert all(r["success"] for r in report["expectations"] if r["severity"] != "info")


# -- image_scale ----------------------------------------------------------------------------------------
def _lerobot_dir(root: Path, dtype="video"):
    root.mkdir(parents=True, exist_ok=True)
    (root / "meta").mkdir(exist_ok=True)
    (root / "data" / "chunk-000").mkdir(parents=True, exist_ok=True)
    (root / "data" / "chunk-000" / "file-000.parquet").write_bytes(b"PAR1")
    (root / "meta" / "info.json").write_text(json.dumps({"codebase_version": "v3.0", "features": {
        "observation.images.cam": {"dtype": dtype, "shape": [3, 64, 64]}, "action": {"dtype": "float32"}}}))
    return root


def _lerobot_entry(path, domain="real"):
    return {"name": "lerobot_real", "format": "lerobot", "path": str(path), "domain": domain,
            "image_keys": ["observation.images.cam"]}


@pytest.mark.parametrize("model_input, loader_scale, expected", [
    ("uint8", None, {"image_scale.double_normalization", "image_scale.mixed_scales"}),  # seed 004's offline buffer
    ("float01", None, {"image_scale.mixed_scales"}),  # the RLDS sets stay uint8: still two scales in one mixture
    ("uint8", "uint8", set()),  # a loader that keeps raw pixels: one scale, matches the encoder
])
def test_lerobot_loader_scale_against_model_input(tmp_path, sample_dir, model_input, loader_scale, expected):
    lr = _lerobot_dir(tmp_path / "lr")
    extra = {"validators": {"image_scale": {"lerobot_loader_scale": loader_scale}}} if loader_scale else {}
    cfg, art = build(tmp_path, sample_dir, make_episodes(1), make_episodes(2), extra_datasets=[_lerobot_entry(lr)],
                     model={"image_input": model_input}, **extra)
    result = gate(tmp_path, cfg, art, only=["image_scale"])
    assert ids(result, "error") == expected, [f.message for f in result.findings]
    for f in findings(result, "image_scale.double_normalization"):
        assert f.datasets == ["lerobot_real"] and "float 0..1" in f.message and "uint8" in f.message
    for f in findings(result, "image_scale.mixed_scales"):
        assert set(f.datasets) == {"sim", "real", "lerobot_real"} and f.value == 2


@pytest.mark.parametrize("blank_every, warned", [(1, True), (3, False), (5, False)])
def test_blank_camera(tmp_path, sample_dir, blank_every, warned):
    """All frames blank (Bridge image_3) -> warning; a third or a fifth of the episodes blank stays
    under the 50% threshold. (Half of them would sit on it: the 16 sampled frames' share falls on
    either side depending on which episodes the sample picks.)"""
    cfg, art = build(tmp_path, sample_dir, make_episodes(1), make_episodes(2),
                     real_frames=lambda rng, i: _frame(rng, blank=i % blank_every == 0))
    result = gate(tmp_path, cfg, art, only=["image_scale"])
    assert result.passed
    assert ("image_scale.blank_camera" in ids(result, "warning")) == warned


def test_unrecognized_and_undecodable_frames(tmp_path, sample_dir):
    cfg, art = build(tmp_path, sample_dir, make_episodes(1), make_episodes(2),
                     sim_frames=lambda rng, i: _frame(rng, bits=16), real_frames=lambda rng, i: b"not an image")
    result = gate(tmp_path, cfg, art, only=["image_scale"])
    assert {"image_scale.unrecognized_scale", "image_scale.no_frames"} <= ids(result, "warning")
    assert result.passed  # neither is a scale the mixture disagrees on


def _scaled(kind):
    x = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3)).astype(np.uint8)
    x[0, 0, 0] = (0, 255, 0)
    f = x.astype(np.float32) / 255
    return {"uint8": x, "float_0_255": x.astype(np.float32), "float01": f, "float01_255": f / 255,
            "seed004": f / 255 - 0.5, "float_minus1_1": f * 2 - 1, "float_minus05_05": f - 0.5,
            "imagenet": (f - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])}[kind]


@pytest.mark.parametrize("kind, scale", [
    ("uint8", "uint8"), ("float_0_255", "float_0_255"), ("float01", "float01"), ("float01_255", "float01_255"),
    ("seed004", "float01_255"), ("float_minus1_1", "float_minus1_1"), ("float_minus05_05", "float_minus05_05"),
    ("imagenet", "imagenet")])
def test_classification_of_every_scale(kind, scale):
    x = _scaled(kind)
    assert str(classify_ranges(x.min(), x.max(), x.dtype.kind == "f")) == scale


def test_classification_borderlines():
    got = classify_ranges([0, 0, 0, -1.0005, -1.01, 0, 0, 0], [1.0005, 1.01, 255.0, 1, 1, 1 / 255, 300, 0],
                          [True, True, True, True, True, True, False, True])
    assert list(got) == ["float01", "float_0_255", "float_0_255", "float_minus1_1", "imagenet", "float01_255",
                         "other", "blank"]
    assert classify_ranges(np.nan, 1.0, True) == "other"


@pytest.mark.parametrize("kind, expect, ok, why", [
    ("uint8", "uint8", True, ""), ("float_0_255", "uint8", True, ""),
    ("float01", "uint8", False, "normalize it again"),  # seed 004's live path
    ("seed004", "float_minus05_05", False, "divided by 255 twice"),  # seed 004 at the encoder
    ("uint8", "float01", False, "never normalized"), ("float01", "float01", True, ""),
    ("float_minus05_05", "float_minus1_1", True, ""), ("imagenet", "imagenet", True, ""),
    ("float01", "float_minus1_1", False, "looks like float 0..1"),
])
def test_check_image_batch(kind, expect, ok, why):
    x = _scaled(kind)
    if ok:
        assert check_image_batch(x, expect=expect) in ("uint8", "float_0_255", "float01", "float_minus1_1",
                                                       "float_minus05_05", "imagenet")
    else:
        with pytest.raises(ValueError, match=why) as err:
            check_image_batch(x, expect=expect, name="obs.images.wrist")
        assert "obs.images.wrist" in str(err.value) and "min" in str(err.value)


def test_check_image_batch_torch_and_edge_cases():
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(_scaled("float01"))
    assert check_image_batch(x, expect="float01") == "float01"
    with pytest.raises(ValueError, match="float 0..1"):
        check_image_batch(x, expect="uint8")
    assert check_image_batch(np.zeros((2, 8, 8, 3), np.float32), expect="uint8") == "blank"
    with pytest.raises(ValueError):
        check_image_batch(np.zeros((2, 8, 8, 3), np.float32), expect="uint8", allow_blank=False)
    with pytest.raises(ValueError, match="expect must be"):
        check_image_batch(x, expect="bgr")


# -- gripper ----------------------------------------------------------------------------------------------
def _binary_with_transitions(share):
    def grip(rng, phase):
        g = (phase > 0.5).astype(float)
        mid = rng.random(len(phase)) < share
        g[mid] = rng.uniform(0.05, 0.95, mid.sum())
        return g
    return grip


@pytest.mark.parametrize("sim_kwargs, expected", [
    ({"gripper": "continuous"}, "gripper.continuous_vs_quantized"),  # seed 004: [-1, 1] vs {0, 1}
    ({"grip_fn": _binary_with_transitions(0.3)}, "gripper.continuous_vs_quantized"),
    ({"grip_fn": _binary_with_transitions(0.04)}, "gripper.continuous_vs_quantized"),  # borderline: 4% between
    ({"grip_fn": lambda rng, p: np.where(p > 0.5, 1.0, -1.0)}, "gripper.levels_differ"),  # {-1, 1} vs {0, 1}
    ({"grip_fn": lambda rng, p: (p > 0.5) + rng.normal(0, 2e-4, len(p))}, None),  # float noise below level_tol
    ({"grip_fn": _binary_with_transitions(0.005)}, None),  # 0.5% transition frames: under the 2% threshold
    ({}, None),
])
def test_gripper_quantized_real(tmp_path, sample_dir, sim_kwargs, expected):
    cfg, art = build(tmp_path, sample_dir, make_episodes(1, **sim_kwargs), make_episodes(2))
    result = gate(tmp_path, cfg, art, only=["gripper"])
    assert ids(result, "error") == ({expected} if expected else set()), [f.message for f in result.findings]
    if expected:
        (f,) = result.findings
        assert f.datasets == ["sim", "real"] and f.dims == [6] and "{0, 1}" in f.message and "0.5" in f.message


@pytest.mark.parametrize("sim_high, flagged", [(1.0, False), (1.05, False), (1.2, True), (2.0, True)])
def test_gripper_continuous_ranges(tmp_path, sample_dir, sim_high, flagged):
    """Both continuous: bounds off by more than 10% of the real range are an error."""
    real = make_episodes(2, grip_fn=lambda rng, p: rng.uniform(0, 1, len(p)))
    sim = make_episodes(1, grip_fn=lambda rng, p: rng.uniform(0, sim_high, len(p)))
    cfg, art = build(tmp_path, sample_dir, sim, real)
    result = gate(tmp_path, cfg, art, only=["gripper"])
    assert ("gripper.range_differs" in ids(result, "error")) == flagged, [f.message for f in result.findings]


# -- workspace --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sim_half_width, severity", [
    (0.1, None), (0.099, None), (0.1025, "warning"), (0.11, "error"), (0.25, "error")])
def test_workspace(tmp_path, sample_dir, sim_half_width, severity):
    cfg, art = build(tmp_path, sample_dir, make_episodes(1, half_width=sim_half_width), make_episodes(2))
    result = gate(tmp_path, cfg, art, only=["workspace"])
    got = findings(result, "workspace.sim_outside_real")
    if severity is None:
        assert not got, [f.message for f in got]
        return
    assert {f.severity for f in got} == {severity} and sorted(f.dims[0] for f in got) == [0, 1, 2]
    # the reported share is the fraction of sim samples outside the real [min, max]
    sample, real = art.sample("sim").state, art.stats("state", "global", "real")
    for f in got:
        d = f.dims[0]
        expect = np.mean((sample[:, d] < real["min"][d]) | (sample[:, d] > real["max"][d]))
        assert f.value == pytest.approx(expect) and f"{100 * expect:.1f}%" in f.message


# -- stats_health -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("noise, severity", [(0.0, "error"), (1e-4, "error"), (0.005, "warning"), (0.05, None)])
def test_tiny_quantile_range(tmp_path, sample_dir, noise, severity):
    """openpi #814: a dim that is ~constant except for 0.5% spikes; q01..q99 is tiny against the spikes."""
    eps = make_episodes(1, spike_dim=(3, noise))
    cfg, art = build(tmp_path, sample_dir, eps, make_episodes(2, spike_dim=(3, noise)))
    result = gate(tmp_path, cfg, art, only=["stats_health"])
    got = [f for f in findings(result, "stats_health.tiny_spread") if f.key == "action" and f.dims == [3]]
    assert [f.severity for f in got] == ([severity] if severity else []), [f.message for f in result.findings]
    if noise == 0.0:
        assert "signal is lost" in got[0].message


def test_non_finite_statistics(tmp_path, sample_dir):
    def poison(doc):
        doc["combined"]["action"]["global"]["std"][2] = None
        doc["datasets"]["real"]["state"]["global"]["mean"][1] = None
    cfg, art = build(tmp_path, sample_dir, make_episodes(1), make_episodes(2), doc_edit=poison)
    result = gate(tmp_path, cfg, art, only=["stats_health"])
    got = {(f.datasets[0] if len(f.datasets) == 1 else "combined", f.key, f.dims[0])
           for f in findings(result, "stats_health.non_finite")}
    assert got == {("combined", "action", 2), ("real", "state", 1)} and not result.passed


@pytest.mark.parametrize("longest, horizon, empty", [(5, 8, [5, 6, 7]), (7, 8, [7]), (8, 8, [])])
def test_empty_chunk_positions(tmp_path, sample_dir, longest, horizon, empty):
    eps = make_episodes(1, length=(2, longest))
    cfg, art = build(tmp_path, sample_dir, eps, make_episodes(2, length=(2, longest)), horizon=horizon)
    result = gate(tmp_path, cfg, art, only=["stats_health"])
    got = findings(result, "stats_health.empty_chunk_positions")
    assert [f.value for f in got] == ([len(empty)] if empty else [])
    if empty:
        assert f"Use a horizon of at most {longest}" in got[0].hint and str(empty) in got[0].message
    # padded share = 1 - sum(count[k]) / (H * num_steps), checked against the artifact
    row = next(r for r in json.loads((tmp_path / "report" / "report.json").read_text())["tables"]["stats_health"]["chunks"]
               if r["block"] == "combined")
    count = art.stats("action", "per_timestep")["count"]
    assert row["padded_share"] == pytest.approx(1 - count.sum() / (horizon * art.block()["num_steps"]))
    assert ("stats_health.padded_share" in ids(result)) == (row["padded_share"] > 0.5)


def _walk_episodes(seed, step, noise, n=150):
    """Action dim 0 targets the next position of a random walk (plus noise); state dim 0 is the position."""
    out = []
    for action, state in make_episodes(seed, n=n):
        rng = np.random.default_rng(seed + len(out))
        pos = 0.25 + np.cumsum(rng.normal(0, step, len(action) + 1)) if step else np.full(len(action) + 1, 0.25)
        action[:, 0] = pos[1:] + rng.normal(0, noise, len(action))
        state[:, 0] = pos[:-1]
        out.append((action, state))
    return out


@pytest.mark.parametrize("step, noise, severity", [(0.0, 0.03, None), (0.01, 0.03, "info"), (0.01, 0.0, "warning")])
def test_per_timestep_gap(tmp_path, sample_dir, step, noise, severity):
    """Delta actions (relative to the state) whose spread grows with k: per-timestep statistics matter.

    std_k = sqrt((k + 1) step^2 + noise^2): at k = 7 the gap |std_k / std - 1| is 0 (no walk),
    0.30 (walk under noise: info) and 1.83 (pure walk: warning).
    """
    cfg, art = build(tmp_path, sample_dir, _walk_episodes(1, step, noise), _walk_episodes(2, step, noise), horizon=8,
                     delta_mask=[True] + [False] * 6)
    result = gate(tmp_path, cfg, art, only=["stats_health"])
    got = findings(result, "stats_health.per_timestep_differs")
    assert [f.severity for f in got] == ([severity] if severity else []), [f.message for f in result.findings]
    if severity:
        assert "dim 0" in got[0].message


def _drift_episodes(seed, velocity, n=120):
    """Action dim 0 commands the next position of a point moving at a per-episode velocity
    ``v ~ N(0, velocity)`` (plus noise 0.001); state dim 0 is the position. As delta actions,
    ``a_{t+k} - s_t = (k + 1) v + noise``: the spread grows ~linearly with k, as in the point-mass
    task of docs/evidence.md."""
    out = []
    for i, (action, state) in enumerate(make_episodes(seed, n=n)):
        rng = np.random.default_rng([seed, i])
        v = rng.normal(0, velocity) if velocity else 0.0
        pos = rng.uniform(-0.3, 0.3) + v * np.arange(len(action) + 1)
        action[:, 0] = pos[1:] + rng.normal(0, 0.001, len(action))
        state[:, 0] = pos[:-1]
        out.append((action, state))
    return out


def _reference_spreads(episode_sets, horizon, dim):
    """Two-pass float64 std of ``a_{t+k} - s_t`` (valid entries only) per k, and pooled over all k."""
    per_k = [[] for _ in range(horizon)]
    for eps in episode_sets:
        for action, state in eps:
            for k in range(horizon):
                per_k[k].append(action[k:, dim] - state[: len(action) - k, dim])
    per_k = [np.concatenate(v) for v in per_k]
    pooled = np.concatenate(per_k)
    return np.array([np.sqrt(np.mean((v - v.mean()) ** 2)) for v in per_k]), np.sqrt(np.mean((pooled - pooled.mean()) ** 2))


@pytest.mark.parametrize("velocity, horizon", [(0.0, 16), (0.01, 6), (0.01, 14), (0.01, 24)])
def test_global_norm_loss_weights(tmp_path, sample_dir, velocity, horizon):
    """Planted delta actions whose spread grows with k (or not): the positions table holds the
    pooled / per-position spread ratios and (spread_{H-1} / spread_0)^2 against an independent
    two-pass reference, and the finding's severity follows the suite's thresholds."""
    sim, real = _drift_episodes(1, velocity), _drift_episodes(2, velocity)
    norm = {"action": {"mode": "mean_std", "mask": [True] * 6 + [False]}, "state": {"mode": "mean_std"}}
    cfg, art = build(tmp_path, sample_dir, sim, real, horizon=horizon, delta_mask=[True] + [False] * 6,
                     normalization=norm)
    result = gate(tmp_path, cfg, art, only=["stats_health"])
    table = json.loads((tmp_path / "report" / "report.json").read_text())["tables"]["stats_health"]["positions"]
    row = next(r for r in table if r["block"] == "combined" and r["dim"] == 0)
    spread_k, pooled = _reference_spreads([sim, real], horizon, 0)
    assert row["spread_pooled"] == pytest.approx(pooled, rel=1e-9)
    assert np.allclose(row["ratio_by_k"], pooled / spread_k, rtol=5e-3, atol=0)  # rounded to 3 digits
    ratio = (spread_k[-1] / spread_k[0]) ** 2
    assert row["loss_weight_ratio"] == pytest.approx(ratio, rel=1e-9) and row["last_k"] == horizon - 1
    params = load_suite(None).params["stats_health"]
    expected = ("warning" if ratio > params["loss_weight_ratio_warning"]
                else "info" if ratio > params["loss_weight_ratio_info"] else None)
    got = [f for f in findings(result, "stats_health.global_norm_weights") if f.dims == [0] and len(f.datasets) == 2]
    assert [f.severity for f in got] == ([expected] if expected else []), [f.message for f in result.findings]
    if expected:
        assert "docs/evidence.md" in got[0].message and "(spread_global / spread_k)^2" in got[0].hint
        assert got[0].value == pytest.approx(ratio)


def test_global_norm_loss_weight_cases_cover_every_tier():
    """The planted cases above stay meaningful when the thresholds move: about 1, H^2 = 36, 196, 576."""
    params = load_suite(None).params["stats_health"]
    assert 36 < params["loss_weight_ratio_info"] < 196 < params["loss_weight_ratio_warning"] < 576


def test_absolute_actions_give_no_loss_weight_advice(tmp_path, sample_dir):
    """Absolute actions of the same motion: every chunk position has about the pooled spread."""
    norm = {"action": {"mode": "q01_q99", "mask": [True] * 6 + [False]}, "state": {"mode": "mean_std"}}
    cfg, art = build(tmp_path, sample_dir, _drift_episodes(1, 0.01), _drift_episodes(2, 0.01), horizon=24,
                     normalization=norm)
    result = gate(tmp_path, cfg, art, only=["stats_health"])
    assert not findings(result, "stats_health.global_norm_weights"), [f.message for f in result.findings]
    table = json.loads((tmp_path / "report" / "report.json").read_text())["tables"]["stats_health"]["positions"]
    # one row per masked-on dim of the block the normalizer uses (combined), none for the masked gripper
    assert sorted((r["block"], r["dim"]) for r in table) == [("combined", d) for d in range(6)]
    assert all(0.5 < r["loss_weight_ratio"] < 2 for r in table if r["dim"] == 0)


def test_report_plot_shows_the_spread_ratio(tmp_path, sample_dir):
    """The per-timestep plot carries pooled / spread_k per dim on a second axis (the advice's ratio)."""
    from stepnorm.validators.base import ValidationContext
    from stepnorm.validators.report import per_timestep_figure
    from stepnorm.validators.stats_health import spread_by_position

    norm = {"action": {"mode": "mean_std", "mask": [True] * 6 + [False]}, "state": {"mode": "mean_std"}}
    cfg, art = build(tmp_path, sample_dir, _drift_episodes(1, 0.01), _drift_episodes(2, 0.01), horizon=12,
                     delta_mask=[True] + [False] * 6, normalization=norm)
    ctx = ValidationContext(cfg, art)
    fig = per_timestep_figure(ctx)
    pooled, spread = spread_by_position(ctx, None, "mean_std")
    twins = [ax for ax in fig.axes if ax.get_yscale() == "log"]
    assert len(twins) == 7  # one per action dim
    line = twins[0].get_lines()[0]
    assert np.allclose(line.get_ydata(), pooled[0] / spread[:, 0]) and line.get_ydata()[0] > 5


# -- stale_stats ------------------------------------------------------------------------------------------
def test_stale_stats(tmp_path, sample_dir):
    data = tmp_path / "data"
    shutil.copytree(sample_dir, data)
    cfg, art = build(tmp_path, data, make_episodes(1), make_episodes(2))
    assert not findings(gate(tmp_path, cfg, art, only=["stale_stats"]), "stale_stats.fingerprint_mismatch")
    # a real data file rewritten: only that dataset is named
    shard = sorted((data / "real_pick" / "1.0.0").glob("*train.tfrecord*"))[0]
    shard.write_bytes(shard.read_bytes())
    result = gate(tmp_path, cfg, art, only=["stale_stats"])
    assert [f.datasets for f in result.findings] == [["real"]] and not result.passed
    assert "dataset real changed" in result.findings[0].message
    # a config change (horizon): every dataset's statistics config and the config key change
    raw_cfg = parse_config({**json.loads(json.dumps(art.doc["config"])), "horizon": 6, "validators": {}},
                           where="changed.yaml")
    msgs = [f.message for f in gate(tmp_path, raw_cfg, art, only=["stale_stats"]).findings]
    assert any("the config changed" in m and "horizon" in m for m in msgs) and len(msgs) == 3


def test_stale_stats_dataset_removed(tmp_path, sample_dir):
    cfg, art = build(tmp_path, sample_dir, make_episodes(1), make_episodes(2))
    raw = json.loads(json.dumps(art.doc["config"]))
    raw["datasets"] = [d for d in raw["datasets"] if d["name"] == "real"]
    result = gate(tmp_path, parse_config(raw, where="fewer.yaml"), art, only=["stale_stats"])
    assert any(f.datasets == ["sim"] and "no longer in the config" in f.message for f in result.findings)


# -- drift ------------------------------------------------------------------------------------------------
def test_js_distance_reference():
    rng = np.random.default_rng(0)
    a = rng.normal(size=4000)
    assert js_distance(a, a, 32) == 0.0
    assert js_distance(np.zeros(10), np.ones(10), 8) == 1.0
    assert js_distance(a, rng.normal(size=4000), 32) < 0.1
    # disjoint supports: distance 1
    assert js_distance(a, a + 100, 32) == pytest.approx(1.0)


@pytest.mark.parametrize("shift, flagged", [(0.0, False), (0.3, False), (1.0, True), (3.0, True)])
def test_drift_shift(tmp_path, sample_dir, shift, flagged):
    """Action dim 0 shifted by `shift` standard deviations (std 0.01); JS threshold 0.3 (~0.75 sigma)."""
    cfg, art = build(tmp_path, sample_dir, make_episodes(1, dim0_shift=shift), make_episodes(2))
    result = gate(tmp_path, cfg, art, only=["drift"])
    got = [f for f in findings(result, "drift.js_distance") if f.key == "action" and f.dims == [0]]
    assert bool(got) == flagged and all(f.severity == "warning" for f in result.findings)
    assert result.passed  # drift is a warning by default
    others = [f for f in result.findings if f not in got]
    assert not others, [f.message for f in others]


def test_drift_severity_override_and_pairs(tmp_path, sample_dir):
    overrides = {"drift": {"severity": {"drift.js_distance": "error"}, "pairs": [["real", "sim"]]}}
    cfg, art = build(tmp_path, sample_dir, make_episodes(1, dim0_shift=3.0), make_episodes(2), validators=overrides)
    result = gate(tmp_path, cfg, art, only=["drift"])
    assert not result.passed and result.exit_code == 1
    assert [f.datasets for f in result.findings] == [["real", "sim"]]


@pytest.mark.parametrize("overrides, message", [
    ({"drfit": {}}, "no such validator"), ({"drift": {"js_max": 0.2}}, "unknown threshold"),
    ({"drift": {"severity": {"drift.nope": "error"}}}, "unknown finding"),
    ({"drift": {"severity": {"drift.js_distance": "fatal"}}}, "error, warning or info"),
    ({"drift": {"pairs": [["sim", "nowhere"]]}}, "not a pair of dataset names"),
])
def test_bad_overrides_are_config_errors(tmp_path, sample_dir, overrides, message):
    cfg, art = build(tmp_path, sample_dir, make_episodes(1), make_episodes(2), validators=overrides)
    with pytest.raises(ConfigError, match=message):
        gate(tmp_path, cfg, art)


def test_thresholds_come_from_the_config(tmp_path, sample_dir):
    """The same data passes with a looser workspace threshold: thresholds are data, not code."""
    sim = make_episodes(1, half_width=0.11)
    loose = {"workspace": {"clipped_share_error": 0.5, "clipped_share_warning": 0.5}}
    cfg, art = build(tmp_path, sample_dir, sim, make_episodes(2), validators=loose)
    assert not gate(tmp_path, cfg, art, only=["workspace"]).findings


# -- real datasets ----------------------------------------------------------------------------------------
REAL_LEROBOT = [
    ("so101_record_test_lerobot_v30", "action", "observation.state", ["observation.images.front", "observation.images.top"]),
    ("reachy2_apple_storage_lerobot_v30", "action", "observation.state", ["observation.image"]),
    ("lingzu_open50_lerobot_v30", "actions", "state", ["image"]),
    ("unitree_g1_pick_bottle_lerobot_v21", "action", "observation.state", ["observation.images.cam_high"]),
    ("gr1_sim_picknplace_lerobot_v20_SIM", "action", "observation.state", ["observation.images.ego_view"]),
]
REAL_CHECKS = ["image_scale", "stats_health", "stale_stats"]


@pytest.mark.parametrize("name, action_key, state_key, image_keys", REAL_LEROBOT)
def test_real_lerobot_datasets_pass(tmp_path, real_data, name, action_key, state_key, image_keys):
    """LeRobot policies take float 0..1 images, which is what LeRobot's loader delivers: no errors."""
    from stepnorm.pipelines.stats import run_stats

    cfg = parse_config({"horizon": 10, "model": {"image_input": "float01"}, "datasets": [
        {"name": "d", "format": "lerobot", "path": str(real_data / name), "action_key": action_key,
         "state_key": state_key, "image_keys": image_keys, "domain": "sim" if name.endswith("_SIM") else "real"}]},
        where=name)
    run_stats(cfg, tmp_path / "stats", log=lambda *a: None)
    result = run_gate(cfg, read_artifact(tmp_path / "stats"), tmp_path / "report", only=REAL_CHECKS, html=False)
    assert result.passed and not ids(result, "warning"), [f.message for f in result.findings]
    # the same data behind an encoder built for uint8 input is seed 004's double normalization
    uint8 = parse_config({**json.loads(json.dumps(cfg.resolved())), "model": {"image_input": "uint8"}}, where=name)
    result = run_gate(uint8, read_artifact(tmp_path / "stats"), tmp_path / "report2", only=["image_scale"], html=False)
    assert ids(result, "error") == {"image_scale.double_normalization"}


def test_real_bridge_passes_except_its_black_camera(tmp_path, real_data):
    """Bridge (RLDS): decoded JPEGs are uint8; image_3 is all black in every episode (a true finding)."""
    from stepnorm.config import load_config
    from stepnorm.pipelines.stats import run_stats

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "real_data.yaml")
    run_stats(cfg, tmp_path / "stats", log=lambda *a: None)
    result = run_gate(cfg, read_artifact(tmp_path / "stats"), tmp_path / "report", only=REAL_CHECKS, html=False)
    assert result.passed
    blank = findings(result, "image_scale.blank_camera")
    assert [(f.datasets, f.key, f.value) for f in blank] == [(["bridge"], "observation/image_3", 1.0)]
    cameras = json.loads((tmp_path / "report" / "report.json").read_text())["tables"]["image_scale"]["cameras"]
    assert {r["key"]: r["scale"] for r in cameras if r["dataset"] == "bridge"} == {
        "observation/image_0": "uint8", "observation/image_1": "uint8", "observation/image_2": "uint8",
        "observation/image_3": "blank"}


# -- the CLI end to end -----------------------------------------------------------------------------------
def test_validate_cli_on_the_sample_mixture(tmp_path, sample_dir):
    """`stepnorm validate` computes the stats, fails on the sample's planted gripper/workspace gaps (exit 1)."""
    cli = [sys.executable, "-m", "stepnorm.cli"]
    run = subprocess.run(cli + ["validate", str(sample_dir / "config.yaml"), "--report", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stderr[-2000:]
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    errors = {(f["id"], tuple(f["dims"])) for f in report["findings"] if f["severity"] == "error"}
    assert errors == {("gripper.continuous_vs_quantized", (6,)), ("workspace.sim_outside_real", (0,)),
                      ("workspace.sim_outside_real", (1,)), ("workspace.sim_outside_real", (2,))}
    assert (tmp_path / "r" / "report.html").exists() and (tmp_path / "r" / "stats" / "stats.json").exists()
    # acknowledged in the config (severity overrides): the gate passes on the precomputed stats
    raw = yaml.safe_load((sample_dir / "config.yaml").read_text())
    raw["validators"] = {"gripper": {"severity": {"gripper.continuous_vs_quantized": "warning"}},
                         "workspace": {"clipped_share_error": 0.6}}
    for ds in raw["datasets"]:
        ds["path"] = str(sample_dir / ds["path"])
    (tmp_path / "ack.yaml").write_text(yaml.safe_dump(raw))
    run = subprocess.run(cli + ["validate", str(tmp_path / "ack.yaml"), "--stats", str(tmp_path / "r" / "stats"),
                                "--report", str(tmp_path / "r2")], capture_output=True, text=True, timeout=600)
    # thresholds and severities are gate-only: the statistics stay fresh and the acknowledged gate passes
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "stale_stats.fingerprint_mismatch" not in run.stdout
    # missing artifact: could not run
    run = subprocess.run(cli + ["validate", str(sample_dir / "config.yaml"), "--stats", str(tmp_path / "none"),
                                "--report", str(tmp_path / "r3")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 2 and "no stats artifact" in run.stderr


def test_validator_registry_refuses_a_duplicate_name(monkeypatch):
    """A second function under a taken name is refused (it would silently replace a gate check)."""
    import stepnorm.validators.base as base
    from stepnorm.validators import validator

    monkeypatch.setattr(base, "REGISTRY", dict(base.REGISTRY))
    original = base.REGISTRY["gripper"]

    def clash(ctx):
        return []

    with pytest.raises(ValueError, match=r"validator name 'gripper' is already registered by "
                                         r"stepnorm\.validators\.gripper\.\w+; .*clash needs another name"):
        validator("gripper")(clash)
    assert base.REGISTRY["gripper"] is original  # not overwritten

    def fresh(ctx):
        return []

    assert validator("test_fresh")(fresh) is fresh and base.REGISTRY["test_fresh"] is fresh
    # the same definition again (a reloaded module) replaces itself
    def fresh(ctx):  # noqa: F811 -- same module and qualname, as after a reload
        return ["reloaded"]

    assert validator("test_fresh")(fresh) is fresh and base.REGISTRY["test_fresh"] is fresh
    with pytest.raises(TypeError, match="non-empty name"):
        validator("")
