"""LeRobot parquet reader, checked against an independent whole-file pyarrow reading."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stepnorm.errors import ConfigError, InputDataError
from stepnorm.sources.lerobot import (
    iter_lerobot_episodes,
    iter_lerobot_file_episodes,
    lerobot_data_files,
    lerobot_info,
)

REAL = Path(
    os.environ.get(
        "STEPNORM_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
    )
)
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real datasets not found at {REAL}")

# name -> (action key, state key, episodes, per-episode lengths or None, total rows, action dim)
# from the counts in shared/data/real/README.md.
REAL_SETS = {
    "reachy2_apple_storage_lerobot_v30": (
        "action",
        "observation.state",
        3,
        [299, 300, 300],
        899,
        19,
    ),
    "so101_record_test_lerobot_v30": (
        "action",
        "observation.state",
        4,
        [373, 374, 372, 373],
        1492,
        6,
    ),
    "lingzu_open50_lerobot_v30": ("actions", "state", 50, None, 20814, 34),
    "unitree_g1_pick_bottle_lerobot_v21": ("action", "observation.state", 100, None, 35965, 26),
    "gr1_sim_picknplace_lerobot_v20_SIM": (
        "action",
        "observation.state",
        5,
        [416, 470, 470, 412, 328],
        2096,
        44,
    ),
}


def reference_episodes(
    root: Path, action_key: str, state_key: str
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Independent reading: every data file whole, rows grouped with Python dicts and sorted
    by frame_index (or index when there is none)."""
    rows: dict[int, list[tuple[int, list[float], list[float]]]] = {}
    for file in sorted((root / "data").rglob("*.parquet")):
        table = pq.read_table(file).to_pydict()
        order = table["frame_index"] if "frame_index" in table else table["index"]
        for ep, pos, act, st in zip(
            table["episode_index"], order, table[action_key], table[state_key], strict=True
        ):
            rows.setdefault(ep, []).append((pos, act, st))
    dtype = np.float64 if "gr1" in root.name else np.float32
    out = {}
    for ep, items in rows.items():
        items.sort(key=lambda item: item[0])
        out[ep] = (
            np.array([item[1] for item in items], dtype=dtype),
            np.array([item[2] for item in items], dtype=dtype),
        )
    return out


@needs_real
@pytest.mark.parametrize("name", sorted(REAL_SETS))
def test_real_dataset_matches_independent_reading(name):
    action_key, state_key, n_episodes, lengths, total, dim = REAL_SETS[name]
    root = REAL / name
    episodes = list(
        iter_lerobot_episodes(root, dataset=name, action_key=action_key, state_key=state_key)
    )
    reference = reference_episodes(root, action_key, state_key)

    assert len(episodes) == n_episodes == len(reference)
    assert sum(e.length for e in episodes) == total
    if lengths is not None:
        assert [e.length for e in episodes] == lengths
    assert [e.index for e in episodes] == sorted(reference)
    for episode in episodes:
        ref_action, ref_state = reference[episode.index]
        assert episode.dataset == name
        assert episode.action.shape == (episode.length, dim)
        assert episode.action.dtype == ref_action.dtype
        np.testing.assert_array_equal(episode.action, ref_action)
        np.testing.assert_array_equal(episode.state, ref_state)
        assert str(root) in episode.source


@needs_real
def test_reachy2_wrong_total_frames_is_a_warning_and_data_wins():
    warnings: list[str] = []
    episodes = list(
        iter_lerobot_episodes(
            REAL / "reachy2_apple_storage_lerobot_v30",
            dataset="reachy2",
            action_key="action",
            state_key="observation.state",
            warnings=warnings,
        )
    )
    assert sum(e.length for e in episodes) == 899
    assert len(warnings) == 1
    assert "total_frames says 14983" in warnings[0] and "899" in warnings[0]


@needs_real
def test_consistent_metadata_gives_no_warnings():
    warnings: list[str] = []
    for _ in iter_lerobot_episodes(
        REAL / "so101_record_test_lerobot_v30",
        dataset="so101",
        action_key="action",
        state_key="observation.state",
        warnings=warnings,
    ):
        pass
    assert warnings == []


@needs_real
def test_info_names_are_flattened():
    unitree = lerobot_info(REAL / "unitree_g1_pick_bottle_lerobot_v21")
    names = unitree["features"]["action"]["names"]
    assert len(names) == 26 and all(isinstance(n, str) for n in names)
    assert names[0] == "kLeftShoulderPitch"
    so101 = lerobot_info(REAL / "so101_record_test_lerobot_v30")
    assert so101["features"]["action"]["names"][0] == "shoulder_pan.pos"


