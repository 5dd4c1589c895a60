"""RLDS reader: float64 stored as float32, empty episodes, missing keys, splits, the real Bridge set."""

import json

import numpy as np
import pytest

from stepnorm.errors import ConfigError, InputDataError
from stepnorm.sources.rlds import iter_shard_episodes, shard_reads


def iter_rlds_episodes(path, *, dataset, split, action_key, state_key, image_keys=()):
    """All episodes of a split, in order: each shard read of the split, as the pipeline's read tasks do."""
    for read in shard_reads(path, split):
        yield from iter_shard_episodes(path, read, dataset=dataset, action_key=action_key,
                                       state_key=state_key, image_keys=image_keys)


@pytest.fixture(scope="module")
def f64_dataset(tmp_path_factory):
    import tensorflow_datasets as tfds

    features = tfds.features.FeaturesDict({"steps": tfds.features.Dataset({
        "action": tfds.features.Tensor(shape=(3,), dtype=np.float64),
        "observation": {"state": tfds.features.Tensor(shape=(2,), dtype=np.float64)}})})
    episodes = [
        {"steps": {"action": np.array([[1e-3, 2.5, 3.0], [4, 5, 6]]), "observation": {"state": np.ones((2, 2))}}},
        {"steps": {"action": np.zeros((0, 3)), "observation": {"state": np.zeros((0, 2))}}},
        {"steps": {"action": np.full((3, 3), 7.0), "observation": {"state": np.zeros((3, 2))}}},
    ]
    builder = tfds.dataset_builders.store_as_tfds_dataset(
        name="f64", version="1.0.0", features=features, split_datasets={"train": list(enumerate(episodes))},
        data_dir=str(tmp_path_factory.mktemp("f64")), disable_shuffling=True)
    return str(builder.data_dir)


def _read(path, split="train", **kw):
    return list(iter_rlds_episodes(path, dataset="t", split=split, action_key=kw.get("action_key", "action"),
                                   state_key=kw.get("state_key", "observation/state")))


def test_float64_stored_as_float32_and_empty_episodes(f64_dataset):
    eps = _read(f64_dataset)
    assert [e.length for e in eps] == [2, 0, 3] and [e.index for e in eps] == [0, 1, 2]
    assert eps[0].action.dtype == np.float64
    assert eps[0].action[0, 0] == np.float64(np.float32(1e-3))  # what the shard holds
    assert eps[1].action.shape == (0, 3) and eps[1].state.shape == (0, 2)


def test_split_slicing(f64_dataset):
    assert [e.length for e in _read(f64_dataset, "train[1:]")] == [0, 3]
    assert [e.index for e in _read(f64_dataset, "train[1:]")] == [0, 1]
    with pytest.raises(ConfigError, match="split 'nope'"):
        shard_reads(f64_dataset, "nope")


def test_missing_feature_names_the_available_ones(f64_dataset):
    with pytest.raises(InputDataError, match=r"no step feature 'actions' \(available: action, observation/state\)"):
        _read(f64_dataset, action_key="actions")


def test_key_missing_in_one_episode(f64_dataset, tmp_path):
    import shutil

    import tensorflow as tf

    copy = tmp_path / "copy"
    shutil.copytree(f64_dataset, copy)
    shard = sorted(copy.glob("*.tfrecord*"))[0]
    records = [r.numpy() for r in tf.data.TFRecordDataset(str(shard))]
    example = tf.train.Example.FromString(records[2])
    del example.features.feature["steps/observation/state"]
    with tf.io.TFRecordWriter(str(shard)) as writer:
        for record in records[:2] + [example.SerializeToString()]:
            writer.write(record)
    with pytest.raises(InputDataError, match=r"record 2\): episode has 'action' but no 'observation/state'"):
        _read(str(copy))


def test_not_a_tfds_directory(tmp_path):
    with pytest.raises(InputDataError, match="not a readable TFDS dataset directory"):
        _read(str(tmp_path))


def test_bridge_episodes_match_tfds(real_data):
    import tensorflow_datasets as tfds

    path = real_data / "bridge_octo_debug_rlds" / "bridge_dataset" / "1.0.0"
    ours = list(iter_rlds_episodes(str(path), dataset="bridge", split="val", action_key="action",
                                   state_key="observation/state", image_keys=["observation/image_0"]))
    theirs = list(tfds.as_numpy(tfds.builder_from_directory(str(path)).as_dataset(
        "val", decoders={"steps": {"observation": {"image_0": tfds.decode.SkipDecoding()}}})))
    assert len(ours) == len(theirs) == 25
    for mine, ref in zip(ours, theirs):
        steps = list(ref["steps"])
        np.testing.assert_array_equal(mine.action, np.stack([s["action"] for s in steps]))
        np.testing.assert_array_equal(mine.state, np.stack([s["observation"]["state"] for s in steps]))
        assert mine.images["observation/image_0"] == [s["observation"]["image_0"] for s in steps]


