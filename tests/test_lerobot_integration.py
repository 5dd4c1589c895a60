"""stepnorm.integrations.lerobot: per-chunk-position statistics at LeRobot training and inference.

Two layers, both on real datasets (so101 with a delta_mask, unitree without) and both against the
float64 reference of tests/lerobot_env/plain_reference.py:

- here, without LeRobot: the steps and ``attach`` on a duck-typed fake of LeRobot's protocol (a
  transition dict, a policy whose ``select_action`` pops from a queue refilled from
  ``predict_action_chunk``, re-implemented from ACT's), so the module is covered where LeRobot is absent;
- ``test_real_lerobot``: LeRobot 0.4.4's real processor pipeline and ``ACTPolicy`` in .venv-lerobot
  (``make lerobot-env``; LeRobot goes in with ``--no-deps`` because it pins torch<2.11 and the CPU torch
  here is 2.13.0), through tests/lerobot_env/check_lerobot.py in a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np
import pytest
import torch

from lerobot_env.plain_reference import Reference, pick_frames, read_episodes
from reference import chunk_at
from stepnorm.artifact import write_artifact
from stepnorm.artifact import accumulate, artifact_from_accumulators
from stepnorm.config import parse_config
from stepnorm.integrations import lerobot as sn
from stepnorm.sources.base import Episode

REPO = Path(__file__).resolve().parents[1]
LEROBOT_PYTHON = REPO / ".venv-lerobot" / "bin" / "python"
ARM = [True] * 5 + [False]
# name: (dataset dir, horizon, config extras, LeRobot-side mode, n_action_steps < horizon)
CASES = {
    "so101": ("so101_record_test_lerobot_v30", 16,
              {"delta_mask": ARM, "normalization": {"action": {"mode": "q01_q99", "mask": ARM}}}, "q01_q99", 5),
    "unitree": ("unitree_g1_pick_bottle_lerobot_v21", 10,
                # no delta_mask, so the per-timestep decision is asked for explicitly (auto would be off)
                {"normalization": {"action": {"mode": "min_max", "per_timestep": True}}}, "min_max", 7),
}


@pytest.fixture(scope="module")
def artifacts(real_data, tmp_path_factory):
    """``{case: (artifact dir, dataset dir)}``: stepnorm's statistics of each real dataset."""
    out = {}
    for case, (folder, horizon, extras, _, _) in CASES.items():
        data = real_data / folder
        art = tmp_path_factory.mktemp(case) / "stats"
        raw = {"horizon": horizon, "quantiles": [0.01, 0.99],
               "datasets": [{"name": case, "format": "lerobot", "path": str(data)}], **extras}
        cfg = parse_config(raw, where="cfg.yaml")
        episodes = [Episode(case, "real", i, a, s) for i, (a, s) in enumerate(read_episodes(data))]
        acc = accumulate(cfg, case, episodes)
        write_artifact(art, artifact_from_accumulators(cfg, {case: acc}, {case: hashlib.sha256(case.encode()).hexdigest()}))
        out[case] = (art, data)
    return out


class FakeChunkPolicy:
    """ACT's ``select_action`` queue (lerobot 0.4.4 modeling_act.py), re-implemented; the "model"
    returns seeded normalized chunks and remembers each one, so the test knows what was queued."""

    def __init__(self, chunk_size: int, n_action_steps: int, dims: int, first_offset: int = 0):
        self.config = type("Config", (), {"action_delta_indices": list(range(first_offset, first_offset + chunk_size))})()
        self.chunk_size, self.n_action_steps, self.dims = chunk_size, n_action_steps, dims
        self.rng = torch.Generator().manual_seed(0)
        self.chunks = []
        self.reset()

    def reset(self):
        self._queue = deque([], maxlen=self.n_action_steps)

    def predict_action_chunk(self, batch):
        b = batch["observation.state"].shape[0]
        chunk = torch.randn(b, self.chunk_size, self.dims, generator=self.rng, dtype=torch.float64) * 0.7
        self.chunks.append(chunk.clone())
        return chunk

    def select_action(self, batch):
        if not self._queue:
            self._queue.extend(self.predict_action_chunk(batch)[:, : self.n_action_steps].transpose(0, 1))
        return self._queue.popleft()


