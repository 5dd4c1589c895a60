"""stepnorm on a real Dask cluster (a scheduler and two worker processes on 127.0.0.1).

The same commands as on the default runner must give the same results: statistics (see
``runner_compare``), byte-identical normalized shards, the same one-line errors, every worker
reading, and a dropped element failing the run. Beam's DaskRunner loses data silently in some
pipeline shapes; ``check_dask_shape`` refuses those, and the last tests show the losses are real.
They also pin the private parts of Beam's Dask runner that ``pipelines/runners.py`` reads
(``overrides._Create`` / ``_Reshuffle`` / ``_GroupAlsoByWindow``, ``transform_evaluator.TRANSLATIONS``):
a Beam upgrade that changes them fails here.
"""

import re
from pathlib import Path

import apache_beam as beam
import pytest
import yaml
from cluster_fixtures import bridge_config, dask_cluster, sample_config  # noqa: F401  (session fixtures)
from runner_compare import check_against_default_runner, check_same_error, corrupt_sample, run_cli

from stepnorm.cli import main

pytest.importorskip("distributed", reason="Dask is not installed (pip install 'stepnorm[dask]')")


@pytest.fixture(autouse=True)
def _fresh_values_cache(tmp_path, monkeypatch):
    """Each test reads its data through the runner under test, not from an earlier test's values cache."""
    monkeypatch.setenv("STEPNORM_CACHE", str(tmp_path / "values-cache"))


def dask_args(address):
    return ["--runner", "DaskRunner", "--dask_client_address", address]


@pytest.mark.parametrize("which", ["sample", "bridge"])
def test_stats_and_run_on_dask_equal_the_default_runner(which, request, dask_cluster, tmp_path, capsys):
    cfg = request.getfixturevalue(f"{which}_config")
    n = len(yaml.safe_load(cfg.read_text())["datasets"])
    out = check_against_default_runner(cfg, dask_args(dask_cluster), tmp_path, capsys)
    # One read (and one write) task per dataset here (one shard each): spread over both workers.
    assert out.count(f"dask: {n} tasks in {n} partitions over 2 workers (2 threads)") == 2, out  # stats, normalize
    assert re.search(rf"read {n} tasks in 2 worker processes \(\S+ 1, \S+ 1\)", out), out


def test_explicit_partitions_are_kept(sample_config, dask_cluster, tmp_path, capsys):
    code, out, _ = run_cli(["stats", str(sample_config), "--out", str(tmp_path / "a"), "--dask_npartitions", "1"]
                           + dask_args(dask_cluster), capsys)
    assert code == 0
    assert "dask: 2 tasks in 1 partitions (--dask_npartitions) over 2 workers" in out
    assert "read 2 tasks in 1 worker processes" in out  # one partition is one Dask task


def test_corrupt_shard_gives_the_same_error_as_locally(sample_config, dask_cluster, tmp_path, capsys):
    check_same_error(corrupt_sample(sample_config, tmp_path), dask_args(dask_cluster), tmp_path, capsys)


@pytest.mark.parametrize("runner", ["default", "dask"])
def test_a_dropped_episode_fails_the_run(runner, sample_config, dask_cluster, tmp_path, capsys, monkeypatch):
    import drop_injection

    import stepnorm.pipelines.stats_beam as stats_beam

    monkeypatch.setattr(stats_beam, "TaskValues", drop_injection.DropOneEpisode)
    extra = dask_args(dask_cluster) if runner == "dask" else []
    code, _, err = run_cli(["stats", str(sample_config), "--out", str(tmp_path / "o")] + extra, capsys)
    assert code == 2
    assert re.fullmatch(r"stepnorm: error: \S+sim_pick/1.0.0: workers read 35 episodes \(1267 steps\) but 34 "
                        r"\(\d+ steps\) reached the statistics \(episodes in != episodes out\)\n", err), err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("runner", ["default", "dask"])
