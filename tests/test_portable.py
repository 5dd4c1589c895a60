"""stepnorm through Beam's portable runner: a job service and an external SDK worker pool.

``local_job_service_main`` is the job endpoint and ``worker_pool_main`` the ``--environment_type
EXTERNAL`` environment, so the pipelines run in separate SDK worker processes, the SDK side that
Flink, Spark and Dataflow use (pickled DoFns, results handed over through files), with nothing
downloaded. Beam's local job service runs one SDK worker per job.
"""

import os
import re

import pytest
import yaml
from cluster_fixtures import bridge_config, portable_services, sample_config  # noqa: F401  (session fixtures)
from runner_compare import check_against_default_runner, check_same_error, corrupt_sample, run_cli


@pytest.fixture(autouse=True)
def _fresh_values_cache(tmp_path, monkeypatch):
    """Each test reads its data through the runner under test, not from an earlier test's values cache."""
    monkeypatch.setenv("STEPNORM_CACHE", str(tmp_path / "values-cache"))


@pytest.mark.parametrize("which", ["sample", "bridge"])
def test_stats_and_run_on_the_portable_runner_equal_the_default_runner(which, request, portable_services, tmp_path,
                                                                         capsys):
    cfg = request.getfixturevalue(f"{which}_config")
    n = len(yaml.safe_load(cfg.read_text())["datasets"])
    out = check_against_default_runner(cfg, portable_services, tmp_path, capsys)
    match = re.search(rf"read {n} tasks in 1 worker processes \(\S+:(\d+) {n}\)", out)
    assert match and int(match.group(1)) != os.getpid(), out  # read in an SDK worker, not here


def test_corrupt_shard_gives_the_same_error_as_locally(sample_config, portable_services, tmp_path, capsys):
    check_same_error(corrupt_sample(sample_config, tmp_path), portable_services, tmp_path, capsys)


def test_a_dropped_episode_fails_the_run(sample_config, portable_services, tmp_path, capsys, monkeypatch):
    import drop_injection

    import stepnorm.pipelines.stats_beam as stats_beam

    monkeypatch.setattr(stats_beam, "TaskValues", drop_injection.DropOneEpisode)
    code, _, err = run_cli(["stats", str(sample_config), "--out", str(tmp_path / "o")] + portable_services, capsys)
    assert code == 2
    assert re.fullmatch(r"stepnorm: error: \S+sim_pick/1.0.0: workers read 35 episodes \(1267 steps\) but 34 "
                        r"\(\d+ steps\) reached the statistics \(episodes in != episodes out\)\n", err), err
    assert not (tmp_path / "o").exists()
