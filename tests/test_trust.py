"""Nothing lost, nothing silent (issue 11): outputs never destroy what stepnorm did not write, one
exit-code contract, validated weights/names/limits, snapshots and locks, hand-edited artifacts."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from stepnorm.cli import main

QUIET = {"TF_CPP_MIN_LOG_LEVEL": "3"}


@pytest.fixture(scope="module")
def trust_root(tmp_path_factory):
    """The sample mixture with its statistics (root/stats)."""
    root = tmp_path_factory.mktemp("trust")
    assert main(["sample", str(root / "sample")]) == 0
    assert main(["stats", str(root / "sample" / "config.yaml"), "--out", str(root / "stats")]) == 0
    return root


def _snapshot(directory: Path) -> dict:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _one_error_line(capsys, pattern: str, code_expected=2, code=None):
    # warnings about the input (printed before the run) may precede the one error line
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("stepnorm: warning:")]
    assert code == code_expected
    assert len(err) == 1, err
    assert err[0].startswith("stepnorm: error: ")
    assert "Traceback" not in err[0]
    import re

    assert re.search(pattern, err[0]), err[0]
    return err[0]


def _user_dir(tmp_path: Path) -> Path:
    user = tmp_path / "project"
    (user / "src").mkdir(parents=True)
    (user / "notes.txt").write_text("my notes\n")
    (user / "src" / "train.py").write_text("print('train')\n")
    return user


# -- 1. outputs never destroy what stepnorm did not write ---------------------------------------
@pytest.mark.parametrize("command", ["stats", "normalize", "run", "validate", "sample"])
def test_out_holding_user_files_is_refused_and_left_byte_identical(trust_root, tmp_path, capsys, command):
    cfg = str(trust_root / "sample" / "config.yaml")
    user = _user_dir(tmp_path)
    before = _snapshot(user)
    argv = {"stats": ["stats", cfg, "--out", str(user)],
            "normalize": ["normalize", cfg, "--stats", str(trust_root / "stats"), "--out", str(user)],
            "run": ["run", cfg, "--out", str(user)],
            "validate": ["validate", cfg, "--stats", str(trust_root / "stats"), "--report", str(user)],
            "sample": ["sample", str(user)]}[command]
    code = main(argv)
    _one_error_line(capsys, r"project: is not empty and not a stepnorm output \(it holds notes.txt, src\)", code=code)
    assert _snapshot(user) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]  # no lock or staging left


def test_stats_out_dot_inside_a_project_keeps_the_config(trust_root, tmp_path, capsys, monkeypatch):
    project = tmp_path / "project"
    shutil.copytree(trust_root / "sample", project)
    before = _snapshot(project)
    monkeypatch.chdir(project)
    code = main(["stats", "config.yaml", "--out", "."])
    line = _one_error_line(capsys, r"holds the input|not a stepnorm output", code=code)
    assert "config.yaml" in line or "project" in line
    assert _snapshot(project) == before


def test_out_inside_or_equal_to_an_input_is_refused(trust_root, tmp_path, capsys):
    cfg = str(trust_root / "sample" / "config.yaml")
    stats = trust_root / "stats"
    stats_before = _snapshot(stats)
    source = trust_root / "sample" / "sim_pick" / "1.0.0"
    source_before = _snapshot(source)
    code = main(["normalize", cfg, "--stats", str(stats), "--out", str(stats)])
    _one_error_line(capsys, r"inside the input", code=code)
    code = main(["normalize", cfg, "--stats", str(stats), "--out", str(source)])
    _one_error_line(capsys, r"inside the input", code=code)
    code = main(["stats", cfg, "--out", str(source / "stats")])
    _one_error_line(capsys, r"inside the input", code=code)
    assert _snapshot(stats) == stats_before and _snapshot(source) == source_before


def test_out_that_is_a_file_is_refused(trust_root, tmp_path, capsys):
    cfg = str(trust_root / "sample" / "config.yaml")
    target = tmp_path / "results.txt"
    target.write_text("keep me\n")
    for argv in (["stats", cfg, "--out", str(target)],
                 ["normalize", cfg, "--stats", str(trust_root / "stats"), "--out", str(target)],
                 ["export", str(trust_root / "stats"), "--format", "openpi", "--out", str(target)]):
        code = main(argv)
        _one_error_line(capsys, r"results.txt: exists and is not a directory", code=code)
        assert target.read_text() == "keep me\n"


def test_out_of_another_kind_is_refused(trust_root, tmp_path, capsys):
    cfg = str(trust_root / "sample" / "config.yaml")
    code = main(["normalize", cfg, "--stats", str(trust_root / "stats"), "--out", str(tmp_path / "stats_copy")])
    assert code == 0
    capsys.readouterr()
    code = main(["stats", cfg, "--out", str(tmp_path / "stats_copy")])
    _one_error_line(capsys, r"is a stepnorm normalized output, not a stats output", code=code)
    assert (tmp_path / "stats_copy" / "MANIFEST.json").exists()


def test_earlier_outputs_and_empty_directories_are_accepted(trust_root, tmp_path, capsys):
    cfg = str(trust_root / "sample" / "config.yaml")
    (tmp_path / "empty").mkdir()
    assert main(["stats", cfg, "--out", str(tmp_path / "empty")]) == 0
    assert main(["stats", cfg, "--out", str(tmp_path / "empty")]) == 0  # its own earlier output
    assert (tmp_path / "empty" / ".stepnorm-output.json").exists()
    # an artifact written before markers existed is recognized by its own files
    legacy = tmp_path / "legacy"
    shutil.copytree(tmp_path / "empty", legacy)
    (legacy / ".stepnorm-output.json").unlink()
    assert main(["stats", cfg, "--out", str(legacy)]) == 0
    old_sample = tmp_path / "old_sample"  # e.g. a demo_out/sample from before markers
    shutil.copytree(trust_root / "sample", old_sample)
    (old_sample / ".stepnorm-output.json").unlink()
    assert main(["sample", str(old_sample)]) == 0


# -- the swap never passes through a moment without a complete artifact -------------------------
_KILL_AT = textwrap.dedent("""
    import json, os, sys
    import stepnorm.outputs as outputs
    from stepnorm.artifact import write_artifact
    step, target, use_exchange = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    doc = json.loads(open(sys.argv[4]).read())
    doc["created"] = "new"
    real_rename, real_exchange, real_rmtree = os.rename, outputs._exchange, outputs.shutil.rmtree
    def die(name):
        if name == step:
            os._exit(9)
    def rename(a, b):
        die("before-rename-" + str(rename.n)); rename.n += 1
        real_rename(a, b)
    rename.n = 0
    def exchange(a, b):
        if not use_exchange:
            return False
        die("before-exchange"); ok = real_exchange(a, b); die("after-exchange"); return ok
    def rmtree(p, **k):
        die("before-rmtree"); real_rmtree(p, **k)
    outputs.os.rename = rename
    outputs._exchange = exchange
    outputs.shutil.rmtree = rmtree
    write_artifact(target, doc)
