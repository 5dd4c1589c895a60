"""The values cache holds one entry per LeRobot data file, end to end through `stepnorm stats`.

- a multi-file dataset gives one entry per ``data/chunk-XXX/*.parquet`` file (`stepnorm cache ls`);
- after one file is rewritten with other values (or a file is added, with the metadata a writer
  updates), a rerun reads that file only (the parquet reader records every file whose data it
  reads) and stats.json is the same bytes as a from-scratch run;
- an episode that continues in the next file (v3.0) comes out of the per-file entries exactly as
  the whole-dataset read gives it (order, indices, sources naming both files, values); max_frames
  cuts across files the same way and reads no file past the cut;
- with every entry reused no data file is opened, and the checks across files and against the
  episode metadata still run, with the errors the whole-dataset read raises;
- info.json: a change to what reading a file consults (the read keys' features) reads every file
  again; a change to the totals reads nothing but makes the old artifact stale.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import stepnorm.sources.lerobot as lerobot
from stepnorm.cli import main
from stepnorm.config import load_config
from stepnorm.errors import InputDataError
from stepnorm.sources import cached_episodes, needed_tasks, task_values_keys
from stepnorm.values import ValuesCache

# file -> [(episode_index, first frame_index, rows)]: episode 1 continues from file-000 into
# file-001 (as LeRobot v3.0 writes files by size), chunk-001 reuses chunk-000's file names.
LAYOUT = {
    "chunk-000/file-000.parquet": [(0, 0, 12), (1, 0, 5)],
    "chunk-000/file-001.parquet": [(1, 5, 4), (2, 0, 7)],
    "chunk-001/file-000.parquet": [(3, 0, 10), (4, 0, 6)],
    "chunk-001/file-001.parquet": [(5, 0, 8)],
}
FILES = list(LAYOUT)


def _table(parts, seed: int, first_index: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    episode, frame = [], []
    for index, start, rows in parts:
        episode += [index] * rows
        frame += list(range(start, start + rows))
    n = len(episode)
    action = np.cumsum(rng.normal(size=(n, 4)), axis=0).astype(np.float32)
    action[:, 3] = np.round(action[:, 3])  # ties
    state = rng.normal(size=(n, 3)).astype(np.float32)
    order = rng.permutation(n)  # rows stored out of order: the reader sorts by frame_index
    return pa.table({
        "episode_index": pa.array(np.asarray(episode)[order], pa.int64()),
        "frame_index": pa.array(np.asarray(frame)[order], pa.int64()),
        "index": pa.array(first_index + order, pa.int64()),
        "action": pa.array(list(action[order]), pa.list_(pa.float32())),
        "observation.state": pa.array(list(state[order]), pa.list_(pa.float32())),
    })


def _write_meta(root: Path, layout: dict, **info_extra) -> None:
    lengths: dict[int, int] = {}
    for parts in layout.values():
        for index, _, rows in parts:
            lengths[index] = lengths.get(index, 0) + rows
    info = {"codebase_version": "v3.0", "fps": 30, "total_episodes": len(lengths),
            "total_frames": sum(lengths.values()),
            "features": {"action": {"dtype": "float32", "shape": [4], "names": ["x", "y", "z", "g"]},
                         "observation.state": {"dtype": "float32", "shape": [3]},
                         "episode_index": {"dtype": "int64", "shape": [1]}}}
    info.update(info_extra)
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True, exist_ok=True)
    (root / "meta" / "info.json").write_text(json.dumps(info))
    index = sorted(lengths)
    pq.write_table(pa.table({"episode_index": pa.array(index, pa.int64()),
                             "length": pa.array([lengths[i] for i in index], pa.int64())}),
                   root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")


def _write_file(root: Path, relpath: str, parts, seed: int) -> None:
    target = root / "data" / relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(_table(parts, seed, 100 * seed), target)


def write_dataset(root: Path, layout: dict = LAYOUT) -> Path:
    for seed, (relpath, parts) in enumerate(layout.items()):
        _write_file(root, relpath, parts, seed)
    _write_meta(root, layout)
    return root


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("lerobot") / "ds")


@pytest.fixture
def dataset(pristine, tmp_path) -> Path:
    """A private copy (tests change files in it)."""
    root = tmp_path / "ds"
    shutil.copytree(pristine, root)
    return root


def _config(path: Path, root: Path, **extra) -> Path:
    ds = {"name": "robot", "format": "lerobot", "path": str(root), "action_key": "action",
          "state_key": "observation.state"}
    ds.update(extra.pop("dataset", {}))
    cfg = {"horizon": 4, "quantiles": [0.01, 0.5, 0.99],
           "normalization": {"action": {"mode": "q01_q99"}, "state": {"mode": "mean_std"}}, "datasets": [ds]}
    cfg.update(extra)
    path.write_text(yaml.safe_dump(cfg))
    return path


def _stats(cfg: Path, out: Path, cache: Path, capsys, *extra) -> str:
    capsys.readouterr()
    assert main(["stats", str(cfg), "--out", str(out), "--cache", str(cache), *extra]) == 0
    return capsys.readouterr().out


def _bytes(out: Path) -> str:
    """stats.json's text with the ``created`` timestamp blanked (the one field allowed to differ)."""
    return re.sub(r'"created": "[^"]*"', '"created": ""', (out / "stats.json").read_text())


