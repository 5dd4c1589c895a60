"""`stepnorm stats` / `stepnorm sample` end to end: Beam pipeline, RLDS + LeRobot, cache, bad input."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from reference import assert_stats_match, chunk_entries

from stepnorm.cli import main

Q = [0.01, 0.5, 0.99]


def _copy_sample(sample_dir, tmp_path):
    dst = tmp_path / "sample"
    shutil.copytree(sample_dir, dst)
    return dst


def _tfds_reference(path, split, action_key="action", state_key=("observation", "state")):
    """Episodes decoded by TFDS's own tf.data pipeline (independent of stepnorm's parser)."""
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(path))
    episodes = []
    for ep in tfds.as_numpy(builder.as_dataset(split=split)):
        steps = list(ep["steps"])  # nested RLDS steps come back as an iterable of step dicts
        action = np.stack([s[action_key] for s in steps]).astype(np.float64)
        state = np.stack([s[state_key[0]][state_key[1]] for s in steps]).astype(np.float64)
        episodes.append((action, state))
    return episodes


def test_sample_stats_match_tfds_reference(sample_dir, tmp_path, capsys):
    assert main(["stats", str(sample_dir / "config.yaml"), "--out", str(tmp_path / "stats")]) == 0
    out = capsys.readouterr().out
    assert "sim_pick" in out and "computed" in out
    doc = json.loads((tmp_path / "stats" / "stats.json").read_text())
    assert set(doc["datasets"]) == {"sim_pick", "real_pick"}
    delta_mask = yaml.safe_load((sample_dir / "config.yaml").read_text())["delta_mask"]
    all_eps = []
    for name in ("sim_pick", "real_pick"):
        eps = _tfds_reference(sample_dir / name / "1.0.0", "train")
        all_eps += eps
        block = doc["datasets"][name]
        assert block["num_episodes"] == len(eps)
        per_k = chunk_entries(eps, 8, delta_mask)
        for k in (0, 3, 7):
            got = {f: np.asarray(v[k], float) for f, v in block["action"]["per_timestep"].items()}
            assert_stats_match(got, per_k[k], Q, label=f"{name} k={k}")
    per_k = chunk_entries(all_eps, 8, delta_mask)
    got = {f: np.asarray(v[5], float) for f, v in doc["combined"]["action"]["per_timestep"].items()}
    assert_stats_match(got, per_k[5], Q, label="combined k=5")


def test_multi_processing_equals_in_process(sample_dir, tmp_path):
    cfg = str(sample_dir / "config.yaml")
    assert main(["stats", cfg, "--out", str(tmp_path / "a")]) == 0
    assert main(["stats", cfg, "--out", str(tmp_path / "b"), "--direct_running_mode", "multi_processing",
                 "--direct_num_workers", "2"]) == 0
    a = json.loads((tmp_path / "a" / "stats.json").read_text())
    b = json.loads((tmp_path / "b" / "stats.json").read_text())
    assert a["fingerprint"] == b["fingerprint"]
    for kind in ("global", "per_timestep", "pooled"):
        for field in ("count", "mean", "std", "min", "max"):
            np.testing.assert_allclose(np.asarray(a["combined"]["action"][kind][field], float),
                                       np.asarray(b["combined"]["action"][kind][field], float), rtol=1e-12)


def test_cache_reuse_and_invalidation(sample_dir, tmp_path, capsys):
    root = _copy_sample(sample_dir, tmp_path)
    cfg_path = root / "config.yaml"
    out = str(tmp_path / "stats")

    def run(*extra):
        capsys.readouterr()
        assert main(["stats", str(cfg_path), "--out", out, *extra]) == 0
        lines = capsys.readouterr().out.splitlines()
        return {ln.split()[0]: ln.split()[1] for ln in lines if ln.startswith("  ")}

    assert run() == {"sim_pick": "computed", "real_pick": "computed"}
    assert run() == {"sim_pick": "reused", "real_pick": "reused"}
    # changed weights: no dataset re-read, combined statistics change
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["weighting"] = "mixture"
    cfg["datasets"][0]["weight"] = 3.0
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert run() == {"sim_pick": "reused", "real_pick": "reused"}
    assert json.loads((Path(out) / "stats.json").read_text())["combined"]["weighting"] == "mixture"
    # a rewritten shard (same bytes, new mtime) changes its dataset's key
    shard = sorted((root / "real_pick" / "1.0.0").glob("*train.tfrecord*"))[0]
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    assert run() == {"sim_pick": "reused", "real_pick": "computed"}
    # a transform on one dataset: applied to the cached values, no data read
    before = json.loads((Path(out) / "stats.json").read_text())
    cfg["datasets"][1]["transforms"] = [{"name": "invert_gripper", "args": {"dim": 6, "low": 0.0, "high": 1.0}}]
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert run() == {"sim_pick": "reused", "real_pick": "reused"}
    after = json.loads((Path(out) / "stats.json").read_text())
    assert after["datasets"]["real_pick"]["fingerprint"] != before["datasets"]["real_pick"]["fingerprint"]
    assert after["datasets"]["real_pick"]["action"]["global"]["mean"][6] != before["datasets"]["real_pick"]["action"]["global"]["mean"][6]
    # a new dataset: only it is read
    cfg["datasets"].append(dict(cfg["datasets"][0], name="sim_pick_val", split="val"))
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert run() == {"sim_pick": "reused", "real_pick": "reused", "sim_pick_val": "computed"}
    # --force reads everything again
    assert run("--force") == {"sim_pick": "computed", "real_pick": "computed", "sim_pick_val": "computed"}
    # a statistics config change reads no data: the values come from the cache, and the artifact
    # equals a from-scratch run bit for bit
    cfg["horizon"] = 4
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert set(run().values()) == {"reused"}
    reused = json.loads((Path(out) / "stats.json").read_text())
    assert reused["horizon"] == 4
    run("--force")
    fresh = json.loads((Path(out) / "stats.json").read_text())
    reused.pop("created"), fresh.pop("created")
    assert reused == fresh


def _expect_error(args, capsys, pattern, out_dir):
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("stepnorm: error:"), err
    import re

    assert re.search(pattern, err[0]), err[0]
    assert not Path(out_dir).exists()
    assert not [p for p in Path(out_dir).parent.iterdir() if p.name.startswith(".")]


def test_truncated_shard(sample_dir, tmp_path, capsys):
    root = _copy_sample(sample_dir, tmp_path)
    shard = sorted((root / "sim_pick" / "1.0.0").glob("*train.tfrecord*"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    (tmp_path / "o").mkdir()
    _expect_error(["stats", str(root / "config.yaml"), "--out", str(tmp_path / "o" / "stats")], capsys,
                  r"sim_pick-train\.tfrecord.*(corrupt|truncated)", tmp_path / "o" / "stats")


def test_corrupt_shard(sample_dir, tmp_path, capsys):
    root = _copy_sample(sample_dir, tmp_path)
    shard = sorted((root / "real_pick" / "1.0.0").glob("*train.tfrecord*"))[0]
    data = bytearray(shard.read_bytes())
    data[200:260] = b"\xff" * 60
    shard.write_bytes(bytes(data))
    (tmp_path / "o").mkdir()
    _expect_error(["stats", str(root / "config.yaml"), "--out", str(tmp_path / "o" / "stats")], capsys,
                  r"real_pick-train\.tfrecord", tmp_path / "o" / "stats")


def _edited_sample_config(sample_dir, tmp_path, edit):
    """The sample config with absolute paths and ``edit`` applied, written to tmp_path."""
    cfg = yaml.safe_load((sample_dir / "config.yaml").read_text())
    for ds in cfg["datasets"]:
        ds["path"] = str(sample_dir / ds["path"])
    edit(cfg)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    (tmp_path / "o").mkdir()
    return path


@pytest.mark.parametrize("edit, pattern", [
    (lambda c: c["datasets"][0].update(action_key="actions"), r"no step feature 'actions'"),
    (lambda c: c["datasets"][0].update(color="red"), r"config.yaml: unknown key datasets\[0\]\.color"),
    (lambda c: (c.pop("delta_mask"), c["normalization"]["action"].update(mask=[True] * 8)),
     r"mask has 8 entries.*7 action dims"),
    (lambda c: (c.pop("delta_mask"), c["normalization"]["action"].update(mask=[True, False])),
     r"gripper_dims \[6\] out of range for 2 action dims"),
    (lambda c: c["normalization"]["action"].update(mask=[True, False]),
     r"config.yaml: delta_mask has 7 entries but normalization.action.mask has 2"),
    (lambda c: c["datasets"][1].update(transforms=[{"name": "select_dims", "args": {"key": "action", "dims": [0, 1, 2]}}]),
     r"real_pick \(.*real_pick-train.tfrecord.*\): delta_mask has 7 entries but the action has 3 dims"),
    (lambda c: c["datasets"][1].update(path="nowhere/1.0.0"), r"datasets.real_pick.path 'nowhere/1.0.0' does not exist"),
    (lambda c: (c.pop("delta_mask"), c["normalization"]["action"].pop("mask"), c["datasets"][1].update(
        transforms=[{"name": "select_dims", "args": {"key": "action", "dims": [0, 1, 2]}}])),
     r"dims differ across datasets \(sim_pick: action 7, state 8, real_pick: action 3, state 8\)"),
    (lambda c: c.update(horizon=0), r"horizon must be an integer >= 1"),
    (lambda c: c["datasets"][0].update(max_frames=10), r"max_frames applies to lerobot datasets"),
])
def test_bad_input_and_config(sample_dir, tmp_path, capsys, edit, pattern):
    path = _edited_sample_config(sample_dir, tmp_path, edit)
    _expect_error(["stats", str(path), "--out", str(tmp_path / "o" / "stats")], capsys, pattern, tmp_path / "o" / "stats")


def test_empty_split_is_an_error(sample_dir, tmp_path, capsys):
    path = _edited_sample_config(sample_dir, tmp_path, lambda c: c["datasets"][0].update(split="train[:0]"))
    _expect_error(["stats", str(path), "--out", str(tmp_path / "o" / "stats")], capsys, r"sim_pick.*no (episodes|steps)",
                  tmp_path / "o" / "stats")


def _run_real_config(real_data, tmp_path, name):
    """Run `stepnorm stats` on configs/NAME with its paths pointed at ``real_data``."""
    repo = Path(__file__).resolve().parents[1]
    src = yaml.safe_load((repo / "configs" / name).read_text())
    for ds in src["datasets"]:
        ds["path"] = str(real_data / Path(ds["path"]).relative_to("../../shared/data/real"))
    path = tmp_path / "real.yaml"
    path.write_text(yaml.safe_dump(src))
    assert main(["stats", str(path), "--out", str(tmp_path / "stats")]) == 0
    return src, json.loads((tmp_path / "stats" / "stats.json").read_text())


def test_real_lerobot_config(real_data, tmp_path):
    """configs/real_lerobot_so101.yaml (delta actions) through the pipeline equals the reference."""
    import pyarrow.parquet as pq

    src, doc = _run_real_config(real_data, tmp_path, "real_lerobot_so101.yaml")
    assert doc["datasets"]["so101"]["num_episodes"] == 4 and doc["datasets"]["so101"]["num_steps"] == 1492
    table = pq.read_table(sorted(Path(src["datasets"][0]["path"]).glob("data/*/*.parquet"))[0]).to_pydict()
    ep = np.asarray(table["episode_index"])
    eps = [(np.asarray(table["action"], float)[ep == e], np.asarray(table["observation.state"], float)[ep == e])
           for e in sorted(set(ep.tolist()))]
    per_k = chunk_entries(eps, src["horizon"], src["delta_mask"])
    for k in (0, src["horizon"] - 1):
        got = {f: np.asarray(v[k], float) for f, v in doc["datasets"]["so101"]["action"]["per_timestep"].items()}
        assert_stats_match(got, per_k[k], src["quantiles"], label=f"so101 k={k}")


def test_real_data_config(real_data, tmp_path):
    """configs/real_data.yaml (Bridge RLDS, train + val) against TFDS's own decoding."""
    src, doc = _run_real_config(real_data, tmp_path, "real_data.yaml")
    bridge = [d for d in src["datasets"] if d["format"] == "rlds"][0]
    eps = _tfds_reference(Path(bridge["path"]), bridge["split"])
    assert doc["datasets"][bridge["name"]]["num_episodes"] == len(eps) == 25
    per_k = chunk_entries(eps, src["horizon"])
    for k in range(src["horizon"]):
        got = {f: np.asarray(v[k], float) for f, v in doc["datasets"][bridge["name"]]["action"]["per_timestep"].items()}
        assert_stats_match(got, per_k[k], src.get("quantiles", [0.01, 0.99]), label=f"bridge k={k}")