""")


@pytest.mark.parametrize("use_exchange, step", [
    (True, "before-exchange"), (True, "after-exchange"), (True, "before-rmtree"),
    (False, "before-rename-0"), (False, "before-rename-1"), (False, "before-rmtree"),
])
def test_kill_during_the_artifact_swap_leaves_a_complete_artifact(trust_root, tmp_path, use_exchange, step):
    from stepnorm.artifact import read_artifact

    target = tmp_path / "stats"
    shutil.copytree(trust_root / "stats", target)
    doc_file = tmp_path / "doc.json"
    doc_file.write_text((target / "stats.json").read_text())
    proc = subprocess.run([sys.executable, "-c", _KILL_AT, step, str(target), "1" if use_exchange else "0",
                           str(doc_file)], env={**os.environ, **QUIET}, capture_output=True, timeout=120)
    assert proc.returncode == 9, proc.stderr.decode()[-2000:]
    if use_exchange or step == "before-rmtree":  # with an atomic exchange there is no gap at all
        assert read_artifact(target).doc["created"] in ("new", json.loads(doc_file.read_text())["created"])
    # the next writer repairs a killed two-rename swap and removes every leftover
    cfg = str(trust_root / "sample" / "config.yaml")
    assert main(["stats", cfg, "--out", str(target)]) == 0
    read_artifact(target)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_killed_stats_run_leaves_no_staging_after_the_next_run(trust_root, tmp_path):
    cfg = str(trust_root / "sample" / "config.yaml")
    hold = textwrap.dedent("""
        import os, sys
        import stepnorm.pipelines.stats as stats
        def die(*a, **k):
            os._exit(9)
        stats.read_into_cache = die
        from stepnorm.cli import main
        main(sys.argv[1:])
    """)
    out = tmp_path / "stats"
    # --force: the data is read (not served from the values cache), so the run dies while writing
    proc = subprocess.run([sys.executable, "-c", hold, "stats", cfg, "--out", str(out), "--force"],
                          env={**os.environ, **QUIET},
                          capture_output=True, timeout=120)
    assert proc.returncode == 9
    assert not out.exists()
    left = [p.name for p in tmp_path.iterdir()]
    assert left and all(n.startswith(".stats.") for n in left)  # the killed run's staging and lock file
    assert main(["stats", cfg, "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats"]


def test_a_second_writer_to_the_same_out_fails_with_a_clear_line(trust_root, tmp_path, capsys):
    from stepnorm.outputs import output_lock

    cfg = str(trust_root / "sample" / "config.yaml")
    out = tmp_path / "stats"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from stepnorm.outputs import output_lock
        with output_lock(Path({str(out)!r})):
            print("locked", flush=True)
            sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, **QUIET})
    try:
        assert holder.stdout.readline().strip() == b"locked"
        code = main(["stats", cfg, "--out", str(out)])
        _one_error_line(capsys, r"another stepnorm process \(pid \d+ on .*\) is writing this output", code=code)
    finally:
        holder.communicate(b"", timeout=30)
    assert not out.exists()
    with output_lock(out):  # released and removed by the holder
        pass


def test_normalize_bundles_exactly_the_statistics_it_applied(trust_root, tmp_path, monkeypatch):
    """A stats rewrite between normalize's read and its copy cannot change what is bundled."""
    import stepnorm.pipelines.normalize as normalize

    cfg_path = trust_root / "sample" / "config.yaml"
    stats = tmp_path / "stats"
    shutil.copytree(trust_root / "stats", stats)
    original = normalize._finish_dataset

    def rewrite_meanwhile(*args, **kwargs):
        doc = json.loads((stats / "stats.json").read_text())
        doc["created"] = "rewritten by a concurrent stats run"
        (stats / "stats.json").write_text(json.dumps(doc))
        return original(*args, **kwargs)

    monkeypatch.setattr(normalize, "_finish_dataset", rewrite_meanwhile)
    assert main(["normalize", str(cfg_path), "--stats", str(stats), "--out", str(tmp_path / "out")]) == 0
    bundled = (tmp_path / "out" / "stats" / "stats.json").read_bytes()
    assert bundled == (trust_root / "stats" / "stats.json").read_bytes()
    manifest = json.loads((tmp_path / "out" / "MANIFEST.json").read_text())
    assert manifest["stats_fingerprint"] == json.loads(bundled)["fingerprint"]


