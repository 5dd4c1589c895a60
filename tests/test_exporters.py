"""Exporters: each consumer loads the exported file its own way and normalizes like stepnorm.

The consumers' loading and normalize formulas are re-implemented here from ../shared/ANCHORS.md
(openpi, LeRobot, Octo/OpenVLA, robomimic), independently of the exporter code. Each check compares
the consumer's normalize of real actions, per chunk position, with stepnorm's ``Normalizer``.
"""

import hashlib
import json
import warnings

import numpy as np
import pytest
import yaml
from gen import make_episodes
from lerobot_env.plain_reference import read_episodes
from reference import RANK_TOL, chunks, rank_error, two_pass

from stepnorm.artifact import artifact_fingerprint, read_artifact, write_artifact
from stepnorm.cli import main
from stepnorm.artifact import accumulate, artifact_from_accumulators
from stepnorm.config import parse_config
from stepnorm.errors import ArtifactError, StaleArtifactError
from stepnorm.exporters import ExportError, run_export
from stepnorm.normalize import Normalizer
from stepnorm.sources.base import Episode

H = 10


# -- data and artifacts -----------------------------------------------------------------------------
def read_lerobot_episodes(root, action_key="action", state_key="observation.state"):
    """``[(action [T, D], state [T, Ds])]`` straight from the parquet files, grouped by episode_index."""
    return read_episodes(root, action_key, state_key)