@pytest.mark.parametrize("where, message", [
    ("read_task", r"this read task never finished on a worker"),
    ("stage", r"workers read \d+ episodes of dataset '\w+' but its statistics never arrived"),
    ("normalize_task", r"output shard 0 got None episodes, expected \d+ \(episodes in != episodes out\)"),
    ("normalize_record", r"output shard 0 got \d+ episodes, expected \d+ \(episodes in != episodes out\)"),
])
def test_every_stage_is_counted(runner, where, message, sample_config, dask_cluster, tmp_path, capsys, monkeypatch):
    import drop_injection

    import stepnorm.pipelines.normalize as normalize
    import stepnorm.pipelines.stats_beam as stats_beam

    extra = dask_args(dask_cluster) if runner == "dask" else []
    command = ["stats", str(sample_config), "--out", str(tmp_path / "o")]
    if where.startswith("normalize"):
        assert main(["stats", str(sample_config), "--out", str(tmp_path / "stats")]) == 0
        command = ["normalize", str(sample_config), "--stats", str(tmp_path / "stats"), "--out", str(tmp_path / "o")]
    if where in ("read_task", "normalize_task"):
        monkeypatch.setattr(beam, "Reshuffle", drop_injection.DropFirstElement)
    elif where == "stage":
        monkeypatch.setattr(stats_beam, "ValuesCache", drop_injection.DropCacheWrites)
    else:
        monkeypatch.setattr(normalize, "WriteShardsFn", drop_injection.DropOneRecord)
    code, _, err = run_cli(command + extra, capsys)
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("stepnorm: error: ") and re.search(message, err), err
    assert not (tmp_path / "o").exists()