# -- 2. weights, names, limits at config time -----------------------------------------------------
def _config(trust_root, tmp_path, edit, text=None) -> Path:
    raw = yaml.safe_load((trust_root / "sample" / "config.yaml").read_text())
    for ds in raw["datasets"]:
        ds["path"] = str(trust_root / "sample" / ds["path"])
    edit(raw)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("edit, pattern", [
    (lambda c: (c.update(weighting="mixture"), c["datasets"][0].update(weight=float("inf"))),
     r"weight must be a finite number > 0, got inf"),
    (lambda c: c["datasets"][0].update(weight=float("nan")), r"weight must be a finite number > 0, got nan"),
    (lambda c: c["datasets"][0].update(weight=0), r"weight must be a finite number > 0, got 0"),
    (lambda c: c["datasets"][0].update(weight=-1.0), r"weight must be a finite number > 0"),
    (lambda c: c["datasets"][0].update(name="real-pick"), r"name 'real-pick' is not a valid dataset name.*'real_pick'"),
    (lambda c: c["datasets"][0].update(name="my data"), r"name 'my data' is not a valid dataset name.*'my_data'"),
    (lambda c: c["datasets"][0].update(name="rëal"), r"name 'rëal' is not a valid dataset name: use lowercase ASCII"),
    (lambda c: c.update(horizon=10 ** 9), r"horizon must be at most 4096"),
    (lambda c: c.update(sketch_k=10 ** 9), r"sketch_k must be at most 65535"),
])
def test_bad_weights_names_and_limits_fail_before_any_work(trust_root, tmp_path, capsys, edit, pattern):
    path = _config(trust_root, tmp_path, edit)
    for command in (["stats", str(path), "--out", str(tmp_path / "o")],
                    ["normalize", str(path), "--stats", str(trust_root / "stats"), "--out", str(tmp_path / "o")]):
        code = main(command)
        _one_error_line(capsys, r"config.yaml: .*" + pattern, code=code)
        assert not (tmp_path / "o").exists()


