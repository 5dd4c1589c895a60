"""Deterministic statistics and the values cache, end to end through `stepnorm stats`.

- stats.json is the same bytes (apart from ``created``) for a rerun, a cache reuse, ``--force`` and
  the multi_processing runner with 2 workers;
- the same episodes as 1 or 7 shards, or in another order: identical counts, min, max and
  quantiles, moments within 1e-15 relative;
- a change of weights, weighting, horizon, delta_mask, quantiles or a transform's arguments, adding
  back a dataset, or a second mixture into another --out reads no data file (the readers are
  patched to fail) and gives the same bytes as a from-scratch run;
- a corrupt cache entry is exit 2 with one line and a --force hint.
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from stepnorm.cli import main

N_EPISODES = 21


def _episodes():
    rng = np.random.default_rng(2026)
    out = []
    for i in range(N_EPISODES):
        t_len = 1 if i == 3 else int(rng.integers(2, 40))
        action = np.cumsum(rng.standard_t(2.0, size=(t_len, 4)) * 0.1, axis=0).astype(np.float32)
        action[:, 3] = np.round(action[:, 3])  # ties
        state = rng.normal(size=(t_len, 4)).astype(np.float32)
        out.append({"steps": {"action": action, "observation": {"state": state}}})
    return out


def _write(root: Path, name: str, episodes, shards: int) -> str:
    import tensorflow_datasets as tfds

    features = tfds.features.FeaturesDict({"steps": tfds.features.Dataset({
        "action": tfds.features.Tensor(shape=(4,), dtype=np.float32),
        "observation": {"state": tfds.features.Tensor(shape=(4,), dtype=np.float32)}})})
    builder = tfds.dataset_builders.store_as_tfds_dataset(
        name=name, version="1.0.0", features=features, split_datasets={"train": list(enumerate(episodes))},
        data_dir=str(root), disable_shuffling=True, download_config=tfds.download.DownloadConfig(num_shards=shards))
    return str(builder.data_dir)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("det")
    eps = _episodes()
    paths = {"one": _write(root, "one", eps, 1), "seven": _write(root, "seven", eps, 7),
             "reversed": _write(root, "reversed", eps[::-1], 1)}
    assert len(list(Path(paths["seven"]).glob("*.tfrecord*"))) == 7
    return paths


def _config(path: Path, datasets: dict, **extra) -> Path:
    cfg = {"horizon": 5, "quantiles": [0.01, 0.5, 0.99], "delta_mask": [True, True, False, False],
           "normalization": {"action": {"mode": "q01_q99"}},
           "datasets": [{"name": name, "format": "rlds", "path": p, "weight": 1.0 + i,
                         "action_key": "action", "state_key": "observation/state"}
                        for i, (name, p) in enumerate(datasets.items())]}
    cfg.update(extra)
    path.write_text(yaml.safe_dump(cfg))
    return path


def _stats(cfg: Path, out: Path, *extra, capsys=None) -> str:
    if capsys:
        capsys.readouterr()
    assert main(["stats", str(cfg), "--out", str(out), *extra]) == 0
    return capsys.readouterr().out if capsys else ""


def _bytes(out: Path) -> str:
    """stats.json's text with the ``created`` timestamp blanked (the one field allowed to differ)."""
    return re.sub(r'"created": "[^"]*"', '"created": ""', (out / "stats.json").read_text())


def test_bit_identical_across_rerun_reuse_force_and_multi_processing(datasets, tmp_path):
    cfg = _config(tmp_path / "c.yaml", {"seven": datasets["seven"], "one": datasets["one"]})
    _stats(cfg, tmp_path / "a", "--cache", str(tmp_path / "cache1"))
    first = _bytes(tmp_path / "a")
    _stats(cfg, tmp_path / "a", "--cache", str(tmp_path / "cache1"))          # everything reused
    assert _bytes(tmp_path / "a") == first
    _stats(cfg, tmp_path / "a", "--cache", str(tmp_path / "cache1"), "--force")
    assert _bytes(tmp_path / "a") == first
    _stats(cfg, tmp_path / "b", "--cache", str(tmp_path / "cache2"), "--direct_running_mode", "multi_processing",
           "--direct_num_workers", "2")
    assert _bytes(tmp_path / "b") == first


