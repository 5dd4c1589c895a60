"""`stepnorm normalize` / `stepnorm run` end to end: TFDS output, inverse, bytes, counts, atomicity, gate.

Expected values come from the inputs read independently (TFDS for RLDS, pyarrow for LeRobot), chunks
built with loops (reference.py) and an unnormalize written from the SPEC formulas over stats.json.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from reference import chunks

from stepnorm.cli import main

REPO = Path(__file__).resolve().parents[1]
QUIET = {"TF_CPP_MIN_LOG_LEVEL": "3"}


# -- fixtures and helpers -----------------------------------------------------------------------
@pytest.fixture(scope="session")
def sample_run(tmp_path_factory):
    """The sample mixture, its statistics (root/stats) and normalized output (root/out), with the
    sample config (q01_q99 actions with clipping, mean_std state)."""
    root = tmp_path_factory.mktemp("norm_sample")
    config = str(root / "sample" / "config.yaml")
    assert main(["sample", str(root / "sample")]) == 0
    assert main(["stats", config, "--out", str(root / "stats")]) == 0
    assert main(["normalize", config, "--stats", str(root / "stats"), "--out", str(root / "out")]) == 0
    return root


def _variant(src_config: Path, dst: Path, **changes) -> Path:
    """A copy of a config with top-level keys changed and dataset paths made absolute."""
    raw = yaml.safe_load(src_config.read_text())
    for ds in raw["datasets"]:
        ds["path"] = str((src_config.parent / ds["path"]).resolve())
    raw.update(changes)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(yaml.safe_dump(raw, sort_keys=False))
    return dst


def _load_rlds(path, split, image_keys=()):
    """Episodes of a TFDS dir as dicts of stacked step arrays (images left encoded)."""
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(path))
    decoders = {"steps": _skip_images(builder.info.features["steps"].feature)}
    out = []
    for ep in tfds.as_numpy(builder.as_dataset(split=split, decoders=decoders, shuffle_files=False)):
        steps = list(ep["steps"])
        out.append({"steps": _stack(steps), "meta": ep.get("episode_metadata")})
    return out, builder


def _skip_images(features):
    import tensorflow_datasets as tfds

    out = {}
    for key, feature in features.items():
        if isinstance(feature, tfds.features.Image):
            out[key] = tfds.decode.SkipDecoding()
        elif isinstance(feature, tfds.features.FeaturesDict):
            out[key] = _skip_images(feature)
    return out


def _stack(steps):
    if isinstance(steps[0], dict):
        return {k: _stack([s[k] for s in steps]) for k in steps[0]}
    return np.stack(steps)


def _records(data_dir: Path):
    """Serialized examples of every shard in a dataset dir, in shard order."""
    files = sorted(p for p in data_dir.iterdir() if ".tfrecord-" in p.name)
    return [r for f in files for r in _records_of(f)]


def _records_of(file):
    import tensorflow as tf

    return list(tf.data.TFRecordDataset(str(file)).as_numpy_iterator())


def expected_block(cfg):
    """The statistics block the config's per-timestep decision uses (written out, not imported):
    auto is on with a delta_mask; off is pooled with a delta_mask and global without."""
    setting = cfg["normalization"]["action"].get("per_timestep", "auto")
    delta = cfg.get("delta_mask") is not None and any(cfg["delta_mask"])
    on = delta if setting == "auto" else setting
    return "per_timestep" if on else ("pooled" if delta else "global")


def _reference_unnormalize(y, stats, spec):
    """SPEC section 4 inverse from stats.json arrays (``stats`` ``[H, D]`` or ``[D]``)."""
    mask = np.asarray(spec.get("mask") or [True] * y.shape[-1])
    if spec["mode"] == "mean_std":
        center, scale = np.asarray(stats["mean"]), np.asarray(stats["std"])
    else:
        lo_key, hi_key = ("min", "max") if spec["mode"] == "min_max" else ("q01", "q99")
        lo, hi = np.asarray(stats[lo_key]), np.asarray(stats[hi_key])
        center, scale = (lo + hi) / 2, (hi - lo) / 2
    x = y.astype(np.float64) * scale + center
    return np.where(mask, x, y), center, scale, mask


def check_dataset(out_eps, raw_eps, stats_doc, dataset, cfg, require_clip_check=False):
    """Every valid chunk entry inverts to the raw chunk; padding is flagged; state normalized.

    ``raw_eps``: ``(action [T, D], state [T, Ds])`` per episode, from an independent reader.
    Returns the number of episodes shorter than H.
    """
    horizon, delta_mask = cfg["horizon"], cfg.get("delta_mask")
    block = stats_doc["combined"] if cfg.get("normalize_with", "combined") == "combined" else stats_doc["datasets"][dataset]
    spec = cfg["normalization"]["action"]
    clip = spec.get("clip", spec["mode"] != "mean_std")
    pt = {k: np.asarray(v, np.float64) for k, v in block["action"][expected_block(cfg)].items()}
    assert stats_doc["action_statistics"]["block"] == expected_block(cfg)
    assert len(out_eps) == len(raw_eps)
    short = clipped_seen = 0
    for ep, (action, state) in zip(out_eps, raw_eps):
        steps = ep["steps"]
        t_len = len(action)
        short += t_len < horizon
        y, valid = steps["action_chunk"], steps["action_chunk_valid"]
        assert y.dtype == np.float32 and y.shape == (t_len, horizon, action.shape[1])
        raw, expect_valid = chunks([(action, state)], horizon, delta_mask)
        np.testing.assert_array_equal(valid, expect_valid)
        x, center, scale, mask = _reference_unnormalize(y, pt, spec)
        tol = 1e-6 * (np.abs(center) + scale) + 1e-7
        inside = np.broadcast_to(valid[..., None], y.shape)
        if clip:
            at_bound = np.abs(y) >= 1.0 - 1e-6
            lo, hi = center - scale, center + scale
            beyond = (raw >= hi - tol) | (raw <= lo + tol)
            assert np.all(beyond[inside & at_bound & mask]), f"{dataset}: clipped entries inside the bounds"
            clipped_seen += int((inside & at_bound & mask).sum())
            inside = inside & ~(at_bound & mask)
        err = np.abs(x - raw)
        assert np.all(err[inside] <= np.broadcast_to(tol, y.shape)[inside]), (
            f"{dataset}: max inverse error {err[inside].max()}")
        if "state" in cfg["normalization"]:
            s = steps["observation"]["state_normalized"]
            g = {k: np.asarray(v, np.float64) for k, v in block["state"]["global"].items()}
            live = g["std"] > 1e-8 * np.maximum(1, np.abs(g["mean"]))
            expect = np.where(live, (state - g["mean"]) / np.where(live, g["std"], 1), 0.0)
            np.testing.assert_allclose(s, expect, rtol=1e-5, atol=1e-5)
    if require_clip_check:
        assert clipped_seen > 0, "q01_q99 with clipping must clip something on this data"
    return short


def _tfds_raw(path, split, state_path=("observation", "state")):
    eps, _ = _load_rlds(path, split)
    return [(e["steps"]["action"].astype(np.float64), e["steps"][state_path[0]][state_path[1]].astype(np.float64))
            for e in eps]


# -- generated data -------------------------------------------------------------------------------
def test_sample_output_inverts_and_keeps_every_field(sample_run):
    from tensorflow_datasets.proto import tf_example_pb2

    cfg = yaml.safe_load((sample_run / "sample" / "config.yaml").read_text())
    out = sample_run / "out"
    stats_doc = json.loads((out / "stats" / "stats.json").read_text())
    for name in ("sim_pick", "real_pick"):
        src = sample_run / "sample" / name / "1.0.0"
        dst = out / name / "1.0.0"
        out_eps, builder = _load_rlds(dst, "train")
        check_dataset(out_eps, _tfds_raw(src, "train"), stats_doc, name, cfg, require_clip_check=True)
        # Every original feature of every record is byte-for-byte the input's (images included).
        src_records = [r for f in sorted(src.glob(f"{name}-train.tfrecord-*")) for r in _records_of(f)]
        dst_records = _records(dst)
        assert len(src_records) == len(dst_records) == builder.info.splits["train"].num_examples
        for a, b in zip(src_records, dst_records):
            fa = tf_example_pb2.Example.FromString(a).features.feature
            fb = tf_example_pb2.Example.FromString(b).features.feature
            assert set(fb) == set(fa) | {"steps/action_chunk", "steps/action_chunk_valid",
                                         "steps/observation/state_normalized"}
            for key in fa:
                assert fb[key].SerializeToString() == fa[key].SerializeToString(), key
        # And through TFDS: the encoded image bytes equal the input's.
        in_eps, _ = _load_rlds(src, "train")
        for e_in, e_out in zip(in_eps, out_eps):
            assert list(e_in["steps"]["observation"]["image"]) == list(e_out["steps"]["observation"]["image"])
            np.testing.assert_array_equal(e_in["meta"]["episode_id"], e_out["meta"]["episode_id"])


def test_manifest_metadata_and_stats_copy(sample_run):
    import tensorflow_datasets as tfds

    out = sample_run / "out"
    manifest = json.loads((out / "MANIFEST.json").read_text())
    stats = json.loads((sample_run / "stats" / "stats.json").read_text())
    assert manifest["stats_fingerprint"] == stats["fingerprint"]
    # the decision the output was normalized with is recorded beside the statistics it names
    assert manifest["action_statistics"] == stats["action_statistics"]
    assert (out / "stats" / "stats.json").read_bytes() == (sample_run / "stats" / "stats.json").read_bytes()
    for name, entry in manifest["datasets"].items():
        builder = tfds.builder_from_directory(str(out / entry["path"]))
        assert builder.info.metadata["stepnorm"]["stats_fingerprint"] == stats["fingerprint"]
        assert builder.info.metadata["stepnorm"]["action_statistics"] == stats["action_statistics"]
        assert stats["fingerprint"] in builder.info.description
        assert builder.info.splits["train"].num_examples == entry["episodes"] == stats["datasets"][name]["num_episodes"]
        shards = sorted(p.name for p in (out / entry["path"]).glob("*.tfrecord-*"))
        assert shards == [f"{name}-train.tfrecord-{i:05d}-of-{len(shards):05d}" for i in range(len(shards))]
    assert not list(sample_run.glob(".out.stepnorm-*"))


_WRITER_WITHOUT_BEAM = r"""
import glob, importlib.abc, json, sys
from pathlib import Path