@needs_real
def test_data_files_are_sorted_and_complete():
    files = lerobot_data_files(REAL / "lingzu_open50_lerobot_v30")
    assert [f.name for f in files] == [f"file-{i:03d}.parquet" for i in range(50)]
    assert len(lerobot_data_files(REAL / "unitree_g1_pick_bottle_lerobot_v21")) == 100


@needs_real
@pytest.mark.parametrize(
    "version_dir", ["pusht", "aloha_sim_insertion_human", "umi_cup_in_the_wild"]
)
def test_v1_format_is_rejected(version_dir):
    root = REAL / "lerobot_v1_format_testdata" / version_dir
    with pytest.raises(InputDataError, match=r"v1\.x.*not supported.*v2 converter") as info:
        list(iter_lerobot_episodes(root, dataset="v1", action_key="action", state_key=None))
    assert str(root) in str(info.value)


@needs_real
def test_max_frames_cuts_the_crossing_episode():
    root = REAL / "so101_record_test_lerobot_v30"
    reference = reference_episodes(root, "action", "observation.state")
    episodes = list(
        iter_lerobot_episodes(
            root,
            dataset="so101",
            action_key="action",
            state_key="observation.state",
            max_frames=500,
        )
    )
    assert [e.length for e in episodes] == [373, 127]
    assert "truncated" not in episodes[0].extra
    assert episodes[1].extra["truncated"] is True
    np.testing.assert_array_equal(episodes[1].action, reference[1][0][:127])
    np.testing.assert_array_equal(episodes[1].state, reference[1][1][:127])


@needs_real
@pytest.mark.parametrize(
    "max_frames, lengths", [(373, [373]), (1, [1]), (10_000, [373, 374, 372, 373])]
)
def test_max_frames_at_and_beyond_boundaries(max_frames, lengths):
    episodes = list(
        iter_lerobot_episodes(
            REAL / "so101_record_test_lerobot_v30",
            dataset="so101",
            action_key="action",
            state_key=None,
            max_frames=max_frames,
        )
    )
    assert [e.length for e in episodes] == lengths
    assert all(e.state is None for e in episodes)


@pytest.mark.parametrize("bad", [0, -5, 2.5, True])
def test_max_frames_must_be_positive_integer(bad, tmp_path):
    with pytest.raises(ConfigError, match="max_frames"):
        list(
            iter_lerobot_episodes(
                tmp_path, dataset="x", action_key="action", state_key=None, max_frames=bad
            )
        )


@needs_real
def test_columns_only_false_keeps_other_columns():
    episodes = list(
        iter_lerobot_episodes(
            REAL / "gr1_sim_picknplace_lerobot_v20_SIM",
            dataset="gr1",
            action_key="action",
            state_key="observation.state",
            columns_only=False,
        )
    )
    first = episodes[0]
    reference = pq.read_table(
        REAL / "gr1_sim_picknplace_lerobot_v20_SIM/data/chunk-000/episode_000000.parquet"
    )
    np.testing.assert_array_equal(
        first.extra["timestamp"], reference.column("timestamp").to_numpy()
    )
    assert first.extra["next.done"].shape == (416,)
    assert "observation.state" not in first.extra and "action" not in first.extra


@needs_real
def test_missing_key_names_file_and_lists_columns():
    root = REAL / "lingzu_open50_lerobot_v30"
    with pytest.raises(InputDataError) as info:
        list(
            iter_lerobot_episodes(
                root, dataset="lingzu", action_key="action", state_key="observation.state"
            )
        )
    message = str(info.value)
    assert "file-000.parquet" in message
    assert "'action'" in message and "'observation.state'" in message
    assert "available columns: actions, state" in message


# --- synthetic datasets ----------------------------------------------------------------------


def make_dataset(
    root: Path, files: dict[str, pa.Table], version: str = "v3.0", **info_extra
) -> Path:
    """A minimal LeRobot directory: meta/info.json plus the given data files."""
    (root / "meta").mkdir(parents=True)
    info = {
        "codebase_version": version,
        "features": {"action": {"dtype": "float32", "shape": [2]}},
        **info_extra,
    }
    (root / "meta" / "info.json").write_text(json.dumps(info))
    for relpath, table in files.items():
        target = root / "data" / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, target)
    return root