def _rel(root: Path, file) -> str:
    return Path(file).relative_to(root / "data").as_posix()


def _record_reads(monkeypatch, root: Path) -> list[str]:
    """Every data file whose rows are read (the per-file reader, and any read of a ParquetFile that
    lerobot.py opens), as paths relative to ``root/data``, in order; footers alone do not count."""
    reads: list[str] = []
    real_open, real_file = lerobot._open_parquet, lerobot.iter_lerobot_file_episodes

    class Recording:
        def __init__(self, pf, file):
            self._pf, self._file = pf, file

        def __getattr__(self, name):
            return getattr(self._pf, name)

        def read(self, *args, **kwargs):
            reads.append(_rel(root, self._file))
            return self._pf.read(*args, **kwargs)

        def read_row_group(self, *args, **kwargs):
            reads.append(_rel(root, self._file))
            return self._pf.read_row_group(*args, **kwargs)

    def file_episodes(file, **kwargs):
        reads.append(f"parts of {_rel(root, file)}")
        return real_file(file, **kwargs)

    monkeypatch.setattr(lerobot, "_open_parquet", lambda file: Recording(real_open(file), file))
    monkeypatch.setattr(lerobot, "iter_lerobot_file_episodes", file_episodes)
    return reads


def _forbid_data_files(monkeypatch, root: Path) -> None:
    """Opening any file under ``root/data`` (footer or rows, by any pyarrow entry point) fails."""
    data = str(root / "data")

    def guard(real):
        def opened(source, *args, **kwargs):
            if str(source).startswith(data):
                raise AssertionError(f"a data file was opened: {source}")
            return real(source, *args, **kwargs)
        return opened

    for name in ("ParquetFile", "read_table", "read_metadata", "read_schema"):
        monkeypatch.setattr(pq, name, guard(getattr(pq, name)))

    def fail(*args, **kwargs):
        raise AssertionError("a data file was read")

    monkeypatch.setattr(lerobot, "iter_lerobot_file_episodes", fail)


def _whole_read(root: Path, **kwargs):
    return list(lerobot.iter_lerobot_episodes(root, dataset="robot", action_key="action",
                                              state_key="observation.state", **kwargs))


