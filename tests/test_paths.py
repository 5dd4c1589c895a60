"""One rule for remote vs local paths (stepnorm.paths.is_remote), used by config, sources and normalize."""

from pathlib import Path

import pytest

from stepnorm.config import load_config
from stepnorm.errors import ConfigError
from stepnorm.paths import is_remote

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path, remote", [
    ("gs://gresearch/robotics/fractal20220817_data/0.1.0", True),
    ("s3://bucket/x", True),
    ("ram://stepnorm-test/shard", True),  # TensorFlow's in-memory filesystem (the reader's remote test)
    ("hdfs://namenode:8020/data", True),
    ("file:///tmp/x", True),
    ("/data/sets/bridge/1.0.0", False),
    ("relative/dir", False),
    ("./odd://name", False),  # "://" further in is part of a local name
    ("/data/a://b", False),
    ("my data://x", False),  # a space is no scheme character
    ("", False),
    (Path("/tmp/x"), False),
])
def test_is_remote(path, remote):
    assert is_remote(path) is remote


def test_config_resolves_local_paths_and_keeps_urls(tmp_path):
    (tmp_path / "odd:" / "name").mkdir(parents=True)
    (tmp_path / "config.yaml").write_text(
        "horizon: 4\ndatasets:\n"
        "  - {name: local, format: rlds, path: './odd://name'}\n"
        "  - {name: remote, format: rlds, path: 'gs://bucket/remote/1.0.0'}\n")
    local, remote = load_config(tmp_path / "config.yaml").datasets
    assert (local.path, local.is_remote) == (str((tmp_path / "odd:" / "name").resolve()), False)
    assert (remote.path, remote.is_remote) == ("gs://bucket/remote/1.0.0", True)
    (tmp_path / "odd:" / "name").rmdir()  # a local path must exist; a URL is not checked
    with pytest.raises(ConfigError, match="datasets.local.path './odd://name' does not exist"):
        load_config(tmp_path / "config.yaml")


@pytest.mark.parametrize("out", ["gs://bucket/normalized", "ram://normalized"])
def test_normalize_refuses_a_remote_output(out):
    from stepnorm.pipelines.normalize import run_normalize

    cfg = load_config(REPO / "configs" / "oxe_magic_soup.yaml")  # remote datasets, validates offline
    with pytest.raises(ConfigError, match="normalize writes to a local directory"):
        run_normalize(cfg, "unused", out)


def test_output_checks_guard_local_inputs_whatever_their_name(tmp_path, monkeypatch):
    from stepnorm.errors import OutputError
    from stepnorm.outputs import check_output

    monkeypatch.chdir(tmp_path)
    (tmp_path / "odd:" / "name").mkdir(parents=True)
    # a local input named with "://" further in is still an input: no output inside it
    with pytest.raises(OutputError, match="inside the input"):
        check_output("odd:/name/out", "stats", inputs=["./odd://name"])
    # a URL input is not on this disk: nothing to guard
    assert check_output(tmp_path / "out", "stats", inputs=["gs://bucket/data"]) == (tmp_path / "out").resolve()