def test_huge_weights_keep_the_mixture_finite(trust_root, tmp_path):
    """Weights of 1e308 are ratios like any others: the same combined statistics as weights 1."""
    outs = {}
    for w in (1.0, 1e308):
        path = _config(trust_root, tmp_path / str(w), lambda c: (c.update(weighting="mixture"),
                                                                 [d.update(weight=w) for d in c["datasets"]]))
        assert main(["stats", str(path), "--out", str(tmp_path / str(w) / "stats")]) == 0
        outs[w] = json.loads((tmp_path / str(w) / "stats" / "stats.json").read_text())["combined"]
    mean = np.asarray(outs[1e308]["action"]["global"]["mean"])
    assert np.all(np.isfinite(mean)) and np.any(mean != 0)
    np.testing.assert_allclose(mean, outs[1.0]["action"]["global"]["mean"], rtol=1e-12)


@pytest.mark.parametrize("content, pattern", [
    (b"horizon: 4\nhorizon: 8\ndatasets: []\n", r"key 'horizon' appears twice in one mapping at line 2"),
    (b"horizon: 4\n\xff\xfe datasets\n", r"is not UTF-8 text"),
])
def test_config_files_that_cannot_be_read_as_one_mapping(tmp_path, capsys, content, pattern):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    code = main(["stats", str(path), "--out", str(tmp_path / "o")])
    _one_error_line(capsys, r"config.yaml: " + pattern, code=code)


def test_config_that_is_a_directory_or_a_symlink_loop(tmp_path, capsys):
    (tmp_path / "dir.yaml").mkdir()
    code = main(["stats", str(tmp_path / "dir.yaml"), "--out", str(tmp_path / "o")])
    _one_error_line(capsys, r"dir.yaml: is a directory, not a config file", code=code)
    os.symlink(tmp_path / "loop.yaml", tmp_path / "loop.yaml")
    code = main(["stats", str(tmp_path / "loop.yaml"), "--out", str(tmp_path / "o")])
    _one_error_line(capsys, r"loop.yaml: cannot read the config file \(Too many levels of symbolic links\)", code=code)


# -- 7. hand-edited artifacts -------------------------------------------------------------------
@pytest.mark.parametrize("edit, pattern", [
    (lambda d: d["combined"]["action"]["global"]["mean"].__setitem__(0, 12.5),
     r"do not match their checksum: the file was edited by hand or is corrupt"),
    (lambda d: d["datasets"]["sim_pick"]["action"]["global"]["std"].__setitem__(1, -0.5),
     r"datasets.sim_pick.action.global has a negative std"),
])
def test_hand_edited_numbers_are_detected_everywhere(trust_root, tmp_path, capsys, edit, pattern):
    stats = tmp_path / "stats"
    shutil.copytree(trust_root / "stats", stats)
    doc = json.loads((stats / "stats.json").read_text())
    edit(doc)
    (stats / "stats.json").write_text(json.dumps(doc))
    cfg = str(trust_root / "sample" / "config.yaml")
    for argv in (["export", str(stats), "--format", "lerobot", "--out", str(tmp_path / "e")],
                 ["normalize", cfg, "--stats", str(stats), "--out", str(tmp_path / "n")],
                 ["validate", cfg, "--stats", str(stats), "--report", str(tmp_path / "r")]):
        code = main(argv)
        _one_error_line(capsys, pattern, code=code)
    assert not (tmp_path / "e").exists() and not (tmp_path / "n").exists()