def test_values_held_in_memory_or_read_again_give_the_same_bytes(datasets, tmp_path, monkeypatch):
    """The exact passes read the values from memory when they fit (KEEP_NUMERIC_VALUES), else the
    cache again: same stats.json. sketch_k is small, so the passes run for most cells."""
    from stepnorm.pipelines import stats as stats_pipeline

    cfg = _config(tmp_path / "c.yaml", {"seven": datasets["seven"], "one": datasets["one"]}, sketch_k=16)
    _stats(cfg, tmp_path / "held", "--cache", str(tmp_path / "cache"))
    reads = []
    original = stats_pipeline.cached_episodes

    def counting(*args, **kwargs):
        reads.append(args[0].name)
        return original(*args, **kwargs)

    monkeypatch.setattr(stats_pipeline, "cached_episodes", counting)
    _stats(cfg, tmp_path / "held", "--cache", str(tmp_path / "cache"))
    assert reads == ["seven", "one"]  # once each: the passes used the values held in memory
    held = _bytes(tmp_path / "held")
    # room for the first dataset only (the budget is shared): the second one's passes read again
    first = sum(e["steps"]["action"].size + e["steps"]["observation"]["state"].size for e in _episodes())
    monkeypatch.setattr(stats_pipeline, "KEEP_NUMERIC_VALUES", first)
    reads.clear()
    _stats(cfg, tmp_path / "again", "--cache", str(tmp_path / "cache"))
    assert reads.count("seven") == 1 and reads.count("one") > 1
    assert _bytes(tmp_path / "again") == held
    monkeypatch.setattr(stats_pipeline, "KEEP_NUMERIC_VALUES", 0)
    reads.clear()
    _stats(cfg, tmp_path / "none", "--cache", str(tmp_path / "cache"))
    assert reads.count("seven") > 1 and reads.count("one") > 1
    assert _bytes(tmp_path / "none") == held


def _close(a, b, rtol=1e-15):
    a, b = np.asarray(a, float), np.asarray(b, float)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.nanmax(np.abs(b)))


def test_shards_and_episode_order_do_not_change_the_statistics(datasets, tmp_path):
    blocks = {}
    for name in ("one", "seven", "reversed"):
        cfg = _config(tmp_path / f"{name}.yaml", {"pick": datasets[name]})
        _stats(cfg, tmp_path / name)
        blocks[name] = json.loads((tmp_path / name / "stats.json").read_text())["datasets"]["pick"]
    # a bracketing sample of 16 values per cell (the exact passes over the cached values run on
    # every cell) gives the same quantiles as one that holds every value
    cfg = _config(tmp_path / "small.yaml", {"pick": datasets["seven"]}, sketch_k=16)
    _stats(cfg, tmp_path / "small")
    blocks["small"] = json.loads((tmp_path / "small" / "stats.json").read_text())["datasets"]["pick"]
    # same episodes in the same order (1 vs 7 files): the same numbers, bit for bit
    for key in ("action", "state"):
        assert blocks["seven"][key] == blocks["one"][key] == blocks["small"][key]
    other = blocks["reversed"]
    for key, kinds in (("action", ("global", "per_timestep", "pooled")), ("state", ("global",))):
        for kind in kinds:
            got, ref = other[key][kind], blocks["one"][key][kind]
            for field in ("count", "min", "max", "q01", "q50", "q99"):
                assert got[field] == ref[field], (key, kind, field)
            for field in ("mean", "std"):
                _close(got[field], ref[field])


def _forbid_reading(monkeypatch):
    import stepnorm.sources.lerobot as lerobot
    import stepnorm.sources.rlds as rlds

    def fail(*args, **kwargs):
        raise AssertionError("a data file was opened")

    monkeypatch.setattr(rlds, "iter_shard_episodes", fail)
    monkeypatch.setattr(lerobot, "iter_lerobot_episodes", fail)
    monkeypatch.setattr(lerobot, "iter_lerobot_file_episodes", fail)  # what a LeRobot read task reads


