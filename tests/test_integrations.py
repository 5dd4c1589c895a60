"""openpi, robomimic and Octo integrations end to end on real data, against float64 references.

Training: raw action chunks go through the consumer's pipeline (re-implemented here from
../shared/ANCHORS.md and the consumers' source: openpi's DeltaActions -> Normalize ->
PadStatesAndActions; robomimic chunk targets; Octo's per-step normalize_action_and_proprio, then
chunking) and must equal ``(x - mean_k) / std_k`` with two-pass float64 statistics of chunk
position ``k`` (``tests/reference.py``). Inference: a normalized chunk predicted for a batch of
1, 3 or H observations is unnormalized by the consumer's output path; the first ``n_action_steps
< H`` executed actions must be the raw actions. None of these consumers is installed here; their
formulas and layouts are re-implemented (LeRobot's real code runs in its own test environment).
"""

import numpy as np
import pytest
from reference import chunk_at, chunk_entries, chunks, two_pass
from test_exporters import build_artifact, read_lerobot_episodes

from stepnorm.artifact import read_artifact
from stepnorm.exporters import run_export
from stepnorm.errors import ArtifactError
from stepnorm.integrations import octo as sn_octo
from stepnorm.integrations import openpi as sn_openpi
from stepnorm.integrations.robomimic import ChunkNormalizer, unnormalize_chunk

H = 10
MODEL_ACTION_DIM = 32  # openpi pads actions and state to the model's action dim
N_ACTION_STEPS = 4  # executed per prediction, < H
BATCHES = (1, 3, H)

REAL = {"so101_record_test_lerobot_v30": True, "unitree_g1_pick_bottle_lerobot_v21": False}


@pytest.fixture(scope="module", params=sorted(REAL))
def real(request, real_data, tmp_path_factory):
    """(artifact dir, episodes, delta_mask, reference mean/std per position [H, D])."""
    name = request.param
    episodes = read_lerobot_episodes(real_data / name)
    dim = episodes[0][0].shape[1]
    delta = [True] * (dim - 1) + [False] if REAL[name] else None
    config = {"normalization": {"action": {"mode": "mean_std"}, "state": {"mode": "mean_std"}}}
    if delta is not None:
        config["delta_mask"] = delta
    art_dir, _ = build_artifact(tmp_path_factory.mktemp(name) / "stats", {name: episodes}, horizon=H, **config)
    if delta is not None:  # decision auto -> per_timestep: each position its own statistics
        per_k = [two_pass(entries) for entries in chunk_entries(episodes, H, delta)]
        mean, std = np.stack([p[1] for p in per_k]), np.stack([p[2] for p in per_k])
    else:  # decision auto -> global: each step once, the same vector at every position
        _, m, s, _, _ = two_pass(np.concatenate([a for a, _ in episodes]))
        mean, std = np.broadcast_to(m, (H, dim)), np.broadcast_to(s, (H, dim))
    return art_dir, episodes, delta, mean, std


def _reference(x, mean, std):
    live = std > 1e-8 * np.maximum(1, np.abs(mean))
    return np.where(live, (x - mean) / np.where(live, std, 1), 0.0), live


def _close(got, want, label):
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * (1 + np.abs(want).max()), err_msg=label)


def _sample_starts(episodes, count, seed):
    """Some (episode, t) pairs, including the episode's last steps (chunks that need padding)."""
    rng = np.random.default_rng(seed)
    picks = []
    for e in rng.choice(len(episodes), size=count):
        t_len = len(episodes[e][0])
        picks.append((int(e), int(rng.integers(0, t_len)) if len(picks) % 2 else t_len - 2))
    return picks


# -- openpi -------------------------------------------------------------------------------------------
def openpi_delta_actions(data, mask):
    """openpi ``DeltaActions``: ``actions[..., :dims] -= where(mask, state[..., :dims], 0)``."""
    mask = np.asarray(mask)
    dims = mask.shape[-1]
    data["actions"][..., :dims] -= np.expand_dims(np.where(mask, data["state"][..., :dims], 0), axis=-2)
    return data


def openpi_absolute_actions(data, mask):
    mask = np.asarray(mask)
    dims = mask.shape[-1]
    data["actions"][..., :dims] += np.expand_dims(np.where(mask, data["state"][..., :dims], 0), axis=-2)
    return data


def openpi_pad(data, dim):
    """openpi ``PadStatesAndActions``: zero-pad the last axis to the model's action dim."""
    pad = lambda x: np.concatenate([x, np.zeros(x.shape[:-1] + (dim - x.shape[-1],))], axis=-1)  # noqa: E731
    return {**data, "state": pad(data["state"]), "actions": pad(data["actions"])}