def test_unknown_and_unreachable(sample_config, tmp_path, capsys):
    code, _, err = run_cli(["stats", str(sample_config), "--out", str(tmp_path / "o"), "--runner", "DaskRunner",
                            "--dask_npartition", "3"], capsys)
    assert code == 2 and err == "stepnorm: error: unknown Beam pipeline option(s): --dask_npartition\n"
    from cluster_fixtures import free_port

    code, _, err = run_cli(["stats", str(sample_config), "--out", str(tmp_path / "o"), "--runner", "DaskRunner",
                            "--dask_client_address", f"127.0.0.1:{free_port()}", "--dask_connection_timeout", "2"],
                           capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert re.match(r"stepnorm: error: 127.0.0.1:\d+: cannot reach the Dask scheduler", err), err


# -- the shapes Beam's DaskRunner (2.77) loses data in ----------------------------------------------
class _EmitInFinishBundle(beam.DoFn):
    def process(self, element):
        self.last = element

    def finish_bundle(self):
        from apache_beam.utils.windowed_value import WindowedValue
        from apache_beam.transforms.window import GlobalWindow

        yield WindowedValue(self.last, 0, [GlobalWindow()])


class _Tagged(beam.DoFn):
    def process(self, element):
        yield beam.pvalue.TaggedOutput("odd" if element % 2 else "even", element)


def _finish_bundle(p, sink):
    p | beam.Create([1, 2, 3]) | beam.ParDo(_EmitInFinishBundle()) | sink("out")


def _two_branches(p, sink):
    values = p | beam.Create([1, 2, 3])
    values | "a" >> sink("a")
    values | "b" >> sink("b")


def _tagged_outputs(p, sink):
    out = p | beam.Create([1, 2, 3]) | beam.ParDo(_Tagged()).with_outputs("odd", "even")
    (out.odd, out.even) | beam.Flatten() | sink("out")


def _side_input(p, sink):
    other = p | "other" >> beam.Create([10])
    p | beam.Create([1, 2]) | beam.Map(lambda x, o: x + o[0], beam.pvalue.AsList(other)) | sink("out")


def _write_to_text(p, sink):
    p | beam.Create(["a", "b"]) | beam.io.WriteToText(sink.directory + "/text")


def _read(p, sink):
    from apache_beam.io.iobase import Read
    from apache_beam.transforms.create_source import _CreateSource

    p | Read(_CreateSource([b"a", b"b"], beam.coders.BytesCoder())) | sink("out")


def _windowed(p, sink):
    (p | beam.Create([("k", 1)]) | beam.WindowInto(beam.window.FixedWindows(10)) | beam.GroupByKey()
     | sink("out"))


SHAPES = {
    "finish_bundle": (_finish_bundle, r"values emitted in finish_bundle are dropped"),
    "two_branches": (_two_branches, r"only the last output branch of a pipeline is computed"),
    "tagged_outputs": (_tagged_outputs, r"tagged outputs each receive every element"),
    "side_input": (_side_input, r"side inputs are not trusted on Dask"),
    "write_to_text": (_write_to_text, r"WindowInto has no Dask translation"),
    "windowed": (_windowed, r"WindowInto has no Dask translation"),
    "read": (_read, r"_Read has no Dask translation \(the runner passes its input through unchanged; a Read "
                    r"yields nothing\)"),
}


def _files_sink(directory):
    """A sink that writes each element as a file (the cluster's workers share this disk)."""
    def sink(name):
        def write(element):
            import uuid

            (Path(directory) / f"{name}-{element}-{uuid.uuid4().hex}").write_text("")
            return element
        return beam.Map(write)
    sink.directory = str(directory)
    return sink


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_shapes_that_lose_data_on_dask_are_refused(shape, tmp_path):
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.dask.dask_runner import DaskRunner

    from stepnorm.errors import UsageError
    from stepnorm.pipelines.runners import check_dask_shape, dask_translation

    build, message = SHAPES[shape]
    options = PipelineOptions(["--dask_client_address", "127.0.0.1:1"])
    p = beam.Pipeline(runner=DaskRunner(), options=options)
    build(p, _files_sink(tmp_path))
    with pytest.raises(UsageError, match=message):
        check_dask_shape(dask_translation(p, options))


@pytest.mark.parametrize("shape, expected, got", [
    ("finish_bundle", {"out": 1}, {}),  # the one value emitted in finish_bundle never arrives
    ("two_branches", {"a": 3, "b": 3}, {"b": 3}),  # branch "a" is not computed
    ("tagged_outputs", {"out": 3}, {"out": 6}),  # each tagged output receives all three elements
    ("write_to_text", {"text": 2}, {"text": 0}),  # its one output file is empty: both lines lost
])
def test_the_refused_shapes_really_lose_data_on_dask(shape, expected, got, dask_cluster, tmp_path):
    """What Beam's DaskRunner does with these shapes today (not through stepnorm's check). When
    Beam fixes one, this fails and the check can let that shape through."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.dask.dask_runner import DaskRunner

    p = beam.Pipeline(runner=DaskRunner(), options=PipelineOptions(["--dask_client_address", dask_cluster]))
    SHAPES[shape][0](p, _files_sink(tmp_path))
    result = p.run()
    result.wait_until_finish()
    result.client.close()
    counts = {}
    for f in tmp_path.iterdir():
        if f.name.startswith("text-"):  # WriteToText's shard: count its lines
            counts["text"] = len(f.read_text().splitlines())
        elif f.is_file():
            counts[f.name.split("-")[0]] = counts.get(f.name.split("-")[0], 0) + 1
    assert counts != expected
    assert counts == got


def test_stage2_on_dask_gives_the_default_runners_artifact(sample_config, dask_cluster, tmp_path, capsys):
    """``--stage2 beam`` on the Dask cluster: each dataset's accumulator and the exact-quantile
    passes (small sketch_k: they run for most cells) on the Dask workers; the same artifact bytes
    as the default runner's in-process stage 2."""
    doc = yaml.safe_load(sample_config.read_text())
    doc["sketch_k"] = 16
    for ds in doc["datasets"]:  # paths are relative to the config's directory
        ds["path"] = str((sample_config.parent / ds["path"]).resolve())
    cfg = tmp_path / "small-k.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    code, _, _ = run_cli(["stats", str(cfg), "--out", str(tmp_path / "local")], capsys)
    assert code == 0
    code, out, err = run_cli(["stats", str(cfg), "--out", str(tmp_path / "dask"), "--stage2", "beam"]
                             + dask_args(dask_cluster), capsys)
    assert code == 0, err
    assert "stage 2 on Beam: 2 datasets in 2 parts accumulated on the workers" in out
    assert int(re.search(r"(\d+) exact-quantile passes on the workers", out).group(1)) >= 1, out
    assert out.count("dask: 2 tasks in 2 partitions over 2 workers") >= 2, out  # accumulate, passes

    def files(root):
        got = {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        got[Path("stats.json")] = re.sub(rb'"created": "[^"]*"', b"", got[Path("stats.json")])
        return got

    assert files(tmp_path / "dask") == files(tmp_path / "local")
