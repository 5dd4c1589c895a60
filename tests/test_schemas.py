"""The config's and the artifact's JSON Schemas: valid, shipped, agreeing with the code, one-line errors."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import yaml

from stepnorm import artifact, schemas
from stepnorm.config import parse_config
from stepnorm.errors import ArtifactError, ConfigError
from stepnorm.normalize import MODES, PER_TIMESTEP_CHOICES
from stepnorm.stats.combine import WEIGHTINGS

REPO = Path(__file__).resolve().parents[1]


def test_schemas_are_valid_json_schemas_shipped_with_the_package():
    for name in schemas.SCHEMAS:
        text = resources.files("stepnorm.schemas").joinpath(f"{name}.schema.json").read_text("utf-8")
        doc = json.loads(text)
        jsonschema.validators.validator_for(doc).check_schema(doc)
    with pytest.raises(ValueError, match="unknown schema 'nope'"):
        schemas.schema("nope")


def test_schema_choices_agree_with_the_code():
    cfg = schemas.schema("config")
    norm = cfg["$defs"]["norm_spec"]["properties"]
    assert tuple(norm["mode"]["enum"]) == MODES
    assert tuple(norm["per_timestep"]["enum"]) == PER_TIMESTEP_CHOICES
    assert tuple(cfg["properties"]["weighting"]["enum"]) == WEIGHTINGS
    stats = schemas.schema("stats")
    assert stats["properties"]["format"]["const"] == artifact.FORMAT
    assert stats["properties"]["version"]["const"] == artifact.VERSION
    assert tuple(stats["$defs"]["combined"]["properties"]["weighting"]["enum"]) == WEIGHTINGS
    assert stats["$defs"]["dataset"]["properties"]["domain"]["enum"] == \
        cfg["$defs"]["dataset"]["properties"]["domain"]["enum"]


CONFIGS = [p for p in sorted((REPO / "configs").glob("*.yaml")) if p.name != "validators.yaml"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_the_repository_configs_follow_the_schema(path):
    assert schemas.first_problem(yaml.safe_load(path.read_text()), "config") is None


def test_the_demo_config_follows_the_schema(sample_dir):
    assert schemas.first_problem(yaml.safe_load((sample_dir / "config.yaml").read_text()), "config") is None


BASE = {"horizon": 4, "datasets": [{"name": "a", "format": "rlds", "path": "/tmp"}]}
CONFIG_CASES = [
    (lambda c: c.update(horizon="4"), "horizon must be an integer >= 1, got '4'"),
    (lambda c: c.update(horizon=True), "horizon must be an integer >= 1, got True"),
    (lambda c: c.update(horizon=5000), "horizon must be at most 4096, got 5000"),
    (lambda c: c.update(quantiles=[]), "quantiles must be a non-empty list of numbers in (0, 1), got []"),
    (lambda c: c.update(weighting="x"), "weighting must be one of samples, mixture, got 'x'"),
    (lambda c: c.update(delta_mask=[True, 1]), "delta_mask must be a non-empty list of true/false, got [True, 1]"),
    (lambda c: c.update(normalization={"action": {"mode": "z"}}),
     "normalization.action.mode must be one of mean_std, min_max, q01_q99, got 'z'"),
    (lambda c: c.update(normalization={"action": {"per_timestep": 1}}),
     "normalization.action.per_timestep must be auto, true or false, got 1"),
    (lambda c: c.update(normalization={"act": {}}), "unknown key normalization.act (allowed: action, state)"),
    (lambda c: c.update(normalization=None), "normalization must be a mapping of key -> {mode, mask, clip}, got None"),
    (lambda c: c.update(model=[1]), "model must be a mapping, got [1]"),
    (lambda c: c.update(sketch_k=4), "sketch_k must be an integer >= 8, got 4"),
    (lambda c: c.update(datasets=[]), "datasets must be a non-empty list, got []"),
    (lambda c: c["datasets"][0].pop("path"), "datasets[0] is missing required key 'path'"),
    (lambda c: c["datasets"][0].update(format="hdf5"), "datasets[0].format must be one of rlds, lerobot, got 'hdf5'"),
    (lambda c: c["datasets"][0].update(weight="1"), "datasets[0].weight must be a finite number > 0, got '1'"),
    (lambda c: c["datasets"][0].update(state_key=5),
     "datasets[0].state_key must be a non-empty string or (rlds) a list of them, got 5"),
    (lambda c: c["datasets"][0].update(gripper_dims=[-1]),
     "datasets[0].gripper_dims[0] must be a non-negative integer (an action dim), got -1"),
    (lambda c: c["datasets"][0].update(image_keys="rgb"), "datasets[0].image_keys must be a list of strings, got 'rgb'"),
    (lambda c: c["datasets"][0].update(max_frames=0), "datasets[0].max_frames must be an integer >= 1, got 0"),
    # two faults: the one earlier in the document is reported, every time
    (lambda c: c["datasets"][0].update(zz=1, weight=-1),
     "unknown key datasets[0].zz (allowed: action_key, domain, format, gripper_dims, image_keys, max_frames, name, "
     "path, position_dims, split, splits, state_key, stats_split, transforms, weight)"),
]


@pytest.mark.parametrize("mutate, message", CONFIG_CASES)
def test_config_schema_errors_are_one_line_naming_the_key(mutate, message):
    raw = copy.deepcopy(BASE)
    mutate(raw)
    with pytest.raises(ConfigError) as err:
        parse_config(raw, "cfg.yaml")
    assert str(err.value) == f"cfg.yaml: {message}"


def test_config_schema_error_through_the_cli_is_exit_2_and_one_line(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"horizon": 4, "weighting": "x", "datasets": [
        {"name": "a", "format": "rlds", "path": str(tmp_path)}]}))
    run = subprocess.run([sys.executable, "-m", "stepnorm.cli", "stats", str(tmp_path / "c.yaml"), "--out",
                          str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"stepnorm: error: {tmp_path / 'c.yaml'}: weighting must be one of samples, mixture, got 'x'"]
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def stats_doc(tmp_path_factory, sample_dir):
    from stepnorm.cli import main

    out = tmp_path_factory.mktemp("schema") / "stats"
    assert main(["stats", str(sample_dir / "config.yaml"), "--out", str(out)]) == 0
    return json.loads((out / "stats.json").read_text())


ARTIFACT_CASES = [
    (lambda d: d["combined"]["action"]["pooled"].update(mean=["x"]),
     "combined.action.pooled.mean[0] must be a number, null, or an array of them, got 'x'"),
    (lambda d: d["config"].update(horizon=0), "config.horizon must be an integer >= 1, got 0"),
    (lambda d: next(iter(d["datasets"].values()))["action"].pop("pooled"), "action is missing required key 'pooled'"),
    (lambda d: d.update(datasets={}), "datasets must be an object of dataset name -> statistics, with at least one"),
    (lambda d: d.update(fingerprint="abc"), "fingerprint must be a sha256 hex digest, got 'abc'"),
    (lambda d: d["combined"]["action"]["global"].update(count=-3), "combined.action.global.count must be a count"),
    (lambda d: d["combined"]["action"]["global"].update(extra=[1.0]),
     "unknown key combined.action.global.extra"),
    (lambda d: d["action_statistics"].update(block="nope"), "action_statistics.block must be one of per_timestep"),
]


def test_a_real_artifact_follows_the_schema(stats_doc):
    assert schemas.first_problem(stats_doc, "stats") is None


@pytest.mark.parametrize("mutate, message", ARTIFACT_CASES)
def test_artifact_schema_errors_name_the_path(stats_doc, mutate, message, tmp_path):
    doc = copy.deepcopy(stats_doc)
    mutate(doc)
    (tmp_path / "stats.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError) as err:
        artifact.read_artifact(tmp_path)
    assert message in str(err.value) and str(err.value).startswith(str(tmp_path / "stats.json"))
