"""stepnorm.integrations.lerobot against LeRobot's REAL code (run in .venv-lerobot, see the Makefile).

The environment holds lerobot 0.4.4 installed with ``--no-deps`` (its pins ask for torch<2.11; the CPU
torch here is 2.13.0) beside what its processor pipeline and ACT policy import. torchvision 0.28.0 from
PyPI is a CUDA build whose C++ ops cannot load beside CPU torch; its pure-Python modules (all ACT
imports) do, once the two op schemas torchvision registers fakes for exist (``_torchvision_schemas``).
ACT here has no image features, so no torchvision op ever runs.

Checked with LeRobot's own classes: ``make_act_pre_post_processors`` (``NormalizerProcessorStep``,
``UnnormalizerProcessorStep``, ``PolicyProcessorPipeline``), ``ProcessorStepRegistry``,
``save_pretrained`` / ``from_pretrained`` (with and without overrides) and the factory's
``make_pre_post_processors(pretrained_path=...)``, and ``ACTPolicy`` (a tiny random-weight config on the CPU):
``forward`` on the normalized training batch, and ``select_action`` with ``n_action_steps < H`` for
batch sizes 1, 3 and H, and with ACT's temporal ensembling. Every value is compared with the float64 reference of plain_reference.py.

Usage: ``check_lerobot.py --imports-only`` or ``check_lerobot.py ARTIFACT_DIR DATASET_DIR MODE N_ACTION_STEPS``.
Prints one JSON summary line; any mismatch raises (non-zero exit).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the one chunk reference
from plain_reference import Reference, pick_frames, read_episodes  # noqa: E402
from reference import chunk_at  # noqa: E402

LEROBOT_VERSION = "0.4.4"
LEROBOT_MODES = {"mean_std": "MEAN_STD", "min_max": "MIN_MAX", "q01_q99": "QUANTILES"}


def _torchvision_schemas():
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return lib


_LIB = _torchvision_schemas()

import lerobot  # noqa: E402
from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature  # noqa: E402
from lerobot.policies.act.configuration_act import ACTConfig  # noqa: E402
from lerobot.policies.act.modeling_act import ACTPolicy, ACTTemporalEnsembler  # noqa: E402
from lerobot.policies.act.processor_act import make_act_pre_post_processors  # noqa: E402
from lerobot.policies.factory import make_pre_post_processors  # noqa: E402
from lerobot.processor import PolicyProcessorPipeline  # noqa: E402
from lerobot.processor.pipeline import ProcessorStepRegistry  # noqa: E402

from stepnorm.integrations import lerobot as sn  # noqa: E402  (registers: LeRobot is imported)

STATE, ENV = "observation.state", "observation.environment_state"


def close(got, want, what, rtol=1e-5):
    """float32 outputs against the float64 reference: relative 1e-5 of max(1, |want|)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    err = np.abs(got - want) / np.maximum(1.0, np.abs(want))
    if not np.all(np.isfinite(got)) or err.max() > rtol:
        raise AssertionError(f"{what}: max relative error {err.max():.3g} (> {rtol})")
    return float(err.max())


