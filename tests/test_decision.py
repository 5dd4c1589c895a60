"""One decision, every path: the same chunk gets the same normalized values everywhere.

For ``normalization.action.per_timestep`` auto / true / false, with and without a delta_mask, one
artifact of the real so101 dataset is computed with ``stepnorm stats``; then every path that
normalizes actions is run on the same raw chunks (float64, built here from the parquet files):
``stepnorm normalize``'s ``steps/action_chunk``, the numpy ``Normalizer``, the torch and jax
adapters' ``from_artifact``, and each export as its consumer applies it (openpi through
``stepnorm.integrations.openpi``, LeRobot's broadcast formula, robomimic's ``[1, D]`` row or, for a
per-timestep decision, ``stepnorm.integrations.robomimic``, Octo's bounds where its one vector is
the decision). Each must equal the q01/q99 formula written out here with the block the decision
names (``per_timestep``, ``pooled`` or ``global``, also derived here).
"""

import json
import warnings

import numpy as np
import pytest
import yaml
from reference import chunks
from test_exporters import lerobot_normalize, octo_normalize, read_lerobot_episodes, robomimic_normalize
from test_normalize_pipeline import _load_rlds, expected_block

from stepnorm.artifact import read_artifact
from stepnorm.cli import main
from stepnorm.exporters import run_export
from stepnorm.integrations import openpi as sn_openpi
from stepnorm.integrations.robomimic import ChunkNormalizer
from stepnorm.normalize import Normalizer

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")

from stepnorm import jax_norm  # noqa: E402  (after the optional-dependency skips)
from stepnorm.torch_norm import Normalize  # noqa: E402

H = 8
DATASET = "so101_record_test_lerobot_v30"
MASK = [True] * 5 + [False]
DELTA = [True] * 5 + [False]


@pytest.fixture(scope="module")
def episodes(real_data):
    return read_lerobot_episodes(real_data / DATASET)


@pytest.fixture(scope="module", params=[("auto", True), (True, True), (False, True),
                                        ("auto", False), (True, False), (False, False)],
                ids=lambda p: f"per_timestep={p[0]}-{'delta' if p[1] else 'absolute'}")
def run(request, real_data, tmp_path_factory):
    """``stepnorm stats`` and ``stepnorm normalize`` for one setting; returns (dir, config)."""
    setting, with_delta = request.param
    root = tmp_path_factory.mktemp("decision")
    cfg = {"horizon": H, "quantiles": [0.01, 0.99],
           "normalization": {"action": {"mode": "q01_q99", "mask": MASK, "clip": False, "per_timestep": setting}},
           "datasets": [{"name": "so101", "format": "lerobot", "path": str(real_data / DATASET),
                         "action_key": "action", "state_key": "observation.state"}]}
    if with_delta:
        cfg["delta_mask"] = DELTA
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["stats", str(root / "config.yaml"), "--out", str(root / "stats")]) == 0
    assert main(["normalize", str(root / "config.yaml"), "--stats", str(root / "stats"), "--out", str(root / "out")]) == 0
    return root, cfg


def _reference(x, stats, mask):
    """q01_q99 unclipped, masked-off dims untouched, from the stats.json block (float64)."""
    lo, hi = np.asarray(stats["q01"], np.float64), np.asarray(stats["q99"], np.float64)
    return np.where(np.asarray(mask), 2 * (x - lo) / (hi - lo) - 1, x)


def _check(got, want, valid, label, rtol):
    on = np.broadcast_to(np.asarray(MASK), want.shape) & np.broadcast_to(valid[..., None], want.shape)
    got = np.asarray(got, np.float64)
    err = np.abs(got - want)[on]
    tol = (rtol * (1 + np.abs(want)))[on]
    assert (err <= tol).all(), f"{label}: max error {err.max()} (|y| up to {np.abs(want[on]).max()})"