# Octo's OXE_MAGIC_SOUP (octo/data/oxe/oxe_dataset_mixes.py); Octo's "bridge_dataset" is its own copy,
# the config reads the OXE one ("bridge").
OCTO_MAGIC_SOUP = {
    "fractal20220817_data": 0.54087122203, "kuka": 0.8341046294, "bridge": 1.0, "taco_play": 2.0, "jaco_play": 1.0,
    "berkeley_cable_routing": 1.0, "roboturk": 2.0, "nyu_door_opening_surprising_effectiveness": 1.0, "viola": 2.0,
    "berkeley_autolab_ur5": 2.0, "toto": 1.0, "language_table": 0.1,
    "stanford_hydra_dataset_converted_externally_to_rlds": 2.0, "austin_buds_dataset_converted_externally_to_rlds": 1.0,
    "nyu_franka_play_dataset_converted_externally_to_rlds": 3.0, "furniture_bench_dataset_converted_externally_to_rlds": 0.1,
    "ucsd_kitchen_dataset_converted_externally_to_rlds": 2.0, "austin_sailor_dataset_converted_externally_to_rlds": 1.0,
    "austin_sirius_dataset_converted_externally_to_rlds": 1.0, "bc_z": 0.2,
    "dlr_edan_shared_control_converted_externally_to_rlds": 1.0,
    "iamlab_cmu_pickup_insert_converted_externally_to_rlds": 1.0, "utaustin_mutex": 1.0,
    "berkeley_fanuc_manipulation": 2.0, "cmu_stretch": 1.0,
}
_W, _R, _G = "action/world_vector", "action/rotation_delta", "action/gripper_closedness_action"
# Published widths of the step features the config reads (OXE dataset cards / TFDS catalog).
PUBLISHED_WIDTHS = {
    "fractal20220817_data": {_W: 3, _R: 3, _G: 1}, "kuka": {_W: 3, _R: 3, _G: 1},
    "bridge": {_W: 3, _R: 3, "action/open_gripper": 1}, "taco_play": {"action/rel_actions_world": 7},
    "jaco_play": {_W: 3, _G: 1}, "berkeley_cable_routing": {_W: 3, _R: 3}, "roboturk": {_W: 3, _R: 3, _G: 1},
    "nyu_door_opening_surprising_effectiveness": {_W: 3, _R: 3, _G: 1}, "viola": {_W: 3, _R: 3, _G: 1},
    "berkeley_autolab_ur5": {_W: 3, _R: 3, _G: 1}, "toto": {_W: 3, _R: 3, "action/open_gripper": 1},
    "language_table": {"action": 2}, "stanford_hydra_dataset_converted_externally_to_rlds": {"action": 7},
    "austin_buds_dataset_converted_externally_to_rlds": {"action": 7},
    "nyu_franka_play_dataset_converted_externally_to_rlds": {"action": 15},
    "furniture_bench_dataset_converted_externally_to_rlds": {"action": 8},
    "ucsd_kitchen_dataset_converted_externally_to_rlds": {"action": 8},
    "austin_sailor_dataset_converted_externally_to_rlds": {"action": 7},
    "austin_sirius_dataset_converted_externally_to_rlds": {"action": 7},
    "bc_z": {"action/future/xyz_residual": 30, "action/future/axis_angle_residual": 30, "action/future/target_close": 10},
    "dlr_edan_shared_control_converted_externally_to_rlds": {"action": 7},
    "iamlab_cmu_pickup_insert_converted_externally_to_rlds": {"action": 8}, "utaustin_mutex": {"action": 7},
    "berkeley_fanuc_manipulation": {"action": 6, "observation/state": 13}, "cmu_stretch": {"action": 8},
}