def table(episode_index, action, **columns) -> pa.Table:
    return pa.table(
        {"episode_index": pa.array(episode_index, pa.int64()), "action": action, **columns}
    )


def read(root: Path, **kwargs):
    return list(
        iter_lerobot_episodes(
            root, dataset="synthetic", action_key="action", state_key=None, **kwargs
        )
    )


def test_unsorted_rows_are_grouped_and_ordered_by_index(tmp_path):
    # Two episodes interleaved and shuffled, no frame_index: order must come from `index`.
    index = [4, 0, 3, 1, 2, 5]
    episode_index = [1, 0, 1, 0, 0, 1]
    action = pa.array([[float(i), -float(i)] for i in index], pa.list_(pa.float64()))
    root = make_dataset(
        tmp_path / "ds", {"chunk-000/file-000.parquet": table(episode_index, action, index=index)}
    )
    episodes = read(root)
    assert [e.index for e in episodes] == [0, 1]
    np.testing.assert_array_equal(episodes[0].action, [[0, 0], [1, -1], [2, -2]])
    np.testing.assert_array_equal(episodes[1].action, [[3, -3], [4, -4], [5, -5]])
    assert episodes[0].action.dtype == np.float64


def test_frame_index_gap_is_a_warning(tmp_path):
    action = pa.array([[0.0, 0.0]] * 3, pa.list_(pa.float32()))
    root = make_dataset(
        tmp_path / "ds",
        {"chunk-000/file-000.parquet": table([0, 0, 0], action, frame_index=[0, 1, 3])},
    )
    warnings: list[str] = []
    assert [e.length for e in read(root, warnings=warnings)] == [3]
    assert any(
        "frame_index skips or repeats values" in w and "file-000.parquet" in w for w in warnings
    )


def test_episode_split_across_two_files_is_merged(tmp_path):
    fixed = pa.list_(pa.float32(), 2)
    first = table(
        [0, 0, 1, 1],
        pa.array([[0, 0], [1, 1], [10, 10], [11, 11]], fixed),
        frame_index=[0, 1, 0, 1],
    )
    second = table([1, 2], pa.array([[12, 12], [20, 20]], fixed), frame_index=[2, 0])
    root = make_dataset(
        tmp_path / "ds", {"chunk-000/file-000.parquet": first, "chunk-000/file-001.parquet": second}
    )
    warnings: list[str] = []
    episodes = read(root, warnings=warnings)
    assert warnings == []  # a continuation starting at frame_index 2 is not a gap
    assert [(e.index, e.length) for e in episodes] == [(0, 2), (1, 3), (2, 1)]
    np.testing.assert_array_equal(episodes[1].action[:, 0], [10, 11, 12])
    assert "file-000.parquet + " in episodes[1].source and "file-001.parquet" in episodes[1].source
    # One worker per file sees the parts separately.
    parts = list(
        iter_lerobot_file_episodes(
            root / "data/chunk-000/file-001.parquet",
            dataset="synthetic",
            action_key="action",
            state_key=None,
        )
    )
    assert [(p.index, p.length) for p in parts] == [(1, 1), (2, 1)]


def test_episode_in_non_adjacent_files_is_an_error(tmp_path):
    fixed = pa.list_(pa.float32(), 2)
    files = {
        "chunk-000/file-000.parquet": table([0], pa.array([[0, 0]], fixed)),
        "chunk-000/file-001.parquet": table([1], pa.array([[1, 1]], fixed)),
        "chunk-000/file-002.parquet": table([0], pa.array([[2, 2]], fixed)),
    }
    root = make_dataset(tmp_path / "ds", files)
    with pytest.raises(InputDataError, match=r"file-002\.parquet: episode_index 0 also appears"):
        read(root)


def test_width_change_between_episodes_is_an_error(tmp_path):
    files = {
        "chunk-000/episode_000000.parquet": table(
            [0], pa.array([[0.0, 0.0]], pa.list_(pa.float32()))
        ),
        "chunk-000/episode_000001.parquet": table(
            [1], pa.array([[0.0, 0.0, 0.0]], pa.list_(pa.float32()))
        ),
    }
    root = make_dataset(tmp_path / "ds", files, version="v2.1")
    with pytest.raises(
        InputDataError, match=r"episode_000001\.parquet: column 'action' has 3 values"
    ):
        read(root)