CHANGES = {
    "weights": lambda c: c["datasets"][0].update(weight=5.0),
    "weighting": lambda c: c.update(weighting="mixture"),
    "horizon": lambda c: c.update(horizon=3),
    "delta_mask": lambda c: c.update(delta_mask=[False, True, True, False]),
    "quantiles": lambda c: c.update(quantiles=[0.01, 0.25, 0.5, 0.99]),
    "transform": lambda c: c["datasets"][1].update(
        transforms=[{"name": "clip", "args": {"key": "action", "dims": [0], "low": -0.5, "high": 0.5}}]),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_change_reads_no_data_and_equals_a_fresh_run(datasets, tmp_path, monkeypatch, capsys, change):
    cache = str(tmp_path / "cache")
    cfg_path = _config(tmp_path / "c.yaml", {"seven": datasets["seven"], "one": datasets["one"]})
    _stats(cfg_path, tmp_path / "a", "--cache", cache)
    cfg = yaml.safe_load(cfg_path.read_text())
    CHANGES[change](cfg)
    cfg_path.write_text(yaml.safe_dump(cfg))
    with monkeypatch.context() as m:
        _forbid_reading(m)
        printed = _stats(cfg_path, tmp_path / "a", "--cache", cache, capsys=capsys)
    assert printed.count("extract reused") == 2, printed
    _stats(cfg_path, tmp_path / "fresh", "--cache", str(tmp_path / "fresh-cache"))
    assert _bytes(tmp_path / "a") == _bytes(tmp_path / "fresh")


def test_readding_a_dataset_and_a_second_mixture_read_no_data(datasets, tmp_path, monkeypatch, capsys):
    cache = str(tmp_path / "cache")
    both = _config(tmp_path / "both.yaml", {"seven": datasets["seven"], "one": datasets["one"]})
    only = _config(tmp_path / "only.yaml", {"seven": datasets["seven"]})
    _stats(both, tmp_path / "a", "--cache", cache)
    with monkeypatch.context() as m:
        _forbid_reading(m)
        _stats(only, tmp_path / "a", "--cache", cache)                       # drop "one"
        printed = _stats(both, tmp_path / "a", "--cache", cache, capsys=capsys)  # ... and add it back
        assert printed.count("extract reused") == 2
        _stats(both, tmp_path / "second", "--cache", cache)                   # another --out
    _stats(both, tmp_path / "fresh", "--cache", str(tmp_path / "fresh-cache"))
    assert _bytes(tmp_path / "a") == _bytes(tmp_path / "second") == _bytes(tmp_path / "fresh")


def test_corrupt_cache_entry_is_one_line_with_a_force_hint(datasets, tmp_path, capsys):
    cache = tmp_path / "cache"
    cfg = _config(tmp_path / "c.yaml", {"one": datasets["one"]})
    _stats(cfg, tmp_path / "a", "--cache", str(cache))
    (task,) = list(cache.glob("values/*/*.npz"))
    data = bytearray(task.read_bytes())
    data[len(data) // 2] ^= 0xFF
    task.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["stats", str(cfg), "--out", str(tmp_path / "a"), "--cache", str(cache)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stepnorm: error:") and "corrupt" in err[0] and "--force" in err[0], err
    _stats(cfg, tmp_path / "a", "--cache", str(cache), "--force")
    _stats(cfg, tmp_path / "b", "--cache", str(cache))
    assert _bytes(tmp_path / "a") == _bytes(tmp_path / "b")


def test_only_a_changed_file_is_read(datasets, tmp_path, monkeypatch, capsys):
    import shutil

    import stepnorm.sources.rlds as rlds

    root = tmp_path / "seven"
    shutil.copytree(datasets["seven"], root)
    cfg = _config(tmp_path / "c.yaml", {"seven": str(root)})
    cache = str(tmp_path / "cache")
    _stats(cfg, tmp_path / "a", "--cache", cache)
    shard = sorted(root.glob("*.tfrecord*"))[3]
    shard.write_bytes(shard.read_bytes())  # rewritten in place: same bytes, new mtime/ctime
    opened = []
    real = rlds.iter_shard_episodes

    def counting(path, read, **kwargs):
        opened.append(Path(read.filename).name)
        return real(path, read, **kwargs)

    monkeypatch.setattr(rlds, "iter_shard_episodes", counting)
    printed = _stats(cfg, tmp_path / "a", "--cache", cache, capsys=capsys)
    assert opened == [shard.name], opened
    assert "1 of 7 read tasks read" in printed
    _stats(cfg, tmp_path / "fresh", "--cache", str(tmp_path / "fresh-cache"))
    assert _bytes(tmp_path / "a") == _bytes(tmp_path / "fresh")


def test_cache_ls_rm_prune(datasets, tmp_path, capsys):
    import os
    import time

    cache = tmp_path / "cache"
    cfg = _config(tmp_path / "c.yaml", {"seven": datasets["seven"], "one": datasets["one"]})
    _stats(cfg, tmp_path / "a", "--cache", str(cache))
    capsys.readouterr()
    assert main(["cache", "ls", "--cache", str(cache)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    # 8 entries, a total, and the two datasets' remembered split plans (shard reads, action and
    # state widths)
    assert len(lines) == 10 and lines[-2].startswith("8 entries"), lines
    assert lines[-1].startswith("6 RLDS split plans"), lines
    assert sum(" seven " in ln for ln in lines) == 7 and sum(" one " in ln for ln in lines) == 1
    # rm by dataset: only its entries go, and the next run reads only that dataset
    assert main(["cache", "rm", "--dataset", "one", "--cache", str(cache)]) == 0
    assert "removed 1 entries" in capsys.readouterr().out
    printed = _stats(cfg, tmp_path / "a", "--cache", str(cache), capsys=capsys)
    assert printed.count("extract reused") == 1
    # prune by age: entries unused for a day go; others stay
    old = time.time() - 3 * 86400
    for info in list(cache.glob("values/*/*.json"))[:3]:
        os.utime(info, (old, old))
    leftover = next(cache.glob("values/*/")) / ".abc.npz.k1ll3d.tmp"  # as a killed run leaves it (outputs.write_atomic)
    leftover.write_bytes(b"x")
    os.utime(leftover, (old, old))
    # scratch directories a killed run leaves (stage 2 on Beam's results, stage 1's receipts): an
    # old one goes, one a running run may still use (changed within the hour) stays
    killed, running = cache / ".stage2-0ld" / "accumulators", cache / ".receipts-n0w"
    killed.mkdir(parents=True)
    running.mkdir()
    (killed / "0.acc").write_bytes(b"x" * 10)
    (running / "task.json").write_bytes(b"{}")
    for path in (killed / "0.acc", killed, killed.parent):
        os.utime(path, (old, old))
    assert main(["cache", "prune", "--older-than", "1", "--cache", str(cache)]) == 0
    assert not leftover.exists() and not killed.parent.exists() and (running / "task.json").exists()
    assert "removed 3 entries" in capsys.readouterr().out
    assert main(["cache", "prune", "--max-size", "0", "--cache", str(cache)]) == 0
    assert "removed 5 entries" in capsys.readouterr().out
    assert not list(cache.glob("values/*/*.npz"))
    # a prune with no rule, or rm with nothing named, is a usage error (exit 2, one line)
    assert main(["cache", "prune", "--cache", str(cache)]) == 2
    assert main(["cache", "rm", "--cache", str(cache)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("stepnorm: error:") for e in err)


def _artifact_bytes(out: Path) -> dict[str, bytes]:
    """Every file of an artifact (stats.json with ``created`` blanked), by relative path."""
    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    files["stats.json"] = _bytes(out).encode()
    return files


def _so101(real_data: Path) -> dict:
    """The real so101 LeRobot set as a mixture entry (4 of its dims, transforms on both keys)."""
    return {"name": "so101", "format": "lerobot", "path": str(real_data / "so101_record_test_lerobot_v30"),
            "action_key": "action", "state_key": "observation.state", "weight": 0.5,
            "transforms": [{"name": "select_dims", "args": {"key": k, "dims": [0, 1, 2, 5]}}
                           for k in ("action", "state")]}


def _stage2_fails(cfg: Path, tmp_path: Path, capsys, names: str) -> None:
    """``stats --stage2 beam`` exits 2 with one line saying ``names`` never came back, writing nothing."""
    capsys.readouterr()
    assert main(["stats", str(cfg), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"),
                 "--stage2", "beam"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "never came back from the workers" in err[0] and names in err[0], err
    assert not (tmp_path / "out").exists()


def test_stage2_on_beam_gives_the_same_artifact(datasets, real_data, tmp_path, capsys, monkeypatch):
    """Stage 2 on Beam (each dataset's accumulator and its exact-quantile passes on the workers,
    here with a real LeRobot dataset beside two RLDS ones, small sketch_k so the passes run for
    most cells, a delta_mask and both weightings) gives the artifact of the in-process stage 2,
    every file the same bytes, in-process and on 2 worker processes; ``auto`` picks Beam only on a
    multi-process runner with more numeric values than one process holds."""
    from stepnorm.pipelines import stats as stats_pipeline

    lerobot = _so101(real_data)
    for weighting in ("samples", "mixture"):
        cfg = _config(tmp_path / f"{weighting}.yaml", {"seven": datasets["seven"], "one": datasets["one"]},
                      sketch_k=16, weighting=weighting)
        doc = yaml.safe_load(cfg.read_text())
        doc["delta_mask"] = None
        doc["datasets"].append(lerobot)
        cfg.write_text(yaml.safe_dump(doc))
        cache = str(tmp_path / "cache")
        local = _stats(cfg, tmp_path / f"local-{weighting}", "--cache", cache, "--stage2", "local", capsys=capsys)
        assert "stage 2 on Beam" not in local
        beam = _stats(cfg, tmp_path / f"beam-{weighting}", "--cache", cache, "--stage2", "beam", capsys=capsys)
        assert "3 datasets in 3 parts accumulated on the workers" in beam
        passes = int(re.search(r"stage 2 on Beam: (\d+) exact-quantile passes", beam).group(1))
        assert passes >= 1  # a count pass at least (its kept entries may answer the rest)
        assert _artifact_bytes(tmp_path / f"beam-{weighting}") == _artifact_bytes(tmp_path / f"local-{weighting}")
    # the delta_mask of _config, 2 worker processes, and auto with a tiny in-memory budget
    cfg = _config(tmp_path / "delta.yaml", {"seven": datasets["seven"], "one": datasets["one"]}, sketch_k=16)
    _stats(cfg, tmp_path / "local", "--cache", cache, "--stage2", "local")
    mp = ("--direct_running_mode", "multi_processing", "--direct_num_workers", "2")
    assert "stage 2 on Beam" not in _stats(cfg, tmp_path / "auto", "--cache", cache, *mp, capsys=capsys)
    monkeypatch.setattr(stats_pipeline, "KEEP_NUMERIC_VALUES", 100)
    assert "stage 2 on Beam" not in _stats(cfg, tmp_path / "auto", "--cache", cache, capsys=capsys)  # one process
    printed = _stats(cfg, tmp_path / "auto", "--cache", cache, *mp, capsys=capsys)
    assert "2 datasets in 2 parts accumulated on the workers" in printed
    assert _artifact_bytes(tmp_path / "auto") == _artifact_bytes(tmp_path / "local")
    assert not list(Path(cache).glob(".stage2-*"))  # the workers' results are removed
    # one dataset of one part (under PART_STEPS steps): one call would do all of it, so auto
    # stays in this process
    single = _config(tmp_path / "single.yaml", {"seven": datasets["seven"]}, sketch_k=16)
    assert "stage 2 on Beam" not in _stats(single, tmp_path / "single", "--cache", cache, *mp, capsys=capsys)


def test_stage2_on_beam_fails_when_a_dataset_never_comes_back(datasets, tmp_path, monkeypatch, capsys):
    """A runner that drops a dataset's stage-2 element fails the run (exit 2, one line) instead of
    writing statistics without it."""
    from stepnorm.pipelines import stats_beam

    cfg = _config(tmp_path / "c.yaml", {"seven": datasets["seven"], "one": datasets["one"]})
    _stats(cfg, tmp_path / "warm", "--cache", str(tmp_path / "cache"))
    real = stats_beam.AccumulatePartFn.process

    def dropping(self, element):
        if element == (1, 0):
            return iter(())
        return real(self, element)

    monkeypatch.setattr(stats_beam.AccumulatePartFn, "process", dropping)
    _stage2_fails(cfg, tmp_path, capsys, "'one'")


def test_parts_of_a_dataset_give_the_same_bytes_wherever_they_run(datasets, real_data, tmp_path, monkeypatch, capsys):
    """A dataset cut into parts (``PART_STEPS``: here 40 and 150 steps, so the 21-episode sets
    and a real LeRobot set have 2 to 10 parts each) gives the same artifact bytes in-process, on
    Beam in-process and on 2 worker processes (the parts spread over them, merged in part order);
    against one part, the counts, min, max and quantiles are identical and the moments within
    1e-14 (up to ten merges of the parts' moments, a few ulps each: 2.4e-15 seen)."""
    from stepnorm.pipelines import stats as stats_pipeline

    lerobot = _so101(real_data)
    cfg = _config(tmp_path / "c.yaml", {"seven": datasets["seven"], "one": datasets["one"]}, sketch_k=16)
    doc = yaml.safe_load(cfg.read_text())
    doc["datasets"].append(lerobot)
    cfg.write_text(yaml.safe_dump(doc))
    cache = str(tmp_path / "cache")
    _stats(cfg, tmp_path / "whole", "--cache", cache, "--stage2", "local")
    mp = ("--direct_running_mode", "multi_processing", "--direct_num_workers", "2")
    for part_steps in (40, 150):
        monkeypatch.setattr(stats_pipeline, "PART_STEPS", part_steps)
        local = tmp_path / f"local-{part_steps}"
        _stats(cfg, local, "--cache", cache, "--stage2", "local")
        printed = _stats(cfg, tmp_path / f"beam-{part_steps}", "--cache", cache, "--stage2", "beam", capsys=capsys)
        parts = int(re.search(r"3 datasets in (\d+) parts accumulated", printed).group(1))
        assert parts > 3 + (part_steps == 40) * 6, printed
        assert _artifact_bytes(tmp_path / f"beam-{part_steps}") == _artifact_bytes(local)
        _stats(cfg, tmp_path / f"mp-{part_steps}", "--cache", cache, "--stage2", "beam", *mp)
        assert _artifact_bytes(tmp_path / f"mp-{part_steps}") == _artifact_bytes(local)
        got = json.loads((local / "stats.json").read_text())
        ref = json.loads((tmp_path / "whole" / "stats.json").read_text())
        for name in ("seven", "one", "so101"):
            for key, kinds in (("action", ("global", "per_timestep", "pooled")), ("state", ("global",))):
                for kind in kinds:
                    a, b = got["datasets"][name][key][kind], ref["datasets"][name][key][kind]
                    for field in ("count", "min", "max", "q01", "q50", "q99"):
                        assert a[field] == b[field], (name, key, kind, field)
                    for field in ("mean", "std"):
                        _close(a[field], b[field], rtol=1e-14)
    assert not list(Path(cache).glob(".stage2-*"))


def test_stage2_on_beam_fails_when_a_part_never_comes_back(datasets, tmp_path, monkeypatch, capsys):
    """A runner that drops one part of a dataset (or a part's pass result) fails the run."""
    from stepnorm.pipelines import stats as stats_pipeline
    from stepnorm.pipelines import stats_beam

    monkeypatch.setattr(stats_pipeline, "PART_STEPS", 60)
    cfg = _config(tmp_path / "c.yaml", {"seven": datasets["seven"]}, sketch_k=16)
    _stats(cfg, tmp_path / "warm", "--cache", str(tmp_path / "cache"))
    for cls, drop in ((stats_beam.AccumulatePartFn, (0, 2)), (stats_beam.PassFn, (0, 1))):
        real = cls.process

        def dropping(self, element, real=real, drop=drop):
            return iter(()) if element == drop else real(self, element)

        monkeypatch.setattr(cls, "process", dropping)
        _stage2_fails(cfg, tmp_path, capsys, "part")
        monkeypatch.setattr(cls, "process", real)