def close(got, want, rtol):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float((np.abs(got - want) / np.maximum(1.0, np.abs(want))).max()) <= rtol


def steps_for(case, artifacts):
    art, _ = artifacts[case]
    mode = CASES[case][3]
    return (sn.StepnormActionNormalizerStep(art, mode=mode), sn.StepnormActionUnnormalizerStep(art, mode=mode),
            Reference(art, mode))


@pytest.mark.parametrize("case", sorted(CASES))
def test_training_chunks_normalized_per_position(case, artifacts):
    pre, _, ref = steps_for(case, artifacts)
    _, data = artifacts[case]
    episodes = read_episodes(data)
    horizon = CASES[case][1]
    picks = pick_frames(episodes, 20, horizon, seed=3)
    chunks = np.stack([chunk_at(episodes[e][0], None, t, horizon)[0] for e, t in picks])
    states = np.stack([episodes[e][1][t] for e, t in picks])
    for dtype, np_dtype, rtol in ((torch.float64, np.float64, 1e-12), (torch.float32, np.float32, 1e-5)):
        transition = {"observation": {"observation.state": torch.tensor(states, dtype=dtype)},
                      "action": torch.tensor(chunks, dtype=dtype)}
        out = pre(transition)
        assert out["action"].dtype == dtype
        # the reference starts from the same (rounded) inputs
        want = np.stack([ref.normalize(c, s) for c, s in zip(chunks.astype(np_dtype), states.astype(np_dtype))])
        assert close(out["action"], want, rtol)
        # a shorter chunk uses the first h rows
        short = pre({**transition, "action": transition["action"][:, :4]})["action"]
        assert torch.equal(short, out["action"][:, :4])
    assert (sn.REFERENCE_KEY in out["observation"]) == (ref.delta_mask is not None)
    # float32 statistics (devices without float64) stay within float32 precision
    art, _ = artifacts[case]
    pre32 = sn.StepnormActionNormalizerStep(art, mode=CASES[case][3], dtype="float32")
    out32 = pre32({"observation": {"observation.state": torch.tensor(states)}, "action": torch.tensor(chunks)})
    assert pre32.module.global_center.dtype == torch.float32 and out32["action"].dtype == torch.float64
    want = np.stack([ref.normalize(c, s) for c, s in zip(chunks, states)])
    assert close(out32["action"], want, 1e-4) and not close(out32["action"], want, 1e-12)


@pytest.mark.parametrize("case", sorted(CASES))
def test_select_action_uses_each_position(case, artifacts):
    """Every executed action, for batch sizes 1, 3 and H and n_action_steps < H, is unnormalized
    with its own chunk position's statistics (and the chunk's state added back on delta dims)."""
    pre, post, ref = steps_for(case, artifacts)
    _, data = artifacts[case]
    episodes = read_episodes(data)
    horizon, n_steps = CASES[case][1], CASES[case][4]
    dims = ref.center.shape[1]
    for batch_size in (1, 3, horizon):
        policy = FakeChunkPolicy(horizon, n_steps, dims)
        post_b = sn.StepnormActionUnnormalizerStep(**post.get_config())
        post_b.load_state_dict(post.state_dict())
        sn.attach(policy, type("Pipeline", (), {"steps": [post_b]})())
        frames = pick_frames(episodes, batch_size * (2 * n_steps + 2), horizon, seed=batch_size)
        for step in range(2 * n_steps + 2):
            rows = frames[step * batch_size:(step + 1) * batch_size]
            state = np.stack([episodes[e][1][t] for e, t in rows])
            batch = pre({"observation": {"observation.state": torch.tensor(state)}})["observation"]
            position = step % n_steps
            if position == 0:
                chunk_state = state
            action = post_b({"action": policy.select_action(batch)})["action"]
            raw = policy.chunks[-1][:, position].numpy()
            want = np.stack([ref.unnormalize_action(raw[b], position, chunk_state[b]) for b in range(batch_size)])
            assert close(action, want, 1e-12), (batch_size, step)
            if position:  # position 0's statistics would give other numbers: the check can fail
                wrong = np.stack([ref.unnormalize_action(raw[b], 0, chunk_state[b]) for b in range(batch_size)])
                assert not close(wrong, want, 1e-6)
        assert len(policy.chunks) == 3