def test_every_path_gives_the_same_numbers(run, episodes, tmp_path):
    root, cfg = run
    block = expected_block(cfg)
    delta = cfg.get("delta_mask")
    art = read_artifact(root / "stats")
    assert art.doc["action_statistics"]["block"] == block
    stats = art.doc["combined"]["action"][block]
    x, valid = chunks(episodes, H, delta)
    want = _reference(x, stats, MASK)
    assert np.isfinite(want[valid]).all()

    # stepnorm normalize: the written chunks (float32), in episode order
    out_eps, builder = _load_rlds(root / "out" / "so101" / "1.0.0", "train")
    assert builder.info.metadata["stepnorm"]["action_statistics"]["block"] == block
    manifest = json.loads((root / "out" / "MANIFEST.json").read_text())
    assert manifest["action_statistics"]["block"] == block
    written = np.concatenate([ep["steps"]["action_chunk"] for ep in out_eps])
    _check(written, want, valid, "stepnorm normalize", 2e-6)

    # the adapters, from the artifact alone
    numpy_norm = Normalizer.from_artifact(art)
    assert numpy_norm.block == block and (numpy_norm.horizon is not None) == (block == "per_timestep")
    _check(numpy_norm.normalize(x), want, valid, "numpy", 1e-9)
    _check(Normalize.from_artifact(art, dtype=torch.float64)(torch.from_numpy(x)).numpy(), want, valid, "torch", 1e-9)
    _check(jax.jit(jax_norm.normalize)(jax_norm.params_from_artifact(art), x.astype(np.float32)), want, valid, "jax",
           2e-5)

    # LeRobot's processor step (stepnorm.integrations.lerobot): the statistics it holds follow the decision
    from stepnorm.integrations import lerobot as sn_lerobot

    step = sn_lerobot.StepnormActionNormalizerStep(root / "stats", mode="q01_q99")
    assert step.module.has_per_timestep == (block == "per_timestep")
    y = step.module(torch.from_numpy(x).to(torch.float64), chunked=step.module.has_per_timestep).numpy()
    _check(y, want, valid, "lerobot integration", 1e-9)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exports' warnings are checked in test_exporters
        # openpi: both files through the integration (q01/q99, the config's mask, no clipping)
        run_export(root / "stats", "openpi", tmp_path / "openpi")
        normalize, _ = sn_openpi.transforms_from_assets(tmp_path / "openpi", use_quantiles=True, mask=MASK)
        _check(normalize({"actions": x.copy()})["actions"], want, valid, "openpi", 1e-9)

        # LeRobot: the exported arrays broadcast over [N, H, D] (training)
        doc = json.loads(run_export(root / "stats", "lerobot", tmp_path / "lerobot")[0].read_text())
        lerobot = {k: np.asarray(v) for k, v in doc["action"].items()}
        _check(lerobot_normalize(x, lerobot, "QUANTILES"), want, valid, "lerobot", 1e-7)

        # robomimic: its [1, D] row where the decision is one vector, else the chunk helper
        doc = json.loads(run_export(root / "stats", "robomimic", tmp_path / "robomimic")[0].read_text())
        if block == "per_timestep":
            _check(ChunkNormalizer.from_artifact(art).normalize(x), want, valid, "robomimic chunks", 1e-9)
        else:
            entry = doc["action_normalization_stats"]["actions"]
            _check(robomimic_normalize(x, entry), want, valid, "robomimic", 3e-6)

        # Octo: one [D] vector of the stored actions; the same numbers only when that is the decision
        doc = json.loads(run_export(root / "stats", "octo", tmp_path / "octo")[0].read_text())["so101"]
        if block == "global" and delta is None:
            y = octo_normalize(x, doc["action"])
            inside = valid & (np.abs(want) < 1).all(axis=-1)  # Octo clips to [-1, 1]
            _check(y, want, inside, "octo", 1e-6)


@pytest.mark.parametrize("value, message", [
    ("yes", "must be auto, true or false"),
    (1, "must be auto, true or false"),
])
def test_per_timestep_config_values(value, message, tmp_path):
    from stepnorm.config import parse_config
    from stepnorm.errors import ConfigError

    ds = {"name": "d", "format": "lerobot", "path": str(tmp_path)}
    with pytest.raises(ConfigError, match=message):
        parse_config({"horizon": 4, "datasets": [ds], "normalization": {"action": {"per_timestep": value}}})
    with pytest.raises(ConfigError, match="only actions have per-timestep"):
        parse_config({"horizon": 4, "datasets": [ds], "normalization": {"state": {"per_timestep": True}}})


@pytest.mark.parametrize("setting, delta, block", [
    ("auto", None, "global"), ("auto", [True, False], "per_timestep"), (True, None, "per_timestep"),
    (False, [True, False], "pooled"), (False, None, "global"), (True, [True, False], "per_timestep"),
])
def test_resolved_decision(setting, delta, block, tmp_path):
    from stepnorm.config import parse_config

    raw = {"horizon": 4, "datasets": [{"name": "d", "format": "lerobot", "path": str(tmp_path)}],
           "normalization": {"action": {"per_timestep": setting}}}
    if delta:
        raw["delta_mask"] = delta
    decision = parse_config(raw).action_decision()
    assert (decision.block, decision.per_timestep) == (block, block == "per_timestep")


def test_overrides_warn_naming_both(run, tmp_path):
    """An adapter or export asked for another block than the decision says so, naming both."""
    from stepnorm.normalize import DecisionWarning

    root, cfg = run
    art = read_artifact(root / "stats")
    decided = art.decision.block
    other = False if decided == "per_timestep" else True
    with pytest.warns(DecisionWarning, match=f"is {decided!r}"):
        Normalizer.from_artifact(art, per_timestep=other)
    with pytest.warns(DecisionWarning, match=f"the lerobot export uses .* but the artifact's decision .* is {decided!r}"):
        run_export(root / "stats", "lerobot", tmp_path / "l", per_timestep=other)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DecisionWarning)
        Normalizer.from_artifact(art)  # following the decision: no warning
        run_export(root / "stats", "lerobot", tmp_path / "l2")