@pytest.mark.parametrize("action_horizon", [H, H // 2])
def test_openpi_training_and_inference(real, tmp_path, action_horizon):
    art_dir, episodes, delta, mean, std = real
    run_export(art_dir, "openpi", tmp_path)
    assert (tmp_path / "norm_stats_actions_per_timestep.json").exists() == (delta is not None)
    normalize, unnormalize = sn_openpi.transforms_from_assets(tmp_path)
    mask = delta or [False]
    picks = _sample_starts(episodes, 12, seed=1)
    # training: one unbatched sample at a time, as openpi's data loader gives them
    targets = []
    for e, t in picks:
        action, state = episodes[e]
        raw = chunk_at(action, None, t, action_horizon)[0]
        data = openpi_delta_actions({"state": state[t].copy(), "actions": raw.copy()}, mask)
        out = openpi_pad(normalize(data), MODEL_ACTION_DIM)
        x = raw.copy()
        if delta is not None:
            x[:, np.asarray(delta)] -= state[t, np.asarray(delta)]
        want, _ = _reference(x, mean[:action_horizon], std[:action_horizon])
        valid = np.arange(t, t + action_horizon) < len(action)
        _close(out["actions"][valid, : x.shape[1]], want[valid], f"openpi normalize ep {e} t {t}")
        assert out["actions"].shape == (action_horizon, MODEL_ACTION_DIM)
        assert (out["actions"][:, x.shape[1]:] == 0).all()
        targets.append((e, t, out["actions"], out["state"]))
    # inference (openpi's Policy.infer): the output transforms get the transformed (normalized,
    # padded) state and the model's padded normalized chunks; unnormalize, then make absolute
    rng = np.random.default_rng(2)
    for batch in BATCHES:
        chosen = [targets[i % len(targets)] for i in range(batch)]
        y = np.stack([c[2] for c in chosen]).copy()
        y[..., episodes[0][0].shape[1]:] = rng.normal(size=y[..., episodes[0][0].shape[1]:].shape)  # model padding
        states = np.stack([c[3] for c in chosen])
        out = openpi_absolute_actions(unnormalize({"state": states, "actions": y}), mask)
        np.testing.assert_array_equal(out["actions"][..., episodes[0][0].shape[1]:], y[..., episodes[0][0].shape[1]:])
        for b, (e, t, _, _) in enumerate(chosen):
            action = episodes[e][0]
            executed = out["actions"][b, :N_ACTION_STEPS, : action.shape[1]]
            expect = chunk_at(action, None, t, N_ACTION_STEPS)[0]
            valid = np.arange(t, t + N_ACTION_STEPS) < len(action)
            np.testing.assert_allclose(executed[valid], expect[valid], rtol=1e-9, atol=1e-9 * np.abs(action).max())


def test_openpi_errors_and_state(real, tmp_path):
    art_dir, episodes, delta, _, _ = real
    run_export(art_dir, "openpi", tmp_path)
    normalize, unnormalize = sn_openpi.transforms_from_assets(tmp_path)
    art = read_artifact(art_dir)
    state = episodes[0][1]
    _, sm, ss, _, _ = two_pass(np.concatenate([s for _, s in episodes]))
    out = normalize({"state": state[0].copy()})  # no actions (inference inputs): state only
    _close(out["state"], _reference(state[0], sm, ss)[0], "openpi state")
    if delta is not None:
        with pytest.raises(ValueError, match="longer than the statistics' horizon"):
            normalize({"state": state[0], "actions": np.zeros((art.horizon + 1, state.shape[1]))})
    with pytest.raises(ValueError, match="not found in the data"):
        unnormalize({"state": state[0]})
    with pytest.raises(Exception, match="no openpi norm stats here"):
        sn_openpi.load_norm_stats(tmp_path / "missing")


# -- robomimic ----------------------------------------------------------------------------------------
def test_robomimic_chunk_policy(real, tmp_path):
    art_dir, episodes, delta, mean, std = real
    art = read_artifact(art_dir)
    helper = ChunkNormalizer.from_artifact(art)
    x, valid = chunks(episodes, H, delta)
    y = helper.normalize(x)  # training targets [N, H, D]
    want, _ = _reference(x, mean, std)
    _close(y[valid], want[valid], "robomimic chunk targets")
    picks = _sample_starts(episodes, 8, seed=3)
    offsets = np.cumsum([0] + [len(a) for a, _ in episodes])
    for batch in BATCHES:
        chosen = [picks[i % len(picks)] for i in range(batch)]
        pred = np.stack([y[offsets[e] + t] for e, t in chosen])  # the policy's prediction [B, H, D]
        raw = helper.unnormalize(pred)
        one = unnormalize_chunk(pred[0], art)  # unbatched [H, D]
        np.testing.assert_array_equal(one, raw[0])
        for b, (e, t) in enumerate(chosen):
            action, state = episodes[e]
            executed = raw[b, :N_ACTION_STEPS].copy()
            if delta is not None:  # the policy's actions are relative to the state it saw
                executed[:, np.asarray(delta)] += state[t, np.asarray(delta)]
            expect = chunk_at(action, None, t, N_ACTION_STEPS)[0]
            ok = np.arange(t, t + N_ACTION_STEPS) < len(action)
            np.testing.assert_allclose(executed[ok], expect[ok], rtol=1e-9, atol=1e-9 * np.abs(action).max())
    with pytest.raises(ValueError, match=r"chunk \[h, D\]"):
        helper.unnormalize(x[0, 0])


# -- Octo ---------------------------------------------------------------------------------------------
def octo_normalize_normal(x, s):
    """Octo ``normalize_action_and_proprio`` (NORMAL): ``(x - mean) / (std + 1e-8)`` where mask."""
    mask = np.asarray(s.get("mask", np.ones_like(s["mean"], bool)), bool)
    return np.where(mask, (x - np.asarray(s["mean"])) / (np.asarray(s["std"]) + 1e-8), x)


def octo_unnormalize_normal(y, s):
    mask = np.asarray(s.get("mask", np.ones_like(s["mean"], bool)), bool)
    return np.where(mask, y * np.asarray(s["std"]) + np.asarray(s["mean"]), y)


def test_octo_stored_actions_then_chunks(real, tmp_path):
    """Octo normalizes every stored action, then chunks (dlimp windows with the last step repeated)."""
    import json

    art_dir, episodes, delta, _, _ = real
    name = read_artifact(art_dir).dataset_names[0]
    with _maybe_warns(delta is not None):
        (path,) = run_export(art_dir, "octo", tmp_path)
    stats = json.loads(path.read_text())[name]["action"]
    entry = sn_octo.load_statistics(path)  # OpenVLA-style lookup: the only name
    np.testing.assert_array_equal(sn_octo.load_statistics(path, name)["action"]["std"], entry["action"]["std"])
    np.testing.assert_array_equal(entry["action"]["mean"], stats["mean"])
    _, mean, std, _, _ = two_pass(np.concatenate([a for a, _ in episodes]))
    for e, (action, _) in enumerate(episodes[:5]):
        y = octo_normalize_normal(action, stats)
        want = (action - mean) / std
        live = std > 0
        np.testing.assert_allclose(y[:, live], want[:, live], rtol=1e-6, atol=1e-6)
        # a chunked policy predicts [B, H, D] windows of these; executing N_ACTION_STEPS of them
        for batch in BATCHES:
            starts = np.arange(batch) % len(action)
            windows = np.stack([y[np.minimum(np.arange(t, t + H), len(action) - 1)] for t in starts])
            raw = octo_unnormalize_normal(windows, stats)[:, :N_ACTION_STEPS]
            ours = sn_octo.unnormalize_chunk(windows, entry, mode="normal")[:, :N_ACTION_STEPS]
            for b, t in enumerate(starts):
                np.testing.assert_allclose(raw[b], chunk_at(action, None, t, N_ACTION_STEPS)[0], rtol=1e-9,
                                           atol=1e-6 * np.abs(action).max())
                # stepnorm's unnormalize of the same prediction with the same entry: the same actions
                np.testing.assert_allclose(ours[b], raw[b], rtol=1e-9, atol=1e-6 * np.abs(action).max())


def _maybe_warns(expected):
    import contextlib

    from stepnorm.normalize import DecisionWarning

    return pytest.warns(DecisionWarning, match="without the config's delta_mask") if expected else contextlib.nullcontext()


def test_octo_lookup_is_openvla_s(tmp_path):
    """Nested only; no name works only with exactly one dataset; unknown names list the choices."""
    import json

    entry = {"action": {f: [0.0, 1.0] for f in ("mean", "std", "min", "max", "p01", "p99")},
             "num_transitions": 2, "num_trajectories": 1}
    (tmp_path / "one.json").write_text(json.dumps({"bridge_ds": entry}))
    (tmp_path / "two.json").write_text(json.dumps({"a": entry, "b": entry}))
    (tmp_path / "flat.json").write_text(json.dumps(entry))
    assert sn_octo.load_statistics(tmp_path / "one.json")["num_trajectories"] == 1
    with pytest.raises(ArtifactError, match=r"choose one of \['a', 'b'\]"):
        sn_octo.load_statistics(tmp_path / "two.json")
    with pytest.raises(ArtifactError, match="no dataset 'c'"):
        sn_octo.load_statistics(tmp_path / "two.json", "c")
    with pytest.raises(ArtifactError, match="nested under dataset names"):
        sn_octo.load_statistics(tmp_path / "flat.json")
    # bounds: constant dims (p01 == p99) give 0, as OpenVLA; Octo's own formula gives -1 there
    const = sn_octo.load_statistics(tmp_path / "one.json")
    const["action"]["p01"] = const["action"]["p99"] = np.array([0.5, 1.0])
    y = sn_octo.normalizer(const).normalize(np.array([[0.5, 3.0]]))
    np.testing.assert_array_equal(y, [[0.0, 0.0]])