def test_saved_config_and_state_rebuild_the_steps(artifacts):
    pre, post, _ = steps_for("so101", artifacts)
    config = pre.get_config()
    json.dumps(config)  # LeRobot writes it as JSON
    assert config["mask"] == ARM and config["mode"] == "q01_q99" and config["fingerprint"]
    state = pre.state_dict()
    assert state["delta_mask"].tolist() == ARM
    rebuilt = sn.StepnormActionNormalizerStep(**config)
    with pytest.raises(RuntimeError, match="no statistics"):
        rebuilt({"action": torch.zeros(1, 16, 6), "observation": {"observation.state": torch.zeros(1, 6)}})
    rebuilt.load_state_dict(state)
    transition = {"action": torch.randn(2, 16, 6, dtype=torch.float64) * 20,
                  "observation": {"observation.state": torch.randn(2, 6, dtype=torch.float64) * 20}}
    assert torch.equal(rebuilt(transition)["action"], pre(transition)["action"])
    # An artifact given explicitly (LeRobot's from_pretrained overrides) wins over saved state.
    other, _ = artifacts["unitree"]
    swapped = sn.StepnormActionNormalizerStep(other, mode="min_max")
    swapped.load_state_dict(state)
    assert swapped.module.dim == 26 and swapped.delta_mask is None


def test_refusals(artifacts):
    pre, post, _ = steps_for("so101", artifacts)
    with pytest.raises(ValueError, match=r"chunks \[B, h, D\]"):
        pre({"action": torch.zeros(3, 6), "observation": {"observation.state": torch.zeros(3, 6)}})
    with pytest.raises(ValueError, match="observation.state"):
        pre({"action": torch.zeros(3, 16, 6), "observation": {}})
    with pytest.raises(ValueError, match="one state of at least 5 dims per chunk, batch shape \\[3\\]"):
        pre({"action": torch.zeros(3, 16, 6), "observation": {"observation.state": torch.zeros(3, 2, 6)}})
    with pytest.raises(ValueError, match="longer than"):
        pre({"action": torch.zeros(1, 17, 6), "observation": {"observation.state": torch.zeros(1, 6)}})
    with pytest.raises(RuntimeError, match="attach"):
        post({"action": torch.zeros(1, 6)})
    pipeline = type("Pipeline", (), {"steps": [post]})()
    with pytest.raises(ValueError, match="frame offset"):
        sn.attach(FakeChunkPolicy(16, 4, 6, first_offset=-1), pipeline)  # e.g. diffusion with n_obs_steps=2
    policy = sn.attach(FakeChunkPolicy(16, 4, 6), pipeline)
    with pytest.raises(ValueError, match="already attached"):
        sn.attach(policy, pipeline)
    with pytest.raises(ValueError, match=sn.REFERENCE_KEY):
        policy.select_action({"observation.state": torch.zeros(2, 6)})  # the preprocessor step did not run
    with pytest.raises(ValueError, match="dtype"):
        sn.StepnormActionNormalizerStep(dtype="float16")