def test_remote_shards_are_read_through_tensorflow_filesystems(f64_dataset):
    """gs:// shards go through tf.io.gfile; TF's in-memory ram:// filesystem stands in for GCS."""
    from pathlib import Path

    import tensorflow as tf

    from stepnorm.sources.rlds import ShardRead, iter_shard_records

    shard = sorted(Path(f64_dataset).glob("*.tfrecord*"))[0]
    remote = f"ram://stepnorm-test/{shard.name}"
    with tf.io.gfile.GFile(remote, "wb") as out:
        out.write(shard.read_bytes())
    local = list(iter_shard_records(ShardRead(str(shard), 0, 3, 0)))
    assert list(iter_shard_records(ShardRead(remote, 1, 2, 1))) == local[1:]


@pytest.fixture(scope="module")
def dict_action_dataset(tmp_path_factory):
    """An OXE-style dataset whose action is a dict (fractal/toto layout)."""
    import tensorflow_datasets as tfds

    features = tfds.features.FeaturesDict({"steps": tfds.features.Dataset({
        "action": {"world_vector": tfds.features.Tensor(shape=(3,), dtype=np.float32),
                   "rotation_delta": tfds.features.Tensor(shape=(3,), dtype=np.float32),
                   "gripper_closedness_action": tfds.features.Tensor(shape=(1,), dtype=np.float32),
                   "open_gripper": np.bool_},
        "observation": {"state": tfds.features.Tensor(shape=(2,), dtype=np.float32)}})})
    rng = np.random.default_rng(5)
    episodes = []
    for t in (5, 0, 9):
        episodes.append({"steps": {
            "action": {"world_vector": rng.normal(size=(t, 3)).astype(np.float32),
                       "rotation_delta": rng.normal(size=(t, 3)).astype(np.float32),
                       "gripper_closedness_action": rng.choice([-1.0, 0.0, 1.0], size=(t, 1)).astype(np.float32),
                       "open_gripper": rng.random(t) > 0.5},
            "observation": {"state": rng.normal(size=(t, 2)).astype(np.float32)}}})
    builder = tfds.dataset_builders.store_as_tfds_dataset(
        name="dict_action", version="1.0.0", features=features, split_datasets={"train": list(enumerate(episodes))},
        data_dir=str(tmp_path_factory.mktemp("dict_action")), disable_shuffling=True)
    return str(builder.data_dir), episodes


def test_action_from_several_step_keys_is_their_concatenation(dict_action_dataset):
    path, episodes = dict_action_dataset
    keys = ["action/world_vector", "action/rotation_delta", "action/gripper_closedness_action", "action/open_gripper"]
    eps = _read(path, action_key=keys, state_key=["observation/state", "action/open_gripper"])
    assert [e.length for e in eps] == [5, 0, 9]
    for ep, src in zip(eps, episodes):
        a = src["steps"]["action"]
        expected = np.concatenate([a["world_vector"], a["rotation_delta"], a["gripper_closedness_action"],
                                   a["open_gripper"][:, None].astype(np.float32)], axis=1)
        np.testing.assert_array_equal(ep.action, expected)
        assert ep.action.shape == (len(expected), 8) and ep.state.shape == (len(expected), 3)
        np.testing.assert_array_equal(ep.state[:, 2], a["open_gripper"])
    with pytest.raises(InputDataError, match="no step feature 'action/gripper'"):
        _read(path, action_key=["action/world_vector", "action/gripper"])