def test_ragged_list_rows_are_an_error(tmp_path):
    action = pa.array([[0.0, 1.0], [2.0, 3.0], [4.0]], pa.list_(pa.float32()))
    root = make_dataset(tmp_path / "ds", {"chunk-000/file-000.parquet": table([0, 0, 0], action)})
    with pytest.raises(
        InputDataError, match=r"file-000\.parquet: column 'action' is ragged: .* row 2 has 1"
    ):
        read(root)


def test_null_rows_are_an_error(tmp_path):
    action = pa.array([[0.0, 1.0], None], pa.list_(pa.float32()))
    root = make_dataset(tmp_path / "ds", {"chunk-000/file-000.parquet": table([0, 0], action)})
    with pytest.raises(InputDataError, match=r"file-000\.parquet: column 'action' has 1 null rows"):
        read(root)


def test_garbage_parquet_is_an_error_naming_the_file(tmp_path):
    root = make_dataset(tmp_path / "ds", {})
    bad = root / "data" / "chunk-000" / "file-000.parquet"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"PAR1 this is not parquet at all" * 10)
    with pytest.raises(InputDataError, match=r"file-000\.parquet: not a readable parquet file"):
        read(root)


@needs_real
def test_truncated_parquet_is_an_error_naming_the_file(tmp_path):
    source = REAL / "unitree_g1_pick_bottle_lerobot_v21"
    root = tmp_path / "unitree"
    shutil.copytree(source / "meta", root / "meta")
    target = root / "data" / "chunk-000" / "episode_000000.parquet"
    target.parent.mkdir(parents=True)
    data = (source / "data" / "chunk-000" / "episode_000000.parquet").read_bytes()
    target.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputDataError, match=r"episode_000000\.parquet: "):
        list(
            iter_lerobot_episodes(
                root, dataset="u", action_key="action", state_key="observation.state"
            )
        )


def test_max_frames_reads_no_file_past_the_limit(tmp_path):
    fixed = pa.list_(pa.float32(), 2)
    root = make_dataset(
        tmp_path / "ds",
        {"chunk-000/file-000.parquet": table([0, 0, 0], pa.array([[0, 0]] * 3, fixed))},
    )
    (root / "data" / "chunk-000" / "file-001.parquet").write_bytes(b"garbage")
    assert [e.length for e in read(root, max_frames=2)] == [2]
    with pytest.raises(InputDataError, match="file-001.parquet"):
        read(root)


def test_missing_info_json_is_an_error(tmp_path):
    root = tmp_path / "ds"
    (root / "data").mkdir(parents=True)
    with pytest.raises(InputDataError, match=r"meta/info\.json: missing"):
        read(root)


def test_missing_directory_is_an_error(tmp_path):
    with pytest.raises(InputDataError, match="directory not found"):
        read(tmp_path / "nope")


def test_unknown_codebase_version_is_an_error(tmp_path):
    root = make_dataset(tmp_path / "ds", {}, version="v9.0")
    with pytest.raises(InputDataError, match="codebase_version 'v9.0' is not supported"):
        read(root)


def test_v1_codebase_version_in_info_json_is_rejected(tmp_path):
    root = make_dataset(tmp_path / "ds", {}, version="v1.6")
    with pytest.raises(InputDataError, match=r"v1\.x"):
        read(root)


def test_dataset_without_rows_is_an_error(tmp_path):
    empty = table([], pa.array([], pa.list_(pa.float32(), 2)))
    root = make_dataset(tmp_path / "ds", {"chunk-000/file-000.parquet": empty})
    with pytest.raises(InputDataError, match="hold no episodes"):
        read(root)


def test_declared_shape_mismatch_is_a_warning(tmp_path):
    action = pa.array([[0.0, 1.0, 2.0]], pa.list_(pa.float32()))
    root = make_dataset(tmp_path / "ds", {"chunk-000/file-000.parquet": table([0], action)})
    warnings: list[str] = []
    assert read(root, warnings=warnings)[0].action.shape == (1, 3)
    assert any("declares shape [2]" in w for w in warnings)


def test_scalar_and_integer_columns_become_float64_columns(tmp_path):
    root = make_dataset(
        tmp_path / "ds", {"chunk-000/file-000.parquet": table([0, 0], pa.array([3, 4], pa.int32()))}
    )
    episode = read(root)[0]
    assert episode.action.dtype == np.float64
    np.testing.assert_array_equal(episode.action, [[3.0], [4.0]])