def build_artifact(out_dir, datasets, horizon=H, **config):
    """Write an artifact for ``{name: [(action, state)]}`` and return ``(dir, parsed config)``."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    raw = {"horizon": horizon, "datasets": [
        {"name": name, "format": "lerobot", "path": str(out_dir.parent), "weight": 1.0 + i}
        for i, name in enumerate(datasets)]}
    raw.update(config)
    cfg = parse_config(raw, where="cfg.yaml")
    accs = {name: accumulate(cfg, name, [Episode(name, "gen", i, a, s) for i, (a, s) in enumerate(eps)])
            for name, eps in datasets.items()}
    fps = {name: hashlib.sha256(name.encode()).hexdigest() for name in datasets}
    write_artifact(out_dir, artifact_from_accumulators(cfg, accs, fps))
    return out_dir, cfg


def assert_consumer_matches(consumer, ours, denom, eps, active, label):
    """``consumer`` equals ``ours`` on active dims within float32 precision plus the consumer's epsilon.

    The consumer divides by ``denom + eps`` where stepnorm divides by ``denom``: a relative
    difference of ``eps / denom``, allowed for explicitly instead of hidden in a loose tolerance.
    """
    consumer, ours = np.broadcast_arrays(np.asarray(consumer, np.float64), np.asarray(ours, np.float64))
    active = np.broadcast_to(active, ours.shape)
    tol = 2e-5 * (1 + np.abs(ours)) + np.abs(ours) * eps / np.broadcast_to(np.abs(denom), ours.shape)
    bad = active & ~(np.abs(consumer - ours) <= tol)
    assert not bad.any(), f"{label}: {bad.sum()} entries differ, e.g. {consumer[bad][:3]} vs {ours[bad][:3]}"
    assert active.any(), f"{label}: nothing compared"


REAL = {
    # name: delta mask for the first dims (gripper last); so101 exercises per-timestep delta actions
    "so101_record_test_lerobot_v30": True,
    "unitree_g1_pick_bottle_lerobot_v21": False,
}


@pytest.fixture(scope="module", params=sorted(REAL))
def real(request, real_data, tmp_path_factory):
    """(artifact dir, episodes, delta_mask, action mask) for one real LeRobot dataset."""
    name = request.param
    episodes = read_lerobot_episodes(real_data / name)
    dim = episodes[0][0].shape[1]
    delta = [True] * (dim - 1) + [False] if REAL[name] else None
    mask = [True] * (dim - 1) + [False]
    config = {"normalization": {"action": {"mode": "q01_q99", "mask": mask}, "state": {"mode": "mean_std"}}}
    if delta is not None:
        config["delta_mask"] = delta
    art_dir, _ = build_artifact(tmp_path_factory.mktemp(name) / "stats", {name: episodes}, **config)
    return art_dir, episodes, delta, mask


# -- consumers, re-implemented from ANCHORS.md ------------------------------------------------------
def openpi_load(directory, per_timestep):
    """openpi: ``norm_stats.json``; the per-timestep plan swaps in ``actions`` from its own file."""
    stats = json.loads((directory / "norm_stats.json").read_text())["norm_stats"]
    if per_timestep:
        per_timestep_file = json.loads((directory / "norm_stats_actions_per_timestep.json").read_text())
        stats["actions"] = per_timestep_file["norm_stats"]["actions"]
    return {key: {f: np.asarray(v, np.float64) for f, v in s.items()} for key, s in stats.items()}


def openpi_normalize(x, s, use_quantiles):
    d = x.shape[-1]
    if use_quantiles:
        q01, q99 = s["q01"][..., :d], s["q99"][..., :d]
        return (x - q01) / (q99 - q01 + 1e-6) * 2.0 - 1.0
    return (x - s["mean"][..., :d]) / (s["std"][..., :d] + 1e-6)


def lerobot_normalize(x, s, mode, eps=1e-8):
    if mode == "MEAN_STD":
        return (x - s["mean"]) / (s["std"] + eps)
    lo, hi = (s["min"], s["max"]) if mode == "MIN_MAX" else (s["q01"], s["q99"])
    denom = np.where(hi - lo == 0, eps, hi - lo)
    return 2 * (x - lo) / denom - 1


def octo_normalize(x, s):
    mask = np.asarray(s.get("mask", np.ones_like(s["p01"], bool)), bool)
    p01, p99 = np.asarray(s["p01"]), np.asarray(s["p99"])
    return np.where(mask, np.clip(2 * (x - p01) / (p99 - p01 + 1e-8) - 1, -1, 1), x)


def openvla_normalize(x, s):
    q01, q99 = np.asarray(s["q01"]), np.asarray(s["q99"])
    mask = np.asarray(s.get("mask", np.ones_like(q01, bool)), bool)
    y = np.where(mask, np.clip(2 * (x - q01) / (q99 - q01 + 1e-8) - 1, -1, 1), x)
    return np.where(np.asarray(s["min"]) == np.asarray(s["max"]), 0.0, y)


def robomimic_normalize(x, entry):
    return (x - np.asarray(entry["offset"])) / np.asarray(entry["scale"])


# -- every format against stepnorm on real data -----------------------------------------------------
@pytest.mark.filterwarnings("ignore::stepnorm.normalize.DecisionWarning")  # on is forced on unitree (no delta)
@pytest.mark.parametrize("use_quantiles", [False, True])
def test_openpi_matches_stepnorm_per_timestep(real, tmp_path, use_quantiles):
    art_dir, episodes, delta, _ = real
    run_export(art_dir, "openpi", tmp_path, per_timestep=True)
    art = read_artifact(art_dir)
    x, valid = chunks(episodes, H, delta)
    mode = "q01_q99" if use_quantiles else "mean_std"
    # per-timestep file: [H, D] statistics applied row by row to [N, H, D] chunks
    stats = openpi_load(tmp_path, per_timestep=True)
    ours_norm = Normalizer.from_artifact(art, per_timestep=True, mode=mode, clip=False)
    consumer = openpi_normalize(x, stats["actions"], use_quantiles)
    ours = ours_norm.normalize(x)
    p = ours_norm.per_timestep_params
    denom = 2 * p.scale if use_quantiles else p.scale
    for k in range(H):
        rows = valid[:, k]
        assert_consumer_matches(consumer[rows, k], ours[rows, k], denom[k], 1e-6, p.active[k], f"openpi k={k}")
    # global file: openpi's one-vector statistics are the pooled ones, applied to every position
    stats = openpi_load(tmp_path, per_timestep=False)
    pooled = Normalizer(art.stats("action", "pooled"), mode=mode, clip=False)
    consumer = openpi_normalize(x, stats["actions"], use_quantiles)
    ours = pooled.normalize(x, chunked=False)
    g = pooled.global_params
    assert_consumer_matches(consumer[valid], ours[valid], 2 * g.scale if use_quantiles else g.scale, 1e-6, g.active,
                            "openpi pooled")
    # state: global statistics
    state = np.concatenate([s for _, s in episodes])
    ours_state = Normalizer(art.stats("state", "global"), mode=mode, clip=False)
    assert_consumer_matches(openpi_normalize(state, stats["state"], use_quantiles), ours_state.normalize(state),
                            (2 if use_quantiles else 1) * ours_state.global_params.scale, 1e-6,
                            ours_state.global_params.active, "openpi state")


@pytest.mark.filterwarnings("ignore::stepnorm.normalize.DecisionWarning")  # on is forced on unitree (no delta)
@pytest.mark.parametrize("lerobot_mode, mode", [("MEAN_STD", "mean_std"), ("MIN_MAX", "min_max"),
                                                 ("QUANTILES", "q01_q99")])
def test_lerobot_matches_stepnorm_per_timestep(real, tmp_path, lerobot_mode, mode):
    art_dir, episodes, delta, _ = real
    (path,) = run_export(art_dir, "lerobot", tmp_path, per_timestep=True)
    raw = json.loads(path.read_text())
    stats = {feature: {k: np.asarray(v) for k, v in s.items()} for feature, s in raw.items()}
    assert set(stats) == {"action", "observation.state"}
    assert stats["action"]["mean"].shape == (H, episodes[0][0].shape[1])
    assert stats["action"]["count"].tolist() == [sum(len(a) for a, _ in episodes)]
    assert {"q01", "q99"} <= set(stats["action"]) and "q10" not in stats["action"]
    art = read_artifact(art_dir)
    norm = Normalizer.from_artifact(art, per_timestep=True, mode=mode, clip=False)  # LeRobot never clips
    x, valid = chunks(episodes, H, delta)
    consumer = lerobot_normalize(x, stats["action"], lerobot_mode)
    ours = norm.normalize(x)
    p = norm.per_timestep_params
    denom = p.scale if mode == "mean_std" else 2 * p.scale
    for k in range(H):
        rows = valid[:, k]
        assert_consumer_matches(consumer[rows, k], ours[rows, k], denom[k], 1e-8, p.active[k], f"lerobot k={k}")


def openvla_get_action_stats(norm_stats, unnorm_key=None):
    """OpenVLA's lookup: nested per dataset name; ``None`` only when exactly one name is present."""
    if unnorm_key is None:
        assert len(norm_stats) == 1, f"unnorm_key needed, choose from {list(norm_stats)}"
        unnorm_key = next(iter(norm_stats))
    assert unnorm_key in norm_stats, f"{unnorm_key!r} not in {list(norm_stats)}"
    return norm_stats[unnorm_key]["action"]