class NoBeam(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "apache_beam" or name.startswith("apache_beam."):
            raise ImportError(f"{name} is blocked: the writer library must not need Beam")

sys.meta_path.insert(0, NoBeam())
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from stepnorm.artifact import read_artifact
from stepnorm.config import load_config
from stepnorm.sources.base import Episode
from stepnorm.writers import EpisodeNormalizer, ExampleEncoder, added_features, extend_features

root = Path(sys.argv[1])
cfg = load_config(root / "sample" / "config.yaml")
artifact = read_artifact(root / "stats")
checked = 0
for ds in cfg.datasets:
    norm = EpisodeNormalizer.build(cfg, artifact, ds.name)
    builder = tfds.builder_from_directory(ds.path)
    state_dim = len(artifact.stats("state", "global", ds.name)["mean"])
    added = added_features(cfg.horizon, len(artifact.stats("action", "global", ds.name)["mean"]), state_dim)
    features = extend_features(builder.info.features, added, ds.path)
    encoder = ExampleEncoder(ds, norm, features.to_json(), added.to_json())
    # a loader of one's own: TFDS decodes the arrays, tf.data gives the records' bytes, in file order
    decoded = tfds.as_numpy(builder.as_dataset(split=ds.split, shuffle_files=False,
                                               decoders={"steps": {"observation": {"image": tfds.decode.SkipDecoding()}}}))
    raw = tf.data.TFRecordDataset(sorted(glob.glob(f"{ds.path}/*-{ds.split}.tfrecord-*")))
    written_dir = root / "out" / json.loads((root / "out" / "MANIFEST.json").read_text())["datasets"][ds.name]["path"]
    written = tf.data.TFRecordDataset(sorted(glob.glob(f"{written_dir}/*-{ds.split}.tfrecord-*")))
    n = 0
    for i, (ep, record, out) in enumerate(zip(decoded, raw, written)):
        steps = list(ep["steps"])
        action = [s["action"] for s in steps]
        state = [s["observation"]["state"] for s in steps]
        episode = Episode(ds.name, ds.path, i, np.stack(action), np.stack(state), extra={"serialized": record.numpy()})
        assert encoder.encode(episode) == out.numpy(), (ds.name, i)
        n += 1
    assert n == artifact.block(ds.name)["num_episodes"], (ds.name, n)
    checked += n
assert "apache_beam" not in sys.modules
print(checked)
"""


def test_writer_library_reproduces_the_written_bytes_without_beam(sample_run):
    """stepnorm.writers, with apache_beam blocked from importing, turns the source records into the
    exact bytes `stepnorm normalize` wrote: what a loader of one's own can do without Beam."""
    proc = subprocess.run([sys.executable, "-c", _WRITER_WITHOUT_BEAM, str(sample_run)], capture_output=True,
                          text=True, env={**os.environ, **QUIET}, timeout=300, cwd=str(sample_run / "sample"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.strip().splitlines()[-1]) > 10


def test_write_normalized_in_a_pipeline_of_ones_own(sample_run, tmp_path):
    """stepnorm.beam's plan_datasets -> WriteNormalized -> finish_datasets, composed by a user,
    write the same shards and TFDS metadata as `stepnorm normalize` (which is built from them)."""
    import apache_beam as beam
    import tensorflow_datasets as tfds

    from stepnorm.artifact import read_artifact
    from stepnorm.beam import WriteNormalized, finish_datasets, plan_datasets, prepare_staging
    from stepnorm.config import load_config

    cfg = load_config(sample_run / "sample" / "config.yaml")
    artifact = read_artifact(sample_run / "stats")
    plans = plan_datasets(cfg, artifact)
    prepare_staging(plans, tmp_path)
    with beam.Pipeline() as p:
        _ = p | WriteNormalized(cfg, artifact, plans, str(tmp_path))
    written = finish_datasets(cfg, artifact, plans, tmp_path)
    manifest = json.loads((sample_run / "out" / "MANIFEST.json").read_text())
    for name, plan in plans.items():
        assert sum(written[name].values()) == manifest["datasets"][name]["episodes"]
        ours = sorted((tmp_path / plan.rel_dir).glob("*.tfrecord-*"))
        theirs = sorted((sample_run / "out" / plan.rel_dir).glob("*.tfrecord-*"))
        assert [f.name for f in ours] == [f.name for f in theirs] and ours
        assert all(a.read_bytes() == b.read_bytes() for a, b in zip(ours, theirs))
        builder = tfds.builder_from_directory(str(tmp_path / plan.rel_dir))
        assert builder.info.splits["train"].num_examples == written[name]["train"]


def test_delta_per_dataset_unclipped_and_short_episodes(sample_run, tmp_path):
    """Delta actions, per-dataset statistics, H longer than some episodes, no clipping: all invert."""
    delta = [True, True, True, False, False, False, False]
    cfg_path = _variant(sample_run / "sample" / "config.yaml", tmp_path / "delta.yaml", horizon=16, delta_mask=delta,
                        normalize_with="per_dataset",
                        normalization={"action": {"mode": "q01_q99", "mask": [True] * 6 + [False], "clip": False},
                                       "state": {"mode": "mean_std"}})
    assert main(["stats", str(cfg_path), "--out", str(tmp_path / "stats")]) == 0
    assert main(["normalize", str(cfg_path), "--stats", str(tmp_path / "stats"), "--out", str(tmp_path / "out")]) == 0
    cfg = yaml.safe_load(cfg_path.read_text())
    stats_doc = json.loads((tmp_path / "stats" / "stats.json").read_text())
    short = 0
    for name in ("sim_pick", "real_pick"):
        out_eps, _ = _load_rlds(tmp_path / "out" / name / "1.0.0", "train")
        short += check_dataset(out_eps, _tfds_raw(sample_run / "sample" / name / "1.0.0", "train"), stats_doc, name, cfg)
    assert short > 0, "the sample must contain episodes shorter than H"


def test_rerun_and_multi_processing_are_byte_identical(sample_run, tmp_path):
    cfg = str(sample_run / "sample" / "config.yaml")
    stats = str(sample_run / "stats")
    assert main(["normalize", cfg, "--stats", stats, "--out", str(tmp_path / "a")]) == 0
    assert main(["normalize", cfg, "--stats", stats, "--out", str(tmp_path / "b"), "--direct_running_mode",
                 "multi_processing", "--direct_num_workers", "2"]) == 0
    reference = sample_run / "out"
    for name in ("sim_pick", "real_pick"):
        shards = sorted(p.name for p in (reference / name / "1.0.0").glob("*.tfrecord-*"))
        assert shards
        for shard in shards:
            expect = (reference / name / "1.0.0" / shard).read_bytes()
            assert (tmp_path / "a" / name / "1.0.0" / shard).read_bytes() == expect
            assert (tmp_path / "b" / name / "1.0.0" / shard).read_bytes() == expect


# -- refusals and failures -----------------------------------------------------------------------
def test_stale_artifact_is_refused(sample_run, tmp_path, capsys):
    cfg_path = _variant(sample_run / "sample" / "config.yaml", tmp_path / "h6.yaml", horizon=6)
    code = main(["normalize", str(cfg_path), "--stats", str(sample_run / "stats"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "stale" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_failure_mid_job_leaves_no_output_and_keeps_the_previous_one(sample_run, tmp_path, monkeypatch, capsys):
    """A worker failure after some shards were written: no (new) output appears; a rerun succeeds."""
    import stepnorm.pipelines.normalize as normalize
    from stepnorm.errors import InputDataError

    cfg = str(sample_run / "sample" / "config.yaml")
    stats = str(sample_run / "stats")
    out = tmp_path / "out"
    calls = {"n": 0}
    original = normalize.EpisodeNormalizer.added_fields

    def failing(self, episode):
        calls["n"] += 1
        if calls["n"] == 40:  # past the first dataset's shard, inside the second's
            raise InputDataError(episode.source, "injected failure")
        return original(self, episode)

    monkeypatch.setattr(normalize.EpisodeNormalizer, "added_fields", failing)
    assert main(["normalize", cfg, "--stats", stats, "--out", str(out)]) == 2
    assert "injected failure" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".out.stepnorm-*"))
    monkeypatch.setattr(normalize.EpisodeNormalizer, "added_fields", original)
    assert main(["normalize", cfg, "--stats", stats, "--out", str(out)]) == 0
    manifest = (out / "MANIFEST.json").read_text()
    # A failing rerun leaves the earlier complete output exactly as it was.
    calls["n"] = 0
    monkeypatch.setattr(normalize.EpisodeNormalizer, "added_fields", failing)
    assert main(["normalize", cfg, "--stats", stats, "--out", str(out)]) == 2
    assert (out / "MANIFEST.json").read_text() == manifest


def test_episode_count_mismatch_fails(sample_run, tmp_path, monkeypatch, capsys):
    import stepnorm.pipelines.normalize as normalize

    original = normalize.read_task

    def drop_last(ds, task, **kwargs):
        episodes = list(original(ds, task, **kwargs))
        return iter(episodes[:-1])

    monkeypatch.setattr(normalize, "read_task", drop_last)
    code = main(["normalize", str(sample_run / "sample" / "config.yaml"), "--stats", str(sample_run / "stats"),
                 "--out", str(tmp_path / "o")])
    assert code == 2
    assert "episodes in != episodes out" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


_HOLD_AFTER_FIRST_SHARD = """
import sys, time
import stepnorm.pipelines.normalize as normalize
original = normalize.WriteShardsFn._receipt
def hold(self, *args):
    receipt = original(self, *args)
    time.sleep(600)  # the test kills the job here, with one shard written
    return receipt
normalize.WriteShardsFn._receipt = hold
from stepnorm.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_killed_job_leaves_nothing_that_looks_finished(sample_run, tmp_path):
    cfg = str(sample_run / "sample" / "config.yaml")
    stats = str(sample_run / "stats")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_AFTER_FIRST_SHARD, "normalize", cfg, "--stats", stats,
                             "--out", str(out)], start_new_session=True, env={**os.environ, **QUIET},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".out.stepnorm-*/*/*/.receipts/*.json")):
            assert proc.poll() is None and time.monotonic() < deadline, "the job never wrote a shard"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not out.exists()
    partial = list(tmp_path.glob(".out.stepnorm-*"))
    assert partial and not list(partial[0].rglob("MANIFEST.json")) and not list(partial[0].rglob("dataset_info.json"))
    assert main(["normalize", cfg, "--stats", stats, "--out", str(out)]) == 0
    assert (out / "MANIFEST.json").exists()
    assert not partial[0].exists(), "the rerun removes what the killed job left"


@pytest.fixture
def failing_validator():
    from stepnorm.validators import REGISTRY, Finding, validator

    @validator("test_always_fails")
    def always_fails(ctx):
        return [Finding("test_always_fails", "error", [], "action", [], 1, 0, "injected gate failure")]

    yield
    REGISTRY.pop("test_always_fails", None)


def test_run_stops_at_a_failed_gate(sample_run, tmp_path, failing_validator, capsys):
    cfg = str(sample_run / "sample" / "config.yaml")
    out = tmp_path / "run"
    assert main(["run", cfg, "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "injected gate failure" in captured.out
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["passed"] is False
    assert not (out / "normalized").exists() and not list(out.glob(".normalized.stepnorm-*"))
    assert main(["run", cfg, "--out", str(out), "--force"]) == 0
    assert "WARNING: gate failed" in capsys.readouterr().err
    assert (out / "normalized" / "MANIFEST.json").exists()


def test_run_with_a_passing_gate_writes_everything(sample_run, tmp_path, monkeypatch, capsys):
    """No validator registered: the gate passes; stats reuse the cache of an earlier run."""
    import stepnorm.validators.base as gate

    monkeypatch.setattr(gate, "REGISTRY", {})
    out = tmp_path / "run"
    shutil.copytree(sample_run / "stats", out / "stats")
    assert main(["run", str(sample_run / "sample" / "config.yaml"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "reused" in printed and "computed" not in printed
    assert json.loads((out / "report" / "report.json").read_text())["passed"] is True
    manifest = json.loads((out / "normalized" / "MANIFEST.json").read_text())
    assert manifest["stats_fingerprint"] == json.loads((out / "stats" / "stats.json").read_text())["fingerprint"]
    for line in ("stats artifact:", "report:", "normalized datasets:"):
        assert line in printed


# -- real data ------------------------------------------------------------------------------------
def _stats_and_normalize(config_name, tmp_path, action_mask):
    """configs/CONFIG_NAME, unclipped q01_q99 actions and mean_std state: stats, then normalize."""
    cfg_path = _variant(REPO / "configs" / config_name, tmp_path / config_name,
                        normalization={"action": {"mode": "q01_q99", "mask": action_mask, "clip": False},
                                       "state": {"mode": "mean_std"}})
    assert main(["stats", str(cfg_path), "--out", str(tmp_path / "stats")]) == 0
    assert main(["normalize", str(cfg_path), "--stats", str(tmp_path / "stats"), "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    return yaml.safe_load(cfg_path.read_text()), out, json.loads((out / "stats" / "stats.json").read_text())


def test_real_bridge_rlds(real_data, tmp_path):
    """Bridge's train and val splits in ONE TFDS dataset (as Octo/dlimp load them), statistics
    from the first split."""
    raw_cfg = yaml.safe_load((REPO / "configs" / "real_data.yaml").read_text())
    entry = dict(raw_cfg["datasets"][0], name="bridge_debug", splits=["train", "val"])
    del entry["split"]
    cfg_path = _variant(REPO / "configs" / "real_data.yaml", tmp_path / "real_data.yaml", datasets=[entry],
                        normalization={"action": {"mode": "q01_q99", "mask": [True] * 6 + [False], "clip": False},
                                       "state": {"mode": "mean_std"}})
    raw = yaml.safe_load(cfg_path.read_text())
    raw["datasets"][0]["path"] = str((REPO / "configs" / entry["path"]).resolve())
    cfg_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["stats", str(cfg_path), "--out", str(tmp_path / "stats")]) == 0
    assert main(["normalize", str(cfg_path), "--stats", str(tmp_path / "stats"), "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    cfg, stats_doc = yaml.safe_load(cfg_path.read_text()), json.loads((out / "stats" / "stats.json").read_text())
    assert stats_doc["datasets"]["bridge_debug"]["num_episodes"] == 25  # the train split only
    src = real_data / "bridge_octo_debug_rlds" / "bridge_dataset" / "1.0.0"
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert {k: v["episodes"] for k, v in manifest["datasets"]["bridge_debug"]["splits"].items()} == {"train": 25,
                                                                                                  "val": 25}
    for split in ("train", "val"):
        out_eps, builder = _load_rlds(out / "bridge_debug" / "1.0.0", split)
        assert list(builder.info.splits) == ["train", "val"]
        check_dataset(out_eps, _tfds_raw(src, split), stats_doc, "bridge_debug", cfg)
        in_eps, _ = _load_rlds(src, split)
        for e_in, e_out in zip(in_eps, out_eps):
            for cam in ("image_0", "image_1", "image_2", "image_3"):
                assert list(e_in["steps"]["observation"][cam]) == list(e_out["steps"]["observation"][cam])
            np.testing.assert_array_equal(e_in["steps"]["language_embedding"], e_out["steps"]["language_embedding"])
    shards = sorted(p.name for p in (out / "bridge_debug" / "1.0.0").glob("*.tfrecord-*"))
    assert shards == ["bridge_debug-train.tfrecord-00000-of-00001", "bridge_debug-val.tfrecord-00000-of-00001"]


def test_tfds_catalog_names_are_refused(real_data, tmp_path, capsys):
    """An output named like a TFDS catalog dataset ('bridge') would make Octo's tfds.builder load the
    catalog's; normalize and run refuse it before any work, one line, exit 2."""
    cfg_path = _variant(REPO / "configs" / "real_data.yaml", tmp_path / "c.yaml")
    for argv in (["normalize", str(cfg_path), "--stats", str(tmp_path / "none"), "--out", str(tmp_path / "o")],
                 ["run", str(cfg_path), "--out", str(tmp_path / "r")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "'bridge' is a TFDS catalog name" in err and "'bridge_stepnorm'" in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()


def test_real_lerobot_so101(real_data, tmp_path):
    import pyarrow.parquet as pq

    cfg, out, stats_doc = _stats_and_normalize("real_lerobot_so101.yaml", tmp_path, [True] * 5 + [False])
    table = pq.read_table(real_data / "so101_record_test_lerobot_v30" / "data").to_pandas()
    table = table.sort_values(["episode_index", "frame_index"])
    raw = []
    for _, rows in table.groupby("episode_index", sort=True):
        raw.append((np.stack(rows["action"].to_numpy()).astype(np.float64),
                    np.stack(rows["observation.state"].to_numpy()).astype(np.float64), rows))
    out_eps, builder = _load_rlds(out / "so101" / "1.0.0", "train")
    assert len(out_eps) == len(raw) == 4
    check_dataset(out_eps, [(a, s) for a, s, _ in raw], stats_doc, "so101", cfg)
    for ep, (action, state, rows) in zip(out_eps, raw):
        steps = ep["steps"]
        np.testing.assert_array_equal(steps["action"], action.astype(np.float32))
        np.testing.assert_array_equal(steps["observation"]["state"], state.astype(np.float32))
        np.testing.assert_array_equal(steps["frame_index"], rows["frame_index"].to_numpy())
        np.testing.assert_array_equal(steps["timestamp"], rows["timestamp"].to_numpy())
        assert steps["is_first"][0] and steps["is_last"][-1] and steps["is_last"].sum() == 1
        assert int(ep["meta"]["episode_index"]) == int(rows["episode_index"].iloc[0])


@pytest.mark.parametrize("entry, message", [
    ({"split": "test", "splits": ["train", "val"]}, "stats_split 'test' is not one of splits"),
    ({"split": "val", "splits": ["train", "val"], "stats_split": "train"}, "disagree"),
    ({"stats_split": "val"}, "stats_split needs splits"),
    ({"splits": ["train", "val"], "stats_split": "test"}, "stats_split 'test' is not one of splits"),
    ({"splits": ["train[:50%]", "train[50%:]"]}, "write the same output split twice"),
    ({"splits": "train"}, "non-empty list"),
    ({"splits": ["train", "val"], "format": "lerobot"}, "lerobot datasets have one split"),
])
def test_splits_config_errors(tmp_path, entry, message):
    from stepnorm.config import parse_config
    from stepnorm.errors import ConfigError

    ds = {"name": "d", "format": "rlds", "path": str(tmp_path), **entry}
    with pytest.raises(ConfigError, match=message):
        parse_config({"horizon": 4, "datasets": [ds]}, where="c.yaml")


def test_splits_config_picks_the_statistics_split(tmp_path):
    from stepnorm.config import parse_config

    ds = {"name": "d", "format": "rlds", "path": str(tmp_path), "splits": ["train[:90%]", "val"], "stats_split": "val"}
    (parsed,) = parse_config({"horizon": 4, "datasets": [ds]}).datasets
    assert parsed.split == "val" and parsed.output_splits == ["train[:90%]", "val"]
    (plain,) = parse_config({"horizon": 4, "datasets": [{"name": "d", "format": "rlds", "path": str(tmp_path)}]}).datasets
    assert plain.split == "train" and plain.output_splits == ["train"]
    # a resolved config (split and splits both recorded) parses back to the same dataset
    cfg = parse_config({"horizon": 4, "datasets": [ds]})
    again = parse_config(cfg.resolved()).datasets[0]
    assert (again.split, again.output_splits) == (parsed.split, parsed.output_splits)