def test_oxe_config_is_octos_magic_soup_and_validates_without_network():
    from stepnorm.config import load_config

    repo = Path(__file__).resolve().parents[1]
    cfg = load_config(repo / "configs" / "oxe_magic_soup.yaml")
    assert {ds.name: ds.weight for ds in cfg.datasets} == pytest.approx(OCTO_MAGIC_SOUP)
    assert all(ds.is_remote and ds.path.startswith("gs://gresearch/robotics/") for ds in cfg.datasets)
    assert cfg.weighting == "mixture"


def test_oxe_config_transforms_bring_every_member_to_seven_dims():
    """Each member's listed keys, at their published widths, through its transforms: 7 dims, and a
    0/1 gripper input stays a 0/1 gripper (latched, clipped, inverted, never shifted or scaled)."""
    from stepnorm.config import load_config
    from stepnorm.sources.base import Episode
    from stepnorm.sources.rlds import key_list
    from stepnorm.sources.transforms import apply_transforms, build_transforms

    repo = Path(__file__).resolve().parents[1]
    rng = np.random.default_rng(0)
    for ds in load_config(repo / "configs" / "oxe_magic_soup.yaml").datasets:
        widths = PUBLISHED_WIDTHS[ds.name]
        assert key_list(ds.action_key) == list(widths), ds.name
        action = np.concatenate([rng.choice([0.0, 1.0], size=(40, w)) for w in widths.values()], axis=1)
        out = apply_transforms(Episode(ds.name, ds.name, 0, action), build_transforms(ds.transforms, ds.name))
        assert out.action.shape == (40, 7), ds.name
        assert set(np.unique(out.action[:, 6])) <= {0.0, 1.0}, ds.name