@pytest.mark.parametrize("consumer_fn", [octo_normalize, openvla_normalize])
def test_octo_openvla_bounds_match_stepnorm(real, tmp_path, consumer_fn):
    art_dir, episodes, delta, mask = real
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (path,) = run_export(art_dir, "octo", tmp_path)
    # with a delta_mask the export says Octo will not apply it
    assert any("without the config's delta_mask" in str(w.message) for w in caught) == (delta is not None)
    nested = json.loads(path.read_text())
    (name,) = nested  # always nested under the dataset name, also for one dataset
    assert openvla_get_action_stats(nested) == openvla_get_action_stats(nested, name)
    doc = nested[name]
    assert doc["num_trajectories"] == len(episodes)
    assert doc["num_transitions"] == sum(len(a) for a, _ in episodes)
    assert doc["action"]["mask"] == mask
    # Octo's loader normalizes the stored actions, one step at a time (no delta transform).
    x = np.concatenate([a for a, _ in episodes])
    _, mean, std, vmin, vmax = two_pass(x)
    np.testing.assert_allclose(doc["action"]["mean"], mean, rtol=1e-9, atol=1e-9 * std.max())
    np.testing.assert_allclose(doc["action"]["std"], std, rtol=1e-9, atol=1e-9 * std.max())
    np.testing.assert_array_equal(doc["action"]["min"], vmin)
    np.testing.assert_array_equal(doc["action"]["max"], vmax)
    for d in range(x.shape[1]):
        assert rank_error(x[:, d], doc["action"]["q99"][d], 0.99) <= RANK_TOL
    norm = Normalizer(read_artifact(art_dir).stats("action", "raw" if delta else "global"), mode="q01_q99", mask=mask)
    g = norm.global_params
    consumer = consumer_fn(x, doc["action"])
    assert_consumer_matches(consumer, norm.normalize(x), 2 * g.scale, 1e-8, g.active, consumer_fn.__name__)
    np.testing.assert_array_equal(consumer[:, ~np.asarray(mask)], x[:, ~np.asarray(mask)])
    state = np.concatenate([s for _, s in episodes])
    state_norm = Normalizer(read_artifact(art_dir).stats("state", "global"), mode="q01_q99")
    assert_consumer_matches(consumer_fn(state, doc["proprio"]), state_norm.normalize(state),
                            2 * state_norm.global_params.scale, 1e-8, state_norm.global_params.active, "proprio")