def test_stats_json_that_is_a_directory(tmp_path, capsys):
    (tmp_path / "stats" / "stats.json").mkdir(parents=True)
    code = main(["export", str(tmp_path / "stats"), "--format", "openpi", "--out", str(tmp_path / "e")])
    _one_error_line(capsys, r"stats.json: is not a file", code=code)


# -- 4. one exit-code contract --------------------------------------------------------------------
def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(trust_root, tmp_path, capsys, monkeypatch):
    import stepnorm.pipelines.stats as stats

    def crash(*a, **k):
        raise RuntimeError("worker fell over\nwith a second line")

    monkeypatch.setattr(stats, "read_into_cache", crash)
    cfg = str(trust_root / "sample" / "config.yaml")
    code = main(["stats", cfg, "--out", str(tmp_path / "o"), "--force"])
    _one_error_line(capsys, r"internal error \(RuntimeError: worker fell over with a second line\); rerun with "
                            r"--debug", code=code)
    monkeypatch.delenv("STEPNORM_DEBUG", raising=False)
    code = main(["stats", cfg, "--out", str(tmp_path / "o"), "--force", "--debug"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith(
        "stepnorm: error: internal error")
    os.environ.pop("STEPNORM_DEBUG", None)
    assert not (tmp_path / "o").exists()


def test_filesystem_errors_are_one_line(trust_root, tmp_path, capsys, monkeypatch):
    import errno

    import stepnorm.artifact as artifact

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "o" / "stats.json"))

    monkeypatch.setattr(artifact, "fill_artifact", full)
    import stepnorm.pipelines.stats as stats

    monkeypatch.setattr(stats, "fill_artifact", full)
    code = main(["stats", str(trust_root / "sample" / "config.yaml"), "--out", str(tmp_path / "o")])
    _one_error_line(capsys, r"o/stats.json: No space left on device", code=code)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["stats"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stepnorm: error: stepnorm stats: the following arguments are required")


def _mount_tmpfs(path: Path, size: str, readonly=False) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if readonly else "")
    try:
        return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True,
                              timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def test_disk_full_and_read_only_filesystems(trust_root, tmp_path):
    """A real small tmpfs: stats and normalize exit 2 with one line and leave nothing finished-looking."""
    full, ro = tmp_path / "full", tmp_path / "ro"
    if not _mount_tmpfs(full, "64k"):
        pytest.skip("mounting a tmpfs is not allowed here (needs root and mount rights)")
    try:
        assert _mount_tmpfs(ro, "64k", readonly=True)
        cfg = str(trust_root / "sample" / "config.yaml")
        cases = [["stats", cfg, "--out", str(full / "stats"), "--force"],
                 ["normalize", cfg, "--stats", str(trust_root / "stats"), "--out", str(full / "norm")],
                 ["stats", cfg, "--out", str(ro / "stats")],
                 ["validate", cfg, "--stats", str(trust_root / "stats"), "--report", str(ro / "report")]]
        for argv in cases:
            proc = subprocess.run([sys.executable, "-m", "stepnorm.cli", *argv], capture_output=True, text=True,
                                  env={**os.environ, **QUIET}, timeout=300)
            err = proc.stderr.strip().splitlines()
            assert proc.returncode == 2, proc.stderr[-3000:]
            assert len(err) == 1 and err[0].startswith("stepnorm: error: "), err
            assert "No space left on device" in err[0] or "Read-only file system" in err[0], err[0]
        assert not [p for p in full.rglob("*") if p.name in ("stats.json", "MANIFEST.json")]
        assert not list(ro.iterdir())
    finally:
        subprocess.run(["umount", str(full)], capture_output=True)
        subprocess.run(["umount", str(ro)], capture_output=True)