def test_unknown_beam_option_is_a_usage_error(sample_dir, tmp_path, capsys):
    (tmp_path / "o").mkdir()
    _expect_error(["stats", str(sample_dir / "config.yaml"), "--out", str(tmp_path / "o" / "stats"),
                   "--direct_num_wrokers", "2"], capsys, r"unknown Beam pipeline option\(s\): --direct_num_wrokers",
                  tmp_path / "o" / "stats")


def test_console_entry_flushes_output_and_keeps_exit_codes(sample_dir, tmp_path):
    """`stepnorm` (cli.entry) leaves without interpreter teardown: output and exit codes must survive."""
    import subprocess
    import sys

    def entry(*args):
        return subprocess.run([sys.executable, "-c", "from stepnorm.cli import entry; entry()", *args],
                              capture_output=True, text=True, timeout=300)

    ok = entry("stats", str(sample_dir / "config.yaml"), "--out", str(tmp_path / "stats"))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.rstrip().splitlines()[-1].startswith("stats artifact: ")
    assert json.loads((tmp_path / "stats" / "stats.json").read_text())["datasets"]
    bad = entry("stats", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and bad.stderr.strip().startswith("stepnorm: error: ") and "missing.yaml" in bad.stderr
    assert not (tmp_path / "x").exists()
    usage = entry("stats")
    assert usage.returncode == 2 and "required" in usage.stderr
    assert entry("--help").returncode == 0


def test_a_run_with_every_dataset_cached_never_imports_beam(sample_dir, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "stats"
    assert main(["stats", str(sample_dir / "config.yaml"), "--out", str(out)]) == 0
    code = ("import sys; from stepnorm.cli import main; "
            f"rc = main(['stats', {str(sample_dir / 'config.yaml')!r}, '--out', {str(out)!r}]); "
            "print('beam imported:', 'apache_beam' in sys.modules); "
            "print('tfds imported:', 'tensorflow_datasets' in sys.modules); sys.exit(rc)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "reused" in run.stdout and "computed" not in run.stdout
    assert "beam imported: False" in run.stdout
    # the RLDS split plans and widths come from the cache's plans too (TFDS costs 0.4 s to import)
    assert "tfds imported: False" in run.stdout