@pytest.mark.parametrize("mode", ["min_max", "q01_q99", "mean_std"])
@pytest.mark.parametrize("per_timestep", [False, None])
def test_robomimic_matches_stepnorm(real, tmp_path, mode, per_timestep):
    """robomimic applies one [1, D] row to every action: the export's row normalizes like stepnorm's
    [D] statistics of the same block (off: global or, with a delta_mask, pooled; a per-timestep
    decision exports global, position 0, with a warning)."""
    art_dir, episodes, delta, mask = real
    art = read_artifact(art_dir)
    # The exported method follows the artifact's config; rebuild the artifact's config for each mode.
    doc = json.loads((art_dir / "stats.json").read_text())
    doc["config"]["normalization"]["action"]["mode"] = mode
    doc["fingerprint"] = artifact_fingerprint(doc["config"], {n: d["fingerprint"] for n, d in doc["datasets"].items()})
    write_artifact(tmp_path / "stats", doc)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (path,) = run_export(tmp_path / "stats", "robomimic", tmp_path / "out", per_timestep=per_timestep)
    decision_on = per_timestep is None and delta is not None
    assert any("robomimic applies one [1, D] row" in str(w.message) for w in caught) == decision_on
    out = json.loads(path.read_text())
    entry = out["action_normalization_stats"]["actions"]
    assert out["action_config"]["actions"]["normalization"] == ("gaussian" if mode == "mean_std" else "min_max")
    x, valid = chunks(episodes, H, delta)
    block = "global" if decision_on or delta is None else "pooled"
    norm = Normalizer(art.stats("action", block), mode=mode, mask=mask, clip=False)
    assert np.asarray(entry["offset"]).shape == (1, x.shape[-1])
    if block == "global":  # each step once: the chunks' first entries
        x, valid = x[:, :1], valid[:, :1]
    consumer = robomimic_normalize(x, entry)
    ours = norm.normalize(x)
    p = norm.global_params
    # robomimic's min_max targets +-0.999999, a relative 1e-6 from stepnorm's +-1.
    for k in range(x.shape[1]):
        rows = valid[:, k]
        assert_consumer_matches(consumer[rows, k], ours[rows, k], p.scale, 1e-6 * p.scale, p.active,
                                f"robomimic k={k}")
    # dims the mask leaves off pass through robomimic untouched (offset 0, scale 1)
    off = ~np.asarray(mask)
    np.testing.assert_array_equal(consumer[..., off], x[..., off])
    # unnormalize (robomimic's rollout: raw = scale * y + offset) inverts stepnorm's normalize
    back = np.asarray(entry["scale"]) * consumer + np.asarray(entry["offset"])
    np.testing.assert_allclose(back[valid], x[valid], rtol=1e-5, atol=1e-4 * np.abs(x).max())


def test_robomimic_per_timestep_on_is_an_error(real, tmp_path):
    art_dir = real[0]
    with pytest.raises(ExportError, match=r"robomimic applies one \[1, D\] offset/scale row.*row 0"):
        run_export(art_dir, "robomimic", tmp_path / "out", per_timestep=True)
    assert not (tmp_path / "out").exists()


# -- selection, mixtures, per-timestep switch -------------------------------------------------------
def _generated(tmp_path, **config):
    datasets = {"sim": make_episodes(seed=3, n=30, dim=4, min_len=12, max_len=30),
                "real": [(a + 2.0, s) for a, s in make_episodes(seed=4, n=20, dim=4, min_len=12, max_len=30)]}
    return build_artifact(tmp_path / "stats", datasets, horizon=8, **config)[0], datasets