def test_stats_cli_with_a_list_action_key_and_octo_transforms(dict_action_dataset, tmp_path):
    """End to end: fractal-style dict action -> 7-D with Octo's gripper latch; stats match a reference."""
    import json

    import yaml

    from stepnorm.cli import main

    path, episodes = dict_action_dataset
    cfg = {"horizon": 4, "datasets": [{
        "name": "fractal_like", "format": "rlds", "path": path,
        "action_key": ["action/world_vector", "action/rotation_delta", "action/gripper_closedness_action"],
        "transforms": [{"name": "latch_gripper", "args": {"dim": 6}}]}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["stats", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "out")]) == 0
    doc = json.loads((tmp_path / "out" / "stats.json").read_text())
    block = doc["datasets"]["fractal_like"]["action"]
    from test_transforms import octo_rel2abs_loop

    actions = []
    for src in episodes:
        a = src["steps"]["action"]
        if len(a["world_vector"]):
            grip = octo_rel2abs_loop(a["gripper_closedness_action"][:, 0].astype(np.float64))
            actions.append(np.concatenate([a["world_vector"], a["rotation_delta"], grip[:, None]], axis=1))
    first = np.concatenate(actions).astype(np.float64)  # A_t[0]: every step once
    np.testing.assert_allclose(block["global"]["mean"], first.mean(axis=0), rtol=1e-6, atol=1e-7)
    assert block["per_timestep"]["count"] == [14, 12, 10, 8]
    # normalize writes the transformed 7-D chunks next to the original dict action, fields kept
    assert main(["normalize", str(tmp_path / "c.yaml"), "--stats", str(tmp_path / "out"),
                 "--out", str(tmp_path / "norm")]) == 0
    import tensorflow_datasets as tfds

    entry = json.loads((tmp_path / "norm" / "MANIFEST.json").read_text())["datasets"]["fractal_like"]
    builder = tfds.builder_from_directory(str(tmp_path / "norm" / entry["path"]))
    written = [ep for ep in tfds.as_numpy(builder.as_dataset(split="train", shuffle_files=False))]
    assert [len(list(ep["steps"])) for ep in written] == [5, 0, 9]
    steps = list(written[2]["steps"])
    assert steps[0]["action_chunk"].shape == (4, 7) and set(steps[0]["action"]) >= {"world_vector", "open_gripper"}
    bad = dict(cfg["datasets"][0], format="lerobot")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"horizon": 4, "datasets": [bad]}))
    assert main(["stats", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "bad")]) == 2


def test_split_plans_are_remembered_per_metadata_and_checked(f64_dataset, tmp_path, monkeypatch):
    """Inside ``plans_in``: shard reads and widths come from the remembered plan without TFDS, the
    same values; a damaged plan, another split or edited metadata is resolved by TFDS again; an
    error is not remembered; ``cache prune --older-than`` removes unused plans."""
    import os
    import shutil
    import time

    from stepnorm import values
    from stepnorm.sources import rlds

    data = tmp_path / "f64"
    shutil.copytree(f64_dataset, data)
    plans = tmp_path / "cache" / "plans"
    fresh = shard_reads(str(data), "train[1:]"), rlds.declared_widths(str(data), ["action", "observation/state"])
    with rlds.plans_in(plans):
        assert (shard_reads(str(data), "train[1:]"), rlds.declared_widths(str(data), ["action", "observation/state"])) == fresh
        files = sorted(plans.rglob("*.json"))
        assert len(files) == 2

        def no_tfds(*_):
            raise AssertionError("TFDS consulted")

        monkeypatch.setattr(rlds, "rlds_builder", no_tfds)
        monkeypatch.setattr(rlds, "_tfds", no_tfds)
        assert (shard_reads(str(data), "train[1:]"), rlds.declared_widths(str(data), ["action", "observation/state"])) == fresh
        with pytest.raises(AssertionError, match="TFDS consulted"):
            shard_reads(str(data), "train")  # another split: another plan
        monkeypatch.undo()
        # a damaged plan (its value edited: the checksum disagrees) is resolved again and rewritten
        doc = json.loads(files[0].read_text())
        doc["value"] = [[9] * len(v) if isinstance(v, list) else 9 for v in doc["value"]]
        files[0].write_text(json.dumps(doc))
        files[1].write_bytes(b"{not json")
        assert (shard_reads(str(data), "train[1:]"), rlds.declared_widths(str(data), ["action", "observation/state"])) == fresh
        # edited metadata: new keys, resolved by TFDS
        info = data / "dataset_info.json"
        info.write_text(info.read_text().replace('"description": "', '"description": "edited '))
        before = set(plans.rglob("*.json"))
        assert shard_reads(str(data), "train[1:]") == fresh[0]
        assert len(set(plans.rglob("*.json")) - before) == 1
        with pytest.raises(ConfigError, match="split 'nope'"):
            shard_reads(str(data), "nope")
        assert len(set(plans.rglob("*.json")) - before) == 1
    cache = values.ValuesCache(tmp_path / "cache")
    assert any("3 RLDS split plans" in line for line in values.list_entries(cache))
    old = time.time() - 3 * 86400
    for file in plans.rglob("*.json"):
        os.utime(file, (old, old))
    values.prune_entries(cache, older_than_days=1)
    assert not list(plans.rglob("*.json"))