# -- 3. counts in equal counts out, against the data itself -------------------------------------
def _lerobot_copy(real_data, tmp_path, name="unitree_g1_pick_bottle_lerobot_v21"):
    dst = tmp_path / name
    shutil.copytree(real_data / name, dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    cfg = tmp_path / "lerobot.yaml"
    cfg.write_text(yaml.safe_dump({"horizon": 4, "datasets": [
        {"name": "g1", "format": "lerobot", "path": str(dst), "action_key": "action",
         "state_key": "observation.state"}]}))
    return dst, cfg


def test_lerobot_episode_file_removed_is_an_error(real_data, tmp_path, capsys):
    root, cfg = _lerobot_copy(real_data, tmp_path)
    (root / "data" / "chunk-000" / "episode_000042.parquet").unlink()
    code = main(["stats", str(cfg), "--out", str(tmp_path / "o")])
    _one_error_line(capsys, r"meta/episodes.jsonl: declares 100 episodes but the data files hold 99 \(missing from "
                            r"the data: episode_index 42\)", code=code)
    assert not (tmp_path / "o").exists()


def test_lerobot_rows_written_twice_are_an_error(real_data, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root, cfg = _lerobot_copy(real_data, tmp_path)
    file = root / "data" / "chunk-000" / "episode_000007.parquet"
    table = pq.read_table(file)
    pq.write_table(pa.concat_tables([table, table.slice(0, 5)]), file)
    code = main(["stats", str(cfg), "--out", str(tmp_path / "o")])
    _one_error_line(capsys, r"episode_000007.parquet: 5 duplicated rows: episode_index 7 has frame_index 0 more than "
                            r"once", code=code)


def test_lerobot_metadata_totals_that_disagree_are_shown(real_data, tmp_path, capsys):
    cfg = tmp_path / "reachy.yaml"
    cfg.write_text(yaml.safe_dump({"horizon": 4, "datasets": [
        {"name": "reachy", "format": "lerobot", "path": str(real_data / "reachy2_apple_storage_lerobot_v30"),
         "action_key": "action", "state_key": "observation.state"}]}))
    assert main(["stats", str(cfg), "--out", str(tmp_path / "o")]) == 0
    assert "stepnorm: warning: " in capsys.readouterr().err and "total_frames says 14983 but the data holds 899"


def _bridge_copy(real_data, tmp_path):
    dst = tmp_path / "bridge"
    shutil.copytree(real_data / "bridge_octo_debug_rlds" / "bridge_dataset" / "1.0.0", dst)
    for p in dst.rglob("*"):
        p.chmod(0o644)
    cfg = tmp_path / "bridge.yaml"
    cfg.write_text(yaml.safe_dump({"horizon": 4, "datasets": [
        {"name": "bridge_debug", "format": "rlds", "path": str(dst), "split": "train", "action_key": "action",
         "state_key": "observation/state"}]}))
    return dst, cfg


def test_rlds_shard_lengths_that_undercount_are_an_error(real_data, tmp_path, capsys):
    root, cfg = _bridge_copy(real_data, tmp_path)
    info = json.loads((root / "dataset_info.json").read_text())
    for split in info["splits"]:
        if split["name"] == "train":
            split["shardLengths"] = [str(int(split["shardLengths"][0]) - 1)]
    (root / "dataset_info.json").write_text(json.dumps(info))
    code = main(["stats", str(cfg), "--out", str(tmp_path / "o")])
    _one_error_line(capsys, r"train.tfrecord-00000-of-00001: holds more records than the 24 that dataset_info.json's "
                            r"shardLengths declares", code=code)


def test_rlds_bytes_after_the_last_record_are_an_error(real_data, tmp_path, capsys):
    root, cfg = _bridge_copy(real_data, tmp_path)
    shard = root / "bridge_dataset-train.tfrecord-00000-of-00001"
    with open(shard, "ab") as f:
        f.write(b"appended")
    code = main(["stats", str(cfg), "--out", str(tmp_path / "o")])
    _one_error_line(capsys, r"train.tfrecord-00000-of-00001: 8 bytes after its last record \(record 25\)", code=code)


# -- the multi_processing runner gives the same exit code and line as the default one -------------
@pytest.mark.parametrize("damage", ["corrupt", "appended", "undercount"])
def test_multi_processing_errors_equal_the_default_runner(real_data, tmp_path, damage):
    root, cfg = _bridge_copy(real_data, tmp_path)
    shard = root / "bridge_dataset-train.tfrecord-00000-of-00001"
    if damage == "corrupt":
        data = bytearray(shard.read_bytes())
        data[100000] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif damage == "appended":
        with open(shard, "ab") as f:
            f.write(b"xx")
    else:
        info = json.loads((root / "dataset_info.json").read_text())
        info["splits"][[s["name"] for s in info["splits"]].index("train")]["shardLengths"] = ["20"]
        (root / "dataset_info.json").write_text(json.dumps(info))
    results = []
    for extra in ([], ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]):
        proc = subprocess.run([sys.executable, "-m", "stepnorm.cli", "stats", str(cfg), "--out",
                               str(tmp_path / "o"), *extra], capture_output=True, text=True,
                              env={**os.environ, **QUIET}, timeout=300)
        results.append((proc.returncode, proc.stderr.strip().splitlines()))
    (code_a, err_a), (code_b, err_b) = results
    assert code_a == code_b == 2
    assert len(err_a) == 1 and err_a == err_b, (err_a, err_b)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("edit, pattern", [
    (lambda c: c["datasets"][1].update(position_dims=[0, 1, 8]), r"datasets.real_pick.position_dims \[8\] out of "
                                                                 r"range for 8 state dims"),
    (lambda c: c["normalization"]["state"].update(mask=[True] * 5), r"normalization.state.mask has 5 entries but "
                                                                    r"dataset 'sim_pick' has 8 state dims"),
])
def test_masks_and_dims_are_checked_against_declared_widths_before_reading(trust_root, tmp_path, capsys,
                                                                           monkeypatch, edit, pattern):
    import stepnorm.pipelines.stats as stats

    def no_reading(*a, **k):
        raise AssertionError("a data file was read before the config was checked")

    monkeypatch.setattr(stats, "read_into_cache", no_reading)
    path = _config(trust_root, tmp_path, edit)
    code = main(["stats", str(path), "--out", str(tmp_path / "o")])
    _one_error_line(capsys, r"config.yaml: " + pattern, code=code)
    assert not (tmp_path / "o").exists()


# -- 8. Python API ----------------------------------------------------------------------------------
def _stats_block(dim=3):
    return {"count": 10, "mean": np.zeros(dim), "std": np.ones(dim), "min": -np.ones(dim), "max": np.ones(dim),
            "q01": -np.ones(dim), "q99": np.ones(dim)}


@pytest.mark.parametrize("kwargs, pattern", [
    ({"mode": "mean_std", "clip_value": -1.0}, r"clip_value must be a finite number > 0, got -1.0"),
    ({"mode": "mean_std", "clip_value": float("inf")}, r"clip_value must be a finite number > 0"),
    ({"mode": "zscore"}, r"mode must be one of mean_std, min_max, q01_q99"),
    ({"mode": "min_max", "floor": -1e-3}, r"floor must be a finite number >= 0"),
])
def test_normalizer_refuses_invalid_parameters_at_construction(kwargs, pattern):
    from stepnorm.normalize import Normalizer

    with pytest.raises(ValueError, match=pattern):
        Normalizer(_stats_block(), **kwargs)


@pytest.mark.parametrize("mode", ["q01_q99", "mean_std"])
def test_non_finite_input_raises_unless_allowed(mode):
    from stepnorm.normalize import Normalizer

    norm = Normalizer(_stats_block(), mode=mode, clip=True)
    for bad in (np.inf, -np.inf, np.nan):
        x = np.array([0.5, bad, 0.0])
        with pytest.raises(ValueError, match=r"input holds 1 non-finite value\(s\)"):
            norm.normalize(x)
        with pytest.raises(ValueError, match=r"non-finite"):
            norm.unnormalize(x)
    lenient = Normalizer(_stats_block(), mode=mode, clip=True, allow_nonfinite=True)
    out = lenient.normalize(np.array([0.5, np.nan, np.inf]))
    assert np.isnan(out[1]) and out[2] == lenient.clip_bound


def test_torch_modules_refuse_non_finite_input_unless_allowed():
    torch = pytest.importorskip("torch")
    from stepnorm.torch_norm import Normalize, Unnormalize

    for cls in (Normalize, Unnormalize):
        module = cls.from_stats(_stats_block(), mode="q01_q99", clip=True)
        with pytest.raises(ValueError, match=r"input holds 1 non-finite value\(s\)"):
            module(torch.tensor([0.1, float("inf"), 0.0]))
        lenient = cls.from_stats(_stats_block(), mode="q01_q99", clip=True, allow_nonfinite=True)
        assert torch.isnan(lenient(torch.tensor([0.1, float("nan"), 0.0])))[1]