def test_octo_mixture_nests_per_dataset(tmp_path):
    mask = [True] * 3 + [False]
    art_dir, datasets = _generated(tmp_path, normalization={"action": {"mode": "q01_q99", "mask": mask}})
    art = read_artifact(art_dir)
    doc = json.loads(run_export(art_dir, "octo", tmp_path / "mix")[0].read_text())
    assert set(doc) == {"sim", "real"}
    for name, eps in datasets.items():
        assert doc[name]["num_trajectories"] == len(eps)
        assert doc[name]["num_transitions"] == sum(len(a) for a, _ in eps)
        # normalize_with: combined (default): every dataset was normalized with the mixture statistics
        np.testing.assert_array_equal(doc[name]["action"]["p99"], art.stats("action", "global")["q99"])
        assert doc[name]["action"]["mask"] == mask
    one = json.loads(run_export(art_dir, "octo", tmp_path / "one", dataset="real")[0].read_text())["real"]
    assert "action" in one and one["num_trajectories"] == 20
    np.testing.assert_array_equal(one["action"]["mean"], art.stats("action", "global", "real")["mean"])


def test_octo_per_dataset_normalization_nests_own_statistics(tmp_path):
    art_dir, _ = _generated(tmp_path, normalize_with="per_dataset")
    art = read_artifact(art_dir)
    doc = json.loads(run_export(art_dir, "octo", tmp_path / "out")[0].read_text())
    for name in ("sim", "real"):
        np.testing.assert_array_equal(doc[name]["action"]["std"], art.stats("action", "global", name)["std"])


def test_dataset_selection_and_unknown_name(tmp_path):
    art_dir, _ = _generated(tmp_path)
    art = read_artifact(art_dir)
    doc = json.loads(run_export(art_dir, "lerobot", tmp_path / "sim", dataset="sim")[0].read_text())
    np.testing.assert_array_equal(doc["action"]["mean"], art.stats("action", "global", "sim")["mean"])
    assert doc["action"]["count"] == [art.doc["datasets"]["sim"]["num_steps"]]
    with pytest.raises(ArtifactError, match=r"no dataset 'nope' in this artifact \(datasets: sim, real\)"):
        run_export(art_dir, "lerobot", tmp_path / "x", dataset="nope")


def test_per_timestep_auto_follows_delta_mask(tmp_path):
    plain, _ = _generated(tmp_path / "a")
    delta, _ = _generated(tmp_path / "b", delta_mask=[True, True, True, False])
    assert [p.name for p in run_export(plain, "openpi", tmp_path / "o1")] == ["norm_stats.json"]
    assert [p.name for p in run_export(delta, "openpi", tmp_path / "o2")] == [
        "norm_stats.json", "norm_stats_actions_per_timestep.json"]
    # forced off: the earlier per-timestep file is removed, or openpi would pick up stale statistics
    run_export(delta, "openpi", tmp_path / "o2", per_timestep=False)
    assert sorted(p.name for p in (tmp_path / "o2").iterdir()) == ["norm_stats.json"]
    # off with a delta_mask is pooled (every chunk position is a delta), not global (position 0)
    pooled = read_artifact(delta).stats("action", "pooled")
    off = json.loads((tmp_path / "o2" / "norm_stats.json").read_text())["norm_stats"]["actions"]
    np.testing.assert_array_equal(off["std"], pooled["std"])
    assert not np.array_equal(pooled["std"], read_artifact(delta).stats("action", "global")["std"])
    lerobot_off = json.loads(run_export(delta, "lerobot", tmp_path / "l_off", per_timestep=False)[0].read_text())
    np.testing.assert_array_equal(lerobot_off["action"]["mean"], pooled["mean"])
    # forced on without a delta mask
    doc = json.loads(run_export(plain, "lerobot", tmp_path / "l", per_timestep=True)[0].read_text())
    assert np.asarray(doc["action"]["mean"]).shape == (8, 4)
    # Octo has no per-timestep statistics: auto stays global, forcing it is an error
    assert run_export(delta, "octo", tmp_path / "oc")[0].name == "dataset_statistics.json"
    with pytest.raises(ExportError, match="no per-timestep statistics"):
        run_export(delta, "octo", tmp_path / "oc2", per_timestep=True)


def test_lerobot_writes_only_quantiles_the_artifact_has(tmp_path):
    art_dir, _ = _generated(tmp_path, quantiles=[0.01, 0.1, 0.5, 0.9, 0.99])
    doc = json.loads(run_export(art_dir, "lerobot", tmp_path / "out")[0].read_text())
    assert {"q01", "q10", "q50", "q90", "q99"} <= set(doc["action"])
    art_dir2, _ = _generated(tmp_path / "b", quantiles=[0.05, 0.5, 0.95],
                             normalization={"action": {"mode": "mean_std"}})
    doc = json.loads(run_export(art_dir2, "lerobot", tmp_path / "out2")[0].read_text())
    assert sorted(k for k in doc["action"] if k.startswith("q")) == ["q50"]
    with pytest.raises(ExportError, match="need quantiles 0.01 and 0.99"):
        run_export(art_dir2, "octo", tmp_path / "out3")