@pytest.mark.parametrize("case", sorted(CASES))
def test_real_lerobot(case, artifacts):
    """LeRobot 0.4.4's real pipeline, registry, save/load and ACTPolicy.select_action (see module doc)."""
    if not LEROBOT_PYTHON.exists():
        pytest.fail(f"the LeRobot test environment is missing ({LEROBOT_PYTHON}): run `make lerobot-env`")
    art, data = artifacts[case]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([str(LEROBOT_PYTHON), str(REPO / "tests" / "lerobot_env" / "check_lerobot.py"), str(art),
                           str(data), CASES[case][3], str(CASES[case][4])],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["lerobot"] == "0.4.4"
    assert summary["horizon"] == CASES[case][1] and summary["n_action_steps"] == CASES[case][4]
    assert summary["delta_mask"] == (case == "so101")
    assert sorted(summary["select_action"], key=int) == ["1", "3", str(CASES[case][1])]
    assert "temporal_ensembling_max_rel_err" in summary
    print(case, json.dumps(summary), file=sys.stderr)


# -- processors() on duck-typed LeRobot pipelines (LeRobot's dataclass fields and registry names) ------
class FeatureType(Enum):
    STATE = "STATE"
    ACTION = "ACTION"


class Mode(Enum):
    MEAN_STD = "MEAN_STD"
    QUANTILES = "QUANTILES"
    QUANTILE10 = "QUANTILE10"


@dataclass
class FakeLeRobotNormalizer:
    features: dict
    norm_map: dict
    stats: dict | None = None
    _registry_name = "normalizer_processor"


@dataclass
class FakeLeRobotUnnormalizer(FakeLeRobotNormalizer):
    _registry_name = "unnormalizer_processor"


@dataclass
class FakeDevice:
    device: str = "cpu"


@dataclass
class FakePipeline:
    steps: list = field(default_factory=list)
    name: str = "policy_preprocessor"


def fake_pipelines(action_mode=Mode.QUANTILES):
    features = {"observation.state": ("STATE", (6,)), "action": ("ACTION", (6,))}
    norm_map = {FeatureType.STATE: Mode.MEAN_STD, FeatureType.ACTION: action_mode}
    stats = {"observation.state": {"mean": [0.0] * 6}, "action": {"mean": [0.0] * 6}}
    pre = FakePipeline([FakeDevice(), FakeLeRobotNormalizer(dict(features), norm_map, dict(stats))])
    post = FakePipeline([FakeLeRobotUnnormalizer({"action": features["action"]}, norm_map, dict(stats)), FakeDevice()],
                        "policy_postprocessor")
    return pre, post


def test_processors_rewrite_lerobot_pipelines(artifacts):
    art, _ = artifacts["so101"]
    pre, post = fake_pipelines()
    new_pre, new_post = sn.processors(pre, post, art)
    assert [type(s) for s in new_pre.steps] == [FakeDevice, sn.StepnormActionNormalizerStep, FakeLeRobotNormalizer]
    kept = new_pre.steps[2]
    assert list(kept.features) == ["observation.state"] and list(kept.stats) == ["observation.state"]
    assert "action" in pre.steps[1].stats  # the input pipelines are left as they were
    # the unnormalizer had only the action: it is replaced, not kept
    assert [type(s) for s in new_post.steps] == [sn.StepnormActionUnnormalizerStep, FakeDevice]
    assert new_pre.name == pre.name and new_post.name == "policy_postprocessor"
    # QUANTILES -> q01_q99, with the artifact config's mask
    assert new_pre.steps[1].get_config()["mode"] == "q01_q99" and new_pre.steps[1].mask == ARM
    assert sn.processors(pre, post, art, mode="mean_std")[0].steps[1].mode == "mean_std"
    # an unnormalizer that also does something else stays, without the action, before stepnorm's
    post.steps[0].features["observation.state"] = ("STATE", (6,))
    steps = sn.processors(pre, post, art)[1].steps
    assert [type(s) for s in steps] == [FakeLeRobotUnnormalizer, sn.StepnormActionUnnormalizerStep, FakeDevice]
    assert list(steps[0].features) == ["observation.state"] and "action" not in steps[0].stats


def test_processors_refusals(artifacts):
    art, _ = artifacts["so101"]
    with pytest.raises(ValueError, match="QUANTILE10 for actions has no stepnorm equivalent"):
        sn.processors(*fake_pipelines(Mode.QUANTILE10), art)
    pre, post = fake_pipelines()
    with pytest.raises(ValueError, match="one LeRobot normalizer_processor step in the preprocessor, found 0"):
        sn.processors(FakePipeline([FakeDevice()]), post, art)
    with pytest.raises(ValueError, match="one LeRobot unnormalizer_processor step in the postprocessor, found 0"):
        sn.processors(pre, FakePipeline([FakeDevice()]), art)