def _reference(root: Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    rows: dict[int, list] = {}
    for file in sorted((root / "data").rglob("*.parquet")):
        t = pq.read_table(file).to_pydict()
        for ep, frame, action, state in zip(t["episode_index"], t["frame_index"], t["action"], t["observation.state"],
                                            strict=True):
            rows.setdefault(ep, []).append((frame, action, state))
    out = {}
    for ep, items in rows.items():
        items.sort(key=lambda item: item[0])
        out[ep] = (np.array([i[1] for i in items], np.float32), np.array([i[2] for i in items], np.float32))
    return out


def _same_episodes(got, want):
    assert [(e.index, e.length, e.source) for e in got] == [(e.index, e.length, e.source) for e in want]
    for a, b in zip(got, want, strict=True):
        assert a.dataset == b.dataset and a.action.dtype == b.action.dtype and a.state.dtype == b.state.dtype
        assert a.action.tobytes() == b.action.tobytes() and a.state.tobytes() == b.state.tobytes()
        assert a.extra == b.extra


# -- (1) one entry per data file ------------------------------------------------------------------
def test_one_cache_entry_per_data_file(dataset, tmp_path, capsys):
    cache = tmp_path / "cache"
    printed = _stats(_config(tmp_path / "c.yaml", dataset), tmp_path / "a", cache, capsys)
    assert re.search(r"robot\s+computed\s+6 episodes\s+52 steps", printed), printed
    assert main(["cache", "ls", "--cache", str(cache)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("4 entries"), lines
    # one line per file (chunk-001 reuses chunk-000's file names), with the episode parts it holds
    shown = {relpath: [ln for ln in lines[:-1] if f" {relpath} " in ln] for relpath in FILES}
    assert all(len(v) == 1 for v in shown.values()), lines
    for relpath, parts in LAYOUT.items():
        assert re.search(rf" {len(parts)} episodes ", shown[relpath][0]), shown[relpath]
    # the keys are the tasks' keys, one per file in path order
    cfg = load_config(tmp_path / "c.yaml")
    tasks = task_values_keys(cfg.datasets[0])
    assert [_rel(dataset, t.locator) for t, _ in tasks] == FILES
    assert sorted(e["key"] for e in ValuesCache(cache).entries()) == sorted(k for _, k in tasks)


# -- (2) only a rewritten or added file is read -----------------------------------------------------
@pytest.mark.parametrize("relpath", ["chunk-000/file-001.parquet", "chunk-001/file-000.parquet"])
def test_only_a_rewritten_file_is_read_and_equals_a_fresh_run(dataset, tmp_path, monkeypatch, capsys, relpath):
    # chunk-000/file-001 holds the rest of episode 1 (which starts in file-000): its entry alone is
    # rebuilt, and the episode is assembled again from the old part and the new one
    cfg, cache = _config(tmp_path / "c.yaml", dataset), tmp_path / "cache"
    _stats(cfg, tmp_path / "a", cache, capsys)
    before = _bytes(tmp_path / "a")
    _write_file(dataset, relpath, LAYOUT[relpath], seed=99)  # other values, same episodes and lengths
    with monkeypatch.context() as m:
        reads = _record_reads(m, dataset)
        printed = _stats(cfg, tmp_path / "a", cache, capsys)
    assert reads == [f"parts of {relpath}", relpath], reads
    assert "(1 of 4 read tasks read)" in printed, printed
    _stats(cfg, tmp_path / "fresh", tmp_path / "fresh-cache", capsys)
    assert _bytes(tmp_path / "a") == _bytes(tmp_path / "fresh") != before
    assert main(["cache", "ls", "--cache", str(cache)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("5 entries")  # the old one stays


def test_an_added_file_is_the_only_one_read(dataset, tmp_path, monkeypatch, capsys):
    cfg, cache = _config(tmp_path / "c.yaml", dataset), tmp_path / "cache"
    _stats(cfg, tmp_path / "a", cache, capsys)
    # as a LeRobot writer adds episodes: a new file, info.json's totals and the episode metadata updated
    layout = dict(LAYOUT, **{"chunk-001/file-002.parquet": [(6, 0, 9)]})
    _write_file(dataset, "chunk-001/file-002.parquet", layout["chunk-001/file-002.parquet"], seed=7)
    _write_meta(dataset, layout)
    with monkeypatch.context() as m:
        reads = _record_reads(m, dataset)
        printed = _stats(cfg, tmp_path / "a", cache, capsys)
    assert reads == ["parts of chunk-001/file-002.parquet", "chunk-001/file-002.parquet"], reads
    assert re.search(r"robot\s+computed\s+7 episodes\s+61 steps\s+\(1 of 5 read tasks read\)", printed), printed
    _stats(cfg, tmp_path / "fresh", tmp_path / "fresh-cache", capsys)
    assert _bytes(tmp_path / "a") == _bytes(tmp_path / "fresh")


# -- (3) an episode in two files ------------------------------------------------------------------
def test_episode_spanning_two_files_is_the_whole_read_episode(dataset, tmp_path, capsys):
    cfg_path, cache = _config(tmp_path / "c.yaml", dataset), tmp_path / "cache"
    _stats(cfg_path, tmp_path / "a", cache, capsys)
    ds = load_config(cfg_path).datasets[0]
    tasks = task_values_keys(ds)
    got = list(cached_episodes(ds, tasks, ValuesCache(cache)))
    want = _whole_read(dataset)
    _same_episodes(got, want)
    assert [(e.index, e.length) for e in got] == [(0, 12), (1, 9), (2, 7), (3, 10), (4, 6), (5, 8)]
    files = [str(dataset / "data" / f) for f in FILES[:2]]
    assert got[1].source == f"{files[0]} + {files[1]} (episode_index 1)"
    reference = _reference(dataset)  # independently: every file whole, rows grouped and sorted
    for episode in got:
        np.testing.assert_array_equal(episode.action, reference[episode.index][0])
        np.testing.assert_array_equal(episode.state, reference[episode.index][1])
    # the entries themselves hold the parts, each file's alone
    parts = [[(e.index, e.length) for e in ValuesCache(cache).episodes([k], "robot")] for _, k in tasks]
    assert parts == [[(i, n) for i, _, n in LAYOUT[f]] for f in FILES]


@pytest.mark.parametrize("max_frames, files, lengths", [
    (15, 1, [12, 3]),    # cut in episode 1's first part: file-001 is not read
    (19, 2, [12, 7]),    # cut in its second part
    (21, 2, [12, 9]),    # exactly at its end
    (52, 4, [12, 9, 7, 10, 6, 8]),
])
def test_max_frames_cuts_across_files_as_the_whole_read(dataset, tmp_path, monkeypatch, capsys, max_frames, files,
                                                        lengths):
    cfg_path, cache = _config(tmp_path / "c.yaml", dataset, dataset={"max_frames": max_frames}), tmp_path / "cache"
    with monkeypatch.context() as m:
        reads = _record_reads(m, dataset)
        printed = _stats(cfg_path, tmp_path / "a", cache, capsys)
    # (the first file is also where the declared widths come from)
    assert sorted({r for r in reads if not r.startswith("parts of ")}) == FILES[:files], reads
    assert [r for r in reads if r.startswith("parts of ")] == [f"parts of {f}" for f in FILES[:files]], reads
    assert f"(1 of" not in printed and f" {sum(lengths)} steps" in printed, printed
    ds = load_config(cfg_path).datasets[0]
    needed = needed_tasks(ds, task_values_keys(ds), lambda key: ValuesCache(cache).counts(key, "robot")[1])
    assert len(needed) == files
    got = list(cached_episodes(ds, needed, ValuesCache(cache)))
    assert [e.length for e in got] == lengths
    _same_episodes(got, _whole_read(dataset, max_frames=max_frames))
    # the entries hold whole files (max_frames is applied when they are assembled), so a run
    # without max_frames reads only the files the first run did not
    full = _config(tmp_path / "full.yaml", dataset)
    with monkeypatch.context() as m:
        reads = _record_reads(m, dataset)
        _stats(full, tmp_path / "b", cache, capsys)
    assert [r for r in reads if r.startswith("parts of ")] == [f"parts of {f}" for f in FILES[files:]], reads
    assert sorted({r for r in reads if not r.startswith("parts of ")}) == FILES[files:], reads
    _stats(full, tmp_path / "fresh", tmp_path / "fresh-cache", capsys)
    assert _bytes(tmp_path / "b") == _bytes(tmp_path / "fresh")
    if max_frames < 52:  # max_frames is in the dataset's fingerprint
        assert json.loads((tmp_path / "a" / "stats.json").read_text())["datasets"]["robot"]["fingerprint"] != \
            json.loads((tmp_path / "b" / "stats.json").read_text())["datasets"]["robot"]["fingerprint"]


# -- (4) every entry reused: no data file opened, the dataset's checks still made --------------------
def test_every_entry_reused_opens_no_data_file(dataset, tmp_path, monkeypatch, capsys):
    cfg, cache = _config(tmp_path / "c.yaml", dataset), tmp_path / "cache"
    _stats(cfg, tmp_path / "a", cache, capsys)
    doc = yaml.safe_load(cfg.read_text())
    doc["horizon"] = 3
    cfg.write_text(yaml.safe_dump(doc))
    with monkeypatch.context() as m:
        _forbid_data_files(m, dataset)
        printed = _stats(cfg, tmp_path / "a", cache, capsys)
    assert "(extract reused)" in printed, printed
    _stats(cfg, tmp_path / "fresh", tmp_path / "fresh-cache", capsys)
    assert _bytes(tmp_path / "a") == _bytes(tmp_path / "fresh")


def _expected_error(root: Path) -> str:
    with pytest.raises(InputDataError) as info:
        _whole_read(root)
    return str(info.value)


def _declare_length(root: Path, index: int, length: int) -> None:
    path = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(path).to_pydict()
    table["length"][table["episode_index"].index(index)] = length
    pq.write_table(pa.table({k: pa.array(v, pa.int64()) for k, v in table.items()}), path)


def _drop_declared(root: Path, index: int) -> None:
    path = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(path).to_pydict()
    at = table["episode_index"].index(index)
    pq.write_table(pa.table({k: pa.array(v[:at] + v[at + 1:], pa.int64()) for k, v in table.items()}), path)


@pytest.mark.parametrize("change, pattern", [
    (lambda root: _declare_length(root, 1, 10), r"meta/episodes: 1 episode\(s\) have another length in the data: "
                                                 r"episode_index 1 is declared with 10 frames, the data holds 9"),
    (lambda root: _drop_declared(root, 4), r"meta/episodes: declares 5 episodes but the data files hold 6 "
                                           r"\(not declared: episode_index 4\)"),
], ids=["another_length", "undeclared_episode"])
def test_episode_metadata_is_checked_when_every_entry_is_reused(dataset, tmp_path, monkeypatch, capsys, change,
                                                                pattern):
    cfg, cache = _config(tmp_path / "c.yaml", dataset), tmp_path / "cache"
    _stats(cfg, tmp_path / "a", cache, capsys)
    change(dataset)  # the data files are untouched: every entry stays valid
    message = _expected_error(dataset)
    assert re.search(pattern, message), message
    with monkeypatch.context() as m:
        _forbid_data_files(m, dataset)
        code = main(["stats", str(cfg), "--out", str(tmp_path / "a"), "--cache", str(cache)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"stepnorm: error: {message}"], err


def _repeat_episode_0(root: Path) -> None:
    _write_file(root, "chunk-001/file-001.parquet", [(5, 0, 8), (0, 12, 2)], seed=3)


def _wider_action(root: Path) -> None:
    path = root / "data" / "chunk-001" / "file-000.parquet"
    table = pq.read_table(path)
    wider = [row + [0.5] for row in table["action"].to_pylist()]
    table = table.set_column(table.schema.get_field_index("action"), "action", pa.array(wider, pa.list_(pa.float32())))
    pq.write_table(table, path)


@pytest.mark.parametrize("change, pattern", [
    (_repeat_episode_0, r"chunk-001/file-001\.parquet: episode_index 0 also appears in an earlier, non-adjacent "
                        r"data file"),
    (_wider_action, r"chunk-001/file-000\.parquet: column 'action' has 5 values per row in episode_index 3, but "
                    r"earlier episodes have 4"),
], ids=["non_adjacent_episode", "width_change"])
def test_checks_across_files_give_the_whole_read_errors(dataset, tmp_path, monkeypatch, capsys, change, pattern):
    """Errors only the dataset's files together show: each file's entry is written, the assembly
    raises what the whole-dataset read raises, and again when every entry is reused."""
    cfg, cache = _config(tmp_path / "c.yaml", dataset), tmp_path / "cache"
    _stats(cfg, tmp_path / "a", cache, capsys)
    change(dataset)
    message = _expected_error(dataset)
    assert re.search(pattern, message), message
    for reuse in (False, True):  # reading the changed file, then from the cache alone
        with monkeypatch.context() as m:
            if reuse:
                _forbid_data_files(m, dataset)
            code = main(["stats", str(cfg), "--out", str(tmp_path / "a"), "--cache", str(cache)])
        # (a read prints info.json's totals that disagree with the data as warnings first)
        err = [ln for ln in capsys.readouterr().err.strip().splitlines() if not ln.startswith("stepnorm: warning:")]
        assert code == 2 and err == [f"stepnorm: error: {message}"], err
    assert (tmp_path / "a" / "stats.json").exists()  # the earlier artifact is left as it was


# -- info.json ------------------------------------------------------------------------------------
def test_info_json_what_reading_consults_reads_again_the_rest_only_restales(dataset, tmp_path, monkeypatch, capsys):
    from stepnorm.artifact import staleness

    cfg, cache = _config(tmp_path / "c.yaml", dataset), tmp_path / "cache"
    _stats(cfg, tmp_path / "a", cache, capsys)
    old = json.loads((tmp_path / "a" / "stats.json").read_text())
    info_path = dataset / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    # the totals (which a writer adding episodes changes) and another feature: no file's reading
    # depends on them, so every entry is reused, but the artifact is stale (metadata changed)
    info["total_frames"] += 1
    info["features"]["episode_index"]["shape"] = [2]
    info_path.write_text(json.dumps(info))
    assert staleness(load_config(cfg), old).datasets == {"robot": "changed"}
    with monkeypatch.context() as m:
        _forbid_data_files(m, dataset)
        printed = _stats(cfg, tmp_path / "a", cache, capsys)
    assert "(extract reused)" in printed, printed
    # the declared features of a key read: every file's key changes, every file is read again
    info["features"]["observation.state"]["shape"] = [1, 3]
    info_path.write_text(json.dumps(info))
    with monkeypatch.context() as m:
        reads = _record_reads(m, dataset)
        printed = _stats(cfg, tmp_path / "b", cache, capsys)
    assert sorted(r for r in reads if r.startswith("parts of ")) == [f"parts of {f}" for f in FILES], reads
    assert re.search(r"robot\s+computed\s+6 episodes\s+52 steps\n", printed), printed
    _stats(cfg, tmp_path / "fresh", tmp_path / "fresh-cache", capsys)
    assert _bytes(tmp_path / "b") == _bytes(tmp_path / "fresh")


def test_stage2_on_beam_assembles_episodes_across_files(dataset, tmp_path, capsys):
    """Stage 2 on Beam assembles the episode that continues into the next file, as in-process
    stage 2 does: the same artifact bytes (sketch_k small, so the exact passes run)."""
    cfg = _config(tmp_path / "c.yaml", dataset, sketch_k=8)
    _stats(cfg, tmp_path / "local", tmp_path / "cache", capsys, "--stage2", "local")
    printed = _stats(cfg, tmp_path / "beam", tmp_path / "cache", capsys, "--stage2", "beam")
    assert "1 datasets in 1 parts accumulated on the workers" in printed and "extract reused" in printed
    assert int(re.search(r"(\d+) exact-quantile passes on the workers", printed).group(1)) >= 1
    assert _bytes(tmp_path / "beam") == _bytes(tmp_path / "local")
    for blob in sorted((tmp_path / "local").rglob("*.npz")):
        assert (tmp_path / "beam" / blob.relative_to(tmp_path / "local")).read_bytes() == blob.read_bytes()