def test_state_free_artifact_exports_actions_only(tmp_path):
    eps = [(a, None) for a, _ in make_episodes(seed=5, n=10, dim=3, min_len=10)]
    art_dir, _ = build_artifact(tmp_path / "stats", {"d": eps}, horizon=4)
    assert set(json.loads(run_export(art_dir, "openpi", tmp_path / "o")[0].read_text())["norm_stats"]) == {"actions"}
    assert "proprio" not in json.loads(run_export(art_dir, "octo", tmp_path / "c")[0].read_text())
    assert "obs_normalization_stats" not in json.loads(run_export(art_dir, "robomimic", tmp_path / "r")[0].read_text())


def test_robomimic_epsilon_rules():
    from stepnorm.exporters.robomimic import offset_scale

    stats = {"min": np.array([-1.0, 2.0, 0.0]), "max": np.array([3.0, 2.00005, 1.0]),
             "mean": np.array([0.5, 2.0, 0.2]), "std": np.array([1.0, 5e-7, 0.3])}
    offset, scale = offset_scale(stats, "min_max", None)
    np.testing.assert_allclose(scale, [4.0 / 1.999998, 1.0, 1.0 / 1.999998], rtol=1e-6)
    np.testing.assert_allclose(offset, [-1.0 + 4.0 / 1.999998 * 0.999999, 2.0, 1.0 / 1.999998 * 0.999999], rtol=1e-6)
    offset, scale = offset_scale(stats, "mean_std", [True, True, False])
    np.testing.assert_allclose(offset, [0.5, 2.0, 0.0])
    np.testing.assert_allclose(scale, [1.0, 1.0, 1.0])
    assert offset.dtype == np.float32


# -- null entries, stale and malformed artifacts ----------------------------------------------------
def test_empty_chunk_positions_are_an_error_unless_per_timestep_off(tmp_path):
    eps = make_episodes(seed=6, n=10, dim=2, min_len=1, max_len=3)
    art_dir, _ = build_artifact(tmp_path / "stats", {"short": eps}, horizon=5)
    for fmt in ("openpi", "lerobot"):
        with pytest.raises(ExportError, match=r"no data at chunk positions \[3, 4\] of 5 .* horizon <= 3"):
            run_export(art_dir, fmt, tmp_path / fmt, per_timestep=True)
        assert not (tmp_path / fmt).exists() or not any((tmp_path / fmt).iterdir())
        assert run_export(art_dir, fmt, tmp_path / fmt, per_timestep=False)
    assert run_export(art_dir, "robomimic", tmp_path / "robomimic", per_timestep=False)


