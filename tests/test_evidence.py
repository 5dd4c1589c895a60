"""bench/evidence: the experiment's pieces against independent references, and ``run.py --quick``.

The quick run is a smoke test of the whole command (train, evaluate, table, JSON, plots); it
never looks at a success figure: those are the experiment's results (docs/evidence.md), not
properties of the code.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EVIDENCE = ROOT / "bench" / "evidence"
sys.path.insert(0, str(EVIDENCE))

import analysis  # noqa: E402
import experiment as ex  # noqa: E402
import pointmass as pm  # noqa: E402


@pytest.fixture(scope="module")
def demos():
    return ex.make_episodes(np.random.default_rng(3), 12, "t")


@pytest.mark.parametrize("delta, horizon", [(True, 16), (False, 16), (True, 50)])
def test_statistics_match_the_training_targets(demos, delta, horizon):
    """The accumulator's pooled and per-timestep moments are those of the masked chunk targets
    the policy trains on (two-pass float64 reference over the same chunks)."""
    stats = ex.statistics(demos, horizon, delta)
    targets, valid = zip(*(ex.chunk_targets(ep, horizon, delta) for ep in demos))
    targets, valid = np.concatenate(targets), np.concatenate(valid)
    for k in (0, horizon // 2, horizon - 1):
        v = targets[valid[:, k], k]
        assert stats["per_timestep"]["count"][k] == len(v)
        np.testing.assert_allclose(stats["per_timestep"]["mean"][k], v.mean(0), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(stats["per_timestep"]["std"][k], np.sqrt(((v - v.mean(0)) ** 2).mean(0)), rtol=1e-9)
    pooled = targets[valid]
    np.testing.assert_allclose(stats["pooled"]["std"], np.sqrt(((pooled - pooled.mean(0)) ** 2).mean(0)), rtol=1e-9)
    # chunk semantics: A_t[k] = a_{t+k} (- s_t), padding where t + k >= T
    ep = demos[0]
    t, k = 97, 2
    expect = ep.action[t + k].astype(float) - (ep.state[t, :2] if delta else 0.0)
    np.testing.assert_allclose(targets[t, k], expect)  # demos[0] comes first in the concatenation
    assert valid[t, k] and not valid[t, 3]


def test_reweighted_global_loss_equals_the_per_timestep_loss(demos):
    """(x - m_g)^2 / s_g^2 * (s_g / s_k)^2 == ((x - m_k) - (y - m_k))^2 / s_k^2: the control condition
    has the per-timestep loss as a function of the raw prediction."""
    rng = np.random.default_rng(0)
    stats = ex.statistics(demos, 16, True)
    targets = torch.as_tensor(rng.normal(0, 0.2, (64, 16, 2)))
    preds = torch.as_tensor(rng.normal(0, 0.2, (64, 16, 2)))
    losses = {}
    for norm in ("per_timestep", "reweight"):
        c = ex.Condition(horizon=16, norm=norm)
        normalize, _, chunked = ex.make_normalizers(stats, c)
        w = torch.as_tensor(ex.loss_weights(stats, c))
        losses[norm] = ((normalize(preds, chunked=chunked) - normalize(targets, chunked=chunked)) ** 2 * w).mean()
    assert float(losses["reweight"]) == pytest.approx(float(losses["per_timestep"]), rel=1e-12)
    assert np.all(ex.loss_weights(stats, ex.Condition(horizon=16)) == 1.0)


def test_expert_solves_the_task():
    """The scripted expert (with its command noise) reaches the goal and never touches the disc."""
    rng = np.random.default_rng(11)
    tasks = pm.sample_tasks(rng, 300)
    assert np.all(np.linalg.norm(tasks["goal"] - tasks["start"], axis=1) >= pm.MIN_GOAL_DIST)
    _, actions = pm.expert_demos(rng, tasks)
    out = pm.outcome(np.concatenate([tasks["start"][:, None], actions], 1), tasks)
    assert not out["collided"].any() and out[f"success@{pm.MAIN_TOLERANCE}"].mean() >= 0.99


def test_segment_distance_reference():
    p, q, c = np.array([[0.0, 0.0]] * 3), np.array([[1.0, 0.0]] * 3), np.array([[0.5, 0.3], [-0.4, 0.3], [2.0, 0.0]])
    np.testing.assert_allclose(pm.segment_distance(p, q, c), [0.3, 0.5, 1.0])


def test_hierarchical_bootstrap():
    const = np.ones((5, 40))
    assert analysis.hierarchical_bootstrap(const) == (1.0, 1.0, 1.0)
    rng = np.random.default_rng(1)
    # seeds that differ a lot: the CI must reflect the seed spread, not only the 5 x 400 episodes
    m = (rng.random((5, 400)) < np.array([0.1, 0.3, 0.5, 0.7, 0.9])[:, None]).astype(float)
    mean, lo, hi = analysis.hierarchical_bootstrap(m)
    assert mean == pytest.approx(m.mean()) and lo < mean < hi
    episode_only = 1.96 * m.std() / np.sqrt(m.size)
    assert (hi - lo) / 2 > 3 * episode_only


def test_quick_run_writes_its_outputs(tmp_path):
    out = tmp_path / "ev"
    cmd = [sys.executable, str(EVIDENCE / "run.py"), "--quick", "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    runs = sorted((out / "runs").glob("*.json"))
    assert len(runs) == 6
    doc = json.loads(runs[0].read_text())
    assert len(doc["success"]["success@0.02"]) == doc["condition"]["n_eval"]
    summary = json.loads((out / "summary.json").read_text())
    assert {c["condition"]["norm"] for c in summary["conditions"]} == {"global", "per_timestep", "reweight"}
    table = (out / "table.md").read_text()
    assert table.startswith("| actions, H |") and table.count("\n") == 2 + 3
    for png in ("success.png", "chunk_error.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second run reuses every result; a directory the command did not write is refused
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "6 reused, 0 to train" in again.stdout
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    refused = subprocess.run([sys.executable, str(EVIDENCE / "run.py"), "--quick", "--out", str(foreign)],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and refused.stderr.startswith("stepnorm: error: ")
    assert len(refused.stderr.strip().splitlines()) == 1 and (foreign / "notes.txt").read_text() == "keep"