def main(artifact: Path, data: Path, mode: str, n_action_steps: int) -> dict:
    ref = Reference(artifact, mode)
    horizon, dims = ref.center.shape
    episodes = read_episodes(data)
    states = np.concatenate([s for _, s in episodes])
    ds = states.shape[1]
    # LeRobot's own stats for the observations (and an action entry, which processors() must take out).
    actions = np.concatenate([a for a, _ in episodes])
    lr_stats = {STATE: {"mean": states.mean(0), "std": states.std(0)}, ENV: {"mean": states.mean(0), "std": states.std(0)},
                "action": {"mean": actions.mean(0), "std": actions.std(0), "min": actions.min(0), "max": actions.max(0),
                           "q01": np.quantile(actions, 0.01, 0), "q99": np.quantile(actions, 0.99, 0)}}
    torch.manual_seed(0)
    config = ACTConfig(
        input_features={STATE: PolicyFeature(FeatureType.STATE, (ds,)), ENV: PolicyFeature(FeatureType.ENV, (ds,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (dims,))},
        normalization_mapping={"STATE": NormalizationMode.MEAN_STD, "ENV": NormalizationMode.MEAN_STD,
                               "ACTION": NormalizationMode(LEROBOT_MODES[mode])},
        chunk_size=horizon, n_action_steps=n_action_steps, dim_model=32, n_heads=2, dim_feedforward=64,
        n_encoder_layers=1, n_decoder_layers=1, n_vae_encoder_layers=1, latent_dim=8,
        pretrained_backbone_weights=None, device="cpu")
    policy = ACTPolicy(config)
    pre, post = make_act_pre_post_processors(config, dataset_stats=lr_stats)
    pre, post = sn.processors(pre, post, artifact)
    assert [type(s).__name__ for s in pre.steps][-2:] == ["StepnormActionNormalizerStep", "NormalizerProcessorStep"]
    assert "StepnormActionUnnormalizerStep" in [type(s).__name__ for s in post.steps]
    assert "UnnormalizerProcessorStep" not in [type(s).__name__ for s in post.steps]  # it had only the action
    assert ProcessorStepRegistry.get(sn.NORMALIZER_NAME) is sn.StepnormActionNormalizerStep

    # Training: a batch of real chunks (half of them padded at episode ends) through the preprocessor.
    picks = pick_frames(episodes, 24, horizon, seed=1)
    chunk_list = [chunk_at(episodes[e][0], None, t, horizon) for e, t in picks]
    batch = {STATE: torch.tensor(np.stack([episodes[e][1][t] for e, t in picks]), dtype=torch.float32),
             "action": torch.tensor(np.stack([c for c, _ in chunk_list]), dtype=torch.float32),
             "action_is_pad": torch.tensor(~np.stack([v for _, v in chunk_list]))}
    batch[ENV] = batch[STATE].clone()
    out = pre(dict(batch))
    want = np.stack([ref.normalize(c, episodes[e][1][t]) for (c, _), (e, t) in zip(chunk_list, picks)])
    err_train = close(out["action"], want, "training chunk normalization")
    # LeRobot's own normalizer still does the observations (with its stats), not the action.
    close(out[STATE], (batch[STATE].numpy() - lr_stats[STATE]["mean"]) / (lr_stats[STATE]["std"] + 1e-8), "state")
    policy.train()
    loss, _ = policy.forward(out)
    loss.backward()
    assert torch.isfinite(loss), loss

    # Why the integration exists: LeRobot's stock unnormalizer with [H, D] statistics (what
    # `stepnorm export --format lerobot` writes per-timestep) broadcasts one [B, D] action against them.
    lo, hi = ref.center - ref.spread, ref.center + ref.spread
    _, stock_post = make_act_pre_post_processors(config, dataset_stats={"action": {
        "mean": ref.center, "std": ref.spread, "min": lo, "max": hi, "q01": lo, "q99": hi}})
    try:
        stock_post(torch.zeros(3, dims))
        raise AssertionError("LeRobot's stock unnormalizer took [3, D] against [H, D] statistics")
    except RuntimeError:
        pass
    assert tuple(stock_post(torch.zeros(horizon, dims)).shape) == (horizon, dims)  # B == H: silently per row

    # Saved and loaded with the processors' config and state, by registry name.
    with tempfile.TemporaryDirectory() as tmp:
        pre.save_pretrained(tmp)
        post.save_pretrained(tmp)
        saved = json.loads((Path(tmp) / "policy_preprocessor.json").read_text())
        names = [s.get("registry_name") for s in saved["steps"]]
        assert sn.NORMALIZER_NAME in names, names
        entry = saved["steps"][names.index(sn.NORMALIZER_NAME)]
        assert "state_file" in entry and "artifact" not in entry["config"], entry
        # what lerobot_record.py / lerobot_eval.py call for a trained policy
        pre2, post2 = make_pre_post_processors(config, pretrained_path=tmp)
        assert torch.equal(pre2(dict(batch))["action"], out["action"]), "reloaded preprocessor differs"
        # statistics swapped at load time (LeRobot's overrides): the given artifact (here with another
        # mode) wins over the saved state
        other = "mean_std" if mode != "mean_std" else "min_max"
        pre3 = PolicyProcessorPipeline.from_pretrained(
            tmp, config_filename="policy_preprocessor.json",
            overrides={sn.NORMALIZER_NAME: {"artifact": str(artifact), "mode": other}})
        ref3 = Reference(artifact, other)
        want3 = np.stack([ref3.normalize(c, episodes[e][1][t]) for (c, _), (e, t) in zip(chunk_list, picks)])
        close(pre3(dict(batch))["action"], want3, "preprocessor with an artifact override")

    # Inference: select_action with n_action_steps < H; every executed action against the reference.
    policy.eval()
    try:
        post2(torch.zeros(1, dims))
        raise AssertionError("the postprocessor ran before attach")
    except RuntimeError as e:
        assert "attach" in str(e)
    sn.attach(policy, post2)
    unwrapped = type(policy).predict_action_chunk
    results = {}
    for batch_size in (1, 3, horizon):
        policy.reset()
        frames = pick_frames(episodes, batch_size * (2 * n_action_steps + 1), horizon, seed=batch_size)
        worst, positions, spread_between_positions = 0.0, set(), 0.0
        for step in range(2 * n_action_steps + 1):
            rows = frames[step * batch_size:(step + 1) * batch_size]
            raw_state = np.stack([episodes[e][1][t] for e, t in rows])
            obs = {STATE: torch.tensor(raw_state, dtype=torch.float32)}
            obs[ENV] = obs[STATE].clone()
            model_in = pre2(obs)
            position = step % n_action_steps
            if position == 0:  # the queue is empty: this call predicts a chunk
                chunk = unwrapped(policy, model_in).numpy()  # the raw model output (deterministic in eval)
                chunk_state = raw_state.astype(np.float32).astype(np.float64)
            action = post2(policy.select_action(model_in)).numpy()
            assert action.shape == (batch_size, dims), action.shape
            want = np.stack([ref.unnormalize_action(chunk[b, position], position, chunk_state[b])
                             for b in range(batch_size)])
            worst = max(worst, close(action, want, f"B={batch_size} executed action {step} (position {position})"))
            if position:
                wrong = np.stack([ref.unnormalize_action(chunk[b, position], 0, chunk_state[b]) for b in range(batch_size)])
                off = np.abs(wrong - want) / np.maximum(1.0, np.abs(want))
                spread_between_positions = max(spread_between_positions, float(off.max()))
            positions.add(position)
        assert positions == set(range(n_action_steps))
        # The check can tell positions apart: position 0's statistics miss by 20x the tolerance.
        assert spread_between_positions > 20 * 1e-5, spread_between_positions
        results[batch_size] = {"max_rel_err": worst, "pos0_stats_max_rel_err": spread_between_positions}
    # ACT's temporal ensembling (n_action_steps 1) averages the unnormalized chunks: LeRobot's own
    # ACTTemporalEnsembler fed the float64 reference chunks gives the same actions.
    te_config = dataclasses.replace(config, temporal_ensemble_coeff=0.01, n_action_steps=1)
    te_policy = ACTPolicy(te_config)
    te_policy.load_state_dict(policy.state_dict())
    te_policy.eval()
    _, te_post = sn.processors(*make_act_pre_post_processors(te_config, dataset_stats=lr_stats), artifact)
    sn.attach(te_policy, te_post)
    ensembler = ACTTemporalEnsembler(0.01, horizon)
    frames = pick_frames(episodes, 3 * 6, horizon, seed=7)
    te_worst = 0.0
    for step in range(6):
        rows = frames[step * 3:(step + 1) * 3]
        raw_state = np.stack([episodes[e][1][t] for e, t in rows])
        model_in = pre2({STATE: torch.tensor(raw_state, dtype=torch.float32), ENV: torch.tensor(raw_state, dtype=torch.float32)})
        chunk = unwrapped(te_policy, model_in).numpy()
        state32 = raw_state.astype(np.float32).astype(np.float64)
        ref_chunk = np.stack([[ref.unnormalize_action(chunk[b, k], k, state32[b]) for k in range(horizon)] for b in range(3)])
        want = ensembler.update(torch.tensor(ref_chunk)).numpy()
        te_worst = max(te_worst, close(te_post(te_policy.select_action(model_in)).numpy(), want, f"temporal ensembling step {step}"))
    return {"temporal_ensembling_max_rel_err": te_worst, "lerobot": lerobot.__version__, "torch": torch.__version__, "horizon": int(horizon), "dims": int(dims),
            "mode": mode, "delta_mask": ref.delta_mask is not None, "n_action_steps": n_action_steps,
            "train_max_rel_err": err_train, "select_action": results}


if __name__ == "__main__":
    if lerobot.__version__ != LEROBOT_VERSION:
        raise SystemExit(f"expected lerobot {LEROBOT_VERSION}, found {lerobot.__version__}")
    if sys.argv[1:] == ["--imports-only"]:
        print(json.dumps({"lerobot": lerobot.__version__, "torch": torch.__version__}))
    else:
        art, data, mode, n = sys.argv[1:5]
        print(json.dumps(main(Path(art), Path(data), mode, int(n))))