def _edit(art_dir, mutate):
    doc = json.loads((art_dir / "stats.json").read_text())
    mutate(doc)
    (art_dir / "stats.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("mutate", [
    lambda d: d["config"].update(weighting="mixture"),
    lambda d: d["config"].update(delta_mask=[True, True, True, False]),
    lambda d: d["datasets"]["sim"].update(fingerprint="0" * 64),
])
def test_edited_artifact_is_stale(tmp_path, mutate):
    art_dir, _ = _generated(tmp_path)
    _edit(art_dir, mutate)
    with pytest.raises(StaleArtifactError, match="edited after it was computed"):
        run_export(art_dir, "openpi", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_malformed_artifact_fails_clearly(tmp_path):
    art_dir, _ = _generated(tmp_path)
    _edit(art_dir, lambda d: d["combined"]["action"]["per_timestep"].update(mean=[[0.0] * 4] * 3))
    with pytest.raises(ArtifactError, match=r"per_timestep.mean has shape \[3, 4\]"):
        run_export(art_dir, "lerobot", tmp_path / "out")
    (art_dir / "stats.json").write_text("{")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        run_export(art_dir, "lerobot", tmp_path / "out")
    with pytest.raises(ArtifactError, match="no stats artifact"):
        run_export(tmp_path / "missing", "lerobot", tmp_path / "out")


def test_artifact_stale_for_the_config_or_its_data(tmp_path):
    import os

    from stepnorm.cli import main

    assert main(["sample", str(tmp_path / "s")]) == 0
    cfg_path = tmp_path / "s" / "config.yaml"
    assert main(["stats", str(cfg_path), "--out", str(tmp_path / "stats")]) == 0
    assert run_export(tmp_path / "stats", "openpi", tmp_path / "ok", config=cfg_path)
    # gate-only edits do not make statistics stale
    raw = yaml.safe_load(cfg_path.read_text())
    raw["validators"] = {"drift": {"js_threshold": 0.5}}
    cfg_path.write_text(yaml.safe_dump(raw))
    assert run_export(tmp_path / "stats", "openpi", tmp_path / "ok2", config=cfg_path)
    raw["horizon"] = 4
    raw["normalization"]["action"]["mode"] = "min_max"
    cfg_path.write_text(yaml.safe_dump(raw))
    with pytest.raises(StaleArtifactError, match=r"stale for .*config.yaml \(config keys horizon, normalization"):
        run_export(tmp_path / "stats", "openpi", tmp_path / "bad", config=cfg_path)
    raw["horizon"] = 8
    raw["normalization"]["action"]["mode"] = "q01_q99"
    cfg_path.write_text(yaml.safe_dump(raw))
    shard = sorted((tmp_path / "s" / "real_pick" / "1.0.0").glob("*train.tfrecord*"))[0]
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    with pytest.raises(StaleArtifactError, match=r"dataset real_pick changed"):
        run_export(tmp_path / "stats", "openpi", tmp_path / "bad", config=cfg_path)
    assert not (tmp_path / "bad").exists()


def test_unknown_format(tmp_path):
    with pytest.raises(ExportError, match="unknown export format 'tfds'"):
        run_export(tmp_path, "tfds", tmp_path / "out")


def test_writes_are_atomic_and_leave_no_temporaries(tmp_path, monkeypatch):
    art_dir, _ = _generated(tmp_path)
    out = tmp_path / "out"
    run_export(art_dir, "lerobot", out)
    before = (out / "stats.json").read_text()
    import stepnorm.outputs as common  # the one atomic-write helper exporters use

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(common.os, "replace", boom)
    with pytest.raises(OSError):
        run_export(art_dir, "lerobot", out, per_timestep=True)
    assert (out / "stats.json").read_text() == before
    assert [p.name for p in out.iterdir()] == ["stats.json"]


# -- command line -----------------------------------------------------------------------------------
def test_cli_export(tmp_path, capsys):
    art_dir, _ = _generated(tmp_path, delta_mask=[True, True, True, False])
    assert main(["export", str(art_dir), "--format", "openpi", "--out", str(tmp_path / "o")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"wrote {tmp_path / 'o' / 'norm_stats.json'}",
                     f"wrote {tmp_path / 'o' / 'norm_stats_actions_per_timestep.json'}"]
    assert main(["export", str(art_dir), "--format", "octo", "--out", str(tmp_path / "c"), "--dataset", "sim"]) == 0


@pytest.mark.parametrize("args, message", [
    (["--dataset", "nope"], "no dataset 'nope'"),
    (["--per-timestep", "on", "--format", "octo"], "no per-timestep statistics"),
])
def test_cli_errors_are_one_line_exit_2(tmp_path, capsys, args, message):
    art_dir, _ = _generated(tmp_path)
    argv = ["export", str(art_dir), "--format", "lerobot", "--out", str(tmp_path / "o"), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("stepnorm: error: ") and message in err


def test_cli_stale_artifact_exit_2(tmp_path, capsys):
    art_dir, _ = _generated(tmp_path)
    _edit(art_dir, lambda d: d["config"].update(horizon=3))
    assert main(["export", str(art_dir), "--format", "robomimic", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "edited after it was computed" in err


def test_cli_override_prints_one_warning_line(tmp_path, capsys):
    art_dir, _ = _generated(tmp_path)  # no delta_mask: the decision is global
    assert main(["export", str(art_dir), "--format", "lerobot", "--out", str(tmp_path / "o"), "--per-timestep", "on"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("stepnorm: warning: the lerobot export uses the 'per_timestep'")
    assert "decision (normalization.action.per_timestep: auto) is 'global'" in err[0]
    assert main(["export", str(art_dir), "--format", "lerobot", "--out", str(tmp_path / "o")]) == 0
    assert capsys.readouterr().err == ""
