"""LeRobot v2.0 / v2.1 / v3.0 datasets, read straight from parquet with pyarrow.

A LeRobot dataset directory holds ``meta/info.json`` and parquet files under ``data/``:
one file per episode in v2.x (``data/chunk-000/episode_000000.parquet``) and, in v3.0, files
that may hold many episodes (``data/chunk-000/file-000.parquet``). Episode boundaries come from
the ``episode_index`` column, never from the metadata, because real datasets carry metadata
copied from elsewhere (e.g. ``total_frames`` of the full dataset in a sub-sample). Videos are
never opened: statistics only need the action and state columns.

``iter_lerobot_episodes`` reads a whole dataset; it is ``iter_lerobot_file_episodes`` (one data
file's episode parts) per file, assembled by ``assemble_lerobot_episodes`` (episodes continued in
the next file merged, ``max_frames``, the checks across files and against the episode metadata).
The values cache holds one entry per data file and assembles them the same way.

The old v1.x format (Hugging Face ``datasets`` arrow files plus safetensors) is rejected.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stepnorm.errors import ConfigError, InputDataError
from stepnorm.sources.base import Episode

SUPPORTED_VERSIONS = ("v2.0", "v2.1", "v3.0")
EPISODE_COLUMN = "episode_index"
# Columns that order rows within an episode, best first. GR00T-flavoured v2.0 data has no
# frame_index, so fall back to the global row index, then to time.
ORDER_COLUMNS = ("frame_index", "index", "timestamp")

_V1_HINT = "LeRobot v1.x datasets are not supported; convert with lerobot's v2 converter"


def lerobot_info(path: str | Path) -> dict[str, Any]:
    """Parse ``<path>/meta/info.json`` and return it with every feature's ``names`` flattened.

    ``names`` appears as a flat list (``["x", "y"]``), a nested list (``[["x", "y"]]``, seen in
    Unitree data) or a dict of lists (``{"motors": [...]}``, seen in ALOHA data); all become one
    flat list of strings, in order. Raises ``InputDataError`` when the directory is missing, is
    an old v1.x dataset, or ``info.json`` is absent, unreadable or of an unsupported version.
    """
    root = Path(path)
    if not root.is_dir():
        raise InputDataError(str(root), "LeRobot dataset directory not found")
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        if (root / "meta_data" / "info.json").is_file() or any(root.glob("train/*.arrow")):
            raise InputDataError(str(root), _V1_HINT)
        raise InputDataError(
            str(info_path), "missing; a LeRobot v2.x/v3.0 dataset needs meta/info.json"
        )
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputDataError(str(info_path), f"not readable JSON ({exc})") from exc
    if not isinstance(info, dict) or not isinstance(info.get("features"), dict):
        raise InputDataError(str(info_path), "has no 'features' object")
    version = info.get("codebase_version")
    if isinstance(version, str) and version.startswith("v1"):
        raise InputDataError(str(info_path), f"codebase_version {version}: {_V1_HINT}")
    if version not in SUPPORTED_VERSIONS:
        raise InputDataError(
            str(info_path),
            f"codebase_version {version!r} is not supported; "
            f"expected one of {', '.join(SUPPORTED_VERSIONS)}",
        )
    for feature in info["features"].values():
        if isinstance(feature, dict) and feature.get("names") is not None:
            feature["names"] = _flatten_names(feature["names"])
    return info


def lerobot_data_files(path: str | Path) -> list[Path]:
    """Return the dataset's parquet data files under ``data/``, sorted by relative path.

    Chunk and file numbers are zero-padded, so path order is episode order. Validates the
    dataset first (see ``lerobot_info``); raises ``InputDataError`` when there are no data files.
    """
    root = Path(path)
    lerobot_info(root)
    files = sorted((root / "data").rglob("*.parquet"), key=lambda f: f.relative_to(root).as_posix())
    if not files:
        raise InputDataError(str(root / "data"), "no parquet data files found")
    return files


def iter_lerobot_episodes(
    path: str | Path,
    *,
    dataset: str,
    action_key: str,
    state_key: str | None,
    max_frames: int | None = None,
    columns_only: bool = True,
    warnings: list[str] | None = None,
) -> Iterator[Episode]:
    """Yield every episode of a LeRobot dataset, in ascending ``episode_index`` order.

    Files are read in path order and episodes within a file by ``episode_index``; an episode
    whose rows continue in the next file is merged into one ``Episode``. ``Episode.index`` is
    the dataset's ``episode_index``; ``action`` is ``[T, D]`` and ``state`` ``[T, Ds]`` (None
    when ``state_key`` is None), float32/float64 as stored (integers become float64).

    Args:
        path: dataset root (the directory holding ``meta/`` and ``data/``).
        dataset: dataset name from the config, copied into each episode.
        action_key, state_key: parquet column names (e.g. ``action`` / ``observation.state``,
            or ``actions`` / ``state`` in non-standard datasets).
        max_frames: stop after this many frames in total. The episode that crosses the limit
            is cut so exactly ``max_frames`` frames are yielded, and carries
            ``extra["truncated"] = True``; no file past that point is read.
        columns_only: read only the columns needed (the default). When False, every other
            column is also read and kept in ``Episode.extra`` as a ``[T, ...]`` numpy array.
        warnings: when given, messages about metadata that disagrees with the data (frame
            counts, feature shapes, gaps or repeats in ``frame_index``) are appended to it.
            The data wins.

    Raises:
        InputDataError: unreadable or corrupt files, missing columns, ragged or null rows,
            action/state widths that change between episodes, or a dataset with no episodes.
        ConfigError: ``max_frames`` is not a positive integer.
    """
    _check_max_frames(max_frames)
    root = Path(path)
    info = lerobot_info(root)
    files = lerobot_data_files(root)
    # Lazy: a file is opened only when the assembly reaches it (none past max_frames).
    parts = (
        (
            file,
            iter_lerobot_file_episodes(
                file,
                dataset=dataset,
                action_key=action_key,
                state_key=state_key,
                columns_only=columns_only,
                warnings=warnings,
            ),
        )
        for file in files
    )
    yield from assemble_lerobot_episodes(
        root,
        parts,
        action_key=action_key,
        state_key=state_key,
        max_frames=max_frames,
        warnings=warnings,
        info=info,
    )


def assemble_lerobot_episodes(
    path: str | Path,
    parts: Iterable[tuple[str | Path, Iterable[Episode]]],
    *,
    action_key: str,
    state_key: str | None,
    max_frames: int | None = None,
    warnings: list[str] | None = None,
    info: dict[str, Any] | None = None,
) -> Iterator[Episode]:
    """The dataset's episodes from its data files' episode parts: what ``iter_lerobot_episodes``
    yields, and every check it makes across files.

    ``parts`` holds, per data file in path order, the file and the episode parts it holds as
    ``iter_lerobot_file_episodes`` yields them (read now, or from the values cache: one entry
    per data file). An episode whose rows continue in the next file is merged into one
    ``Episode`` (its source names both files); an episode in non-adjacent files, a width that
    changes between episodes, a dataset with no episodes and episodes that disagree with the
    episode metadata (``meta/episodes.jsonl`` / ``meta/episodes/``) are errors; ``max_frames``
    cuts as described in ``iter_lerobot_episodes``, and no part past the cut is taken (so no
    later file is read). Reads only ``meta/`` itself.
    """
    _check_max_frames(max_frames)
    root = Path(path)
    info = lerobot_info(root) if info is None else info
    widths = _FeatureWidths(info, root, action_key, state_key, warnings)
    remaining = max_frames
    seen: set[int] = set()
    lengths: dict[int, int] = {}  # episode_index -> frames, as the data holds them
    pending: Episode | None = None
    pending_files: list[Path] = []
    n_episodes = n_frames = 0

    for file, episodes in parts:
        file = Path(file)
        for episode in episodes:
            widths.check(episode, file)
            if pending is not None and episode.index == pending.index:
                pending_files.append(file)
                pending = _concat(pending, episode, _source(pending_files, pending.index))
            else:
                if pending is not None:
                    yield pending
                    lengths[pending.index] = pending.length
                    n_episodes += 1
                    n_frames += pending.length
                    if remaining is not None:
                        remaining -= pending.length
                if episode.index in seen:
                    raise InputDataError(
                        str(file),
                        f"episode_index {episode.index} also appears in an earlier, "
                        "non-adjacent data file",
                    )
                seen.add(episode.index)
                pending, pending_files = episode, [file]
            if remaining is not None and pending.length >= remaining:
                # The episode is cut here anyway, so a continuation in a later file cannot matter.
                yield _truncate(pending, remaining)
                return
    if pending is None:
        raise InputDataError(str(root / "data"), "the parquet data files hold no episodes")
    yield pending
    lengths[pending.index] = pending.length
    _check_declared_episodes(root, lengths)
    _check_totals(info, root, n_episodes + 1, n_frames + pending.length, warnings)


def _check_max_frames(max_frames: Any) -> None:
    if max_frames is not None and (
        isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames <= 0
    ):
        raise ConfigError(None, f"max_frames must be a positive integer, got {max_frames!r}")


def data_file_rows(file: str | Path) -> int:
    """Rows of one data file, from its parquet footer (no data read)."""
    return _open_parquet(Path(file)).metadata.num_rows


def read_identity(path: str | Path, action_key: str, state_key: str | None) -> dict[str, Any]:
    """What of ``meta/info.json`` reading a data file consults: the codebase version (which
    versions are read) and the declared features of the keys read (their shapes). Part of each
    data file's values-cache key; the rest of info.json (totals, splits, other features) does
    not change what a file's reading gives, so a new data file (which changes the totals) leaves
    the other files' entries valid."""
    info = lerobot_info(path)
    keys = [action_key] + ([state_key] if state_key is not None else [])
    return {
        "codebase_version": info.get("codebase_version"),
        "features": {key: info["features"].get(key) for key in keys},
    }


def episode_metadata_files(path: str | Path) -> list[Path]:
    """The episode metadata the declared-episodes check reads (v2.x ``meta/episodes.jsonl``,
    v3.0 ``meta/episodes/**/*.parquet``), those present, in the order ``declared_episodes``
    reads them."""
    meta = Path(path) / "meta"
    jsonl = meta / "episodes.jsonl"
    return [jsonl] if jsonl.is_file() else sorted((meta / "episodes").rglob("*.parquet"))


def iter_lerobot_file_episodes(
    file: str | Path,
    *,
    dataset: str,
    action_key: str,
    state_key: str | None,
    columns_only: bool = True,
    warnings: list[str] | None = None,
) -> Iterator[Episode]:
    """Yield the episodes held in one parquet data file, in ascending ``episode_index`` order.

    Meant for running one worker per file. Rows are grouped by ``episode_index`` and ordered
    within an episode by ``frame_index`` (else ``index``, else ``timestamp``, else file order).
    An episode split across files comes out here as one part per file, each with the same
    ``Episode.index``; ``iter_lerobot_episodes`` (``assemble_lerobot_episodes``) merges such
    parts. Arguments and errors are
    as for ``iter_lerobot_episodes``; an empty file yields nothing.
    """
    file = Path(file)
    pf = _open_parquet(file)
    available = pf.schema_arrow.names
    keys = [action_key] + ([state_key] if state_key is not None else []) + [EPISODE_COLUMN]
    missing = [k for k in keys if k not in available]
    if missing:
        raise InputDataError(
            str(file),
            f"no column {', '.join(repr(k) for k in missing)}; "
            f"available columns: {', '.join(available)}",
        )
    order_column = next((c for c in ORDER_COLUMNS if c in available), None)
    if columns_only:
        columns = keys + ([order_column] if order_column is not None else [])
    else:
        columns = list(available)
    try:
        table = pf.read(columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise InputDataError(str(file), f"cannot read parquet data ({exc})") from exc
    if table.num_rows == 0:
        return

    episode_index = _scalar_column(table, EPISODE_COLUMN, file).astype(np.int64)
    order_key = _scalar_column(table, order_column, file) if order_column is not None else None
    arrays: dict[str, np.ndarray] = {action_key: _matrix_column(table, action_key, file)}
    if state_key is not None:
        arrays[state_key] = _matrix_column(table, state_key, file)
    if not columns_only:
        for name in table.column_names:
            if name not in arrays and name != EPISODE_COLUMN:
                arrays[name] = _any_column(table, name)

    if not _is_sorted(episode_index, order_key):
        # lexsort is stable, so rows that tie on every key keep their file order.
        sort_keys = (episode_index,) if order_key is None else (order_key, episode_index)
        order = np.lexsort(sort_keys)
        episode_index = episode_index[order]
        order_key = order_key[order] if order_key is not None else None
        arrays = {name: values[order] for name, values in arrays.items()}

    if order_column in ("frame_index", "index"):
        repeated = (np.diff(episode_index) == 0) & (np.diff(order_key) == 0)
        if repeated.any():
            row = int(np.flatnonzero(repeated)[0]) + 1
            raise InputDataError(
                str(file),
                f"{int(repeated.sum())} duplicated rows: episode_index {int(episode_index[row])} has "
                f"{order_column} {order_key[row]} more than once (rows written twice?)",
            )
    starts = np.concatenate(([0], np.flatnonzero(np.diff(episode_index)) + 1))
    stops = np.append(starts[1:], len(episode_index))
    if order_column == "frame_index" and warnings is not None:
        _check_frame_index(order_key, episode_index, file, warnings)

    for start, stop in zip(starts.tolist(), stops.tolist(), strict=True):
        index = int(episode_index[start])
        extra = (
            {}
            if columns_only
            else {
                name: values[start:stop]
                for name, values in arrays.items()
                if name not in (action_key, state_key)
            }
        )
        yield Episode(
            dataset=dataset,
            source=_source([file], index),
            index=index,
            action=arrays[action_key][start:stop],
            state=arrays[state_key][start:stop] if state_key is not None else None,
            extra=extra,
        )


def _flatten_names(names: Any) -> list[str]:
    if isinstance(names, dict):
        return [n for value in names.values() for n in _flatten_names(value)]
    if isinstance(names, (list, tuple)):
        return [n for value in names for n in _flatten_names(value)]
    return [str(names)]


def _source(files: list[Path], index: int) -> str:
    return f"{' + '.join(str(f) for f in files)} (episode_index {index})"


def _open_parquet(file: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(file)
    except (pa.ArrowException, OSError) as exc:
        raise InputDataError(str(file), f"not a readable parquet file ({exc})") from exc


def _chunked_to_array(column: pa.ChunkedArray) -> pa.Array:
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _scalar_column(table: pa.Table, name: str, file: Path) -> np.ndarray:
    """A numeric column of one value per row, as ``[N]`` numpy."""
    array = _chunked_to_array(table.column(name))
    if not (pa.types.is_integer(array.type) or pa.types.is_floating(array.type)):
        raise InputDataError(
            str(file), f"column {name!r} has type {array.type}; expected a number per row"
        )
    if array.null_count:
        raise InputDataError(str(file), f"column {name!r} has {array.null_count} null rows")
    return array.to_numpy(zero_copy_only=False)


def _matrix_column(table: pa.Table, name: str, file: Path) -> np.ndarray:
    """A numeric list (or scalar) column as ``[N, D]`` numpy, without a per-row Python loop."""
    array = _chunked_to_array(table.column(name))
    n = len(array)
    if array.null_count:
        raise InputDataError(str(file), f"column {name!r} has {array.null_count} null rows")
    kind = array.type
    if pa.types.is_fixed_size_list(kind):
        width = kind.list_size
        values = array.flatten()
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
        lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
        width = int(lengths[0])
        ragged = np.flatnonzero(lengths != width)
        if ragged.size:
            row = int(ragged[0])
            raise InputDataError(
                str(file),
                f"column {name!r} is ragged: row 0 has {width} values "
                f"but row {row} has {int(lengths[row])}",
            )
        values = array.flatten()
    else:
        width = 1
        values = array
    if not (
        pa.types.is_floating(values.type)
        or pa.types.is_integer(values.type)
        or pa.types.is_boolean(values.type)
    ):
        raise InputDataError(
            str(file),
            f"column {name!r} has type {kind}; expected a list of numbers or a number per row",
        )
    if width == 0:
        raise InputDataError(str(file), f"column {name!r} holds empty lists")
    if values.null_count:
        raise InputDataError(str(file), f"column {name!r} has {values.null_count} null values")
    matrix = values.to_numpy(zero_copy_only=False).reshape(n, width)
    # The numeric core accumulates float32/float64; keep those as stored, widen the rest.
    if matrix.dtype == np.float16:
        return matrix.astype(np.float32)
    if not np.issubdtype(matrix.dtype, np.floating):
        return matrix.astype(np.float64)
    return matrix


def _any_column(table: pa.Table, name: str) -> np.ndarray:
    """Any column as numpy ``[N, ...]``: numbers as numbers, fixed-size lists as ``[N, D]``,
    everything else (strings, variable lists, structs) as an object array."""
    array = _chunked_to_array(table.column(name))
    kind = array.type
    if (
        array.null_count == 0
        and pa.types.is_fixed_size_list(kind)
        and _is_plain_number(kind.value_type)
    ):
        return array.flatten().to_numpy(zero_copy_only=False).reshape(len(array), kind.list_size)
    if array.null_count == 0 and _is_plain_number(kind):
        return array.to_numpy(zero_copy_only=False)
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=object)


def _is_plain_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


def _is_sorted(episode_index: np.ndarray, order_key: np.ndarray | None) -> bool:
    """True when rows are already in (episode_index, order_key) order: no reordering copy needed."""
    step = np.diff(episode_index)
    if order_key is None:
        return bool(np.all(step >= 0))
    return bool(np.all((step > 0) | ((step == 0) & (np.diff(order_key) >= 0))))


def _check_frame_index(
    frame_index: np.ndarray, episode_index: np.ndarray, file: Path, warnings: list[str]
) -> None:
    """Warn when frame_index skips or repeats values within an episode (dropped or duplicated
    frames). Rows must already be sorted. A part that continues an episode from an earlier
    file may start past 0, so only steps between consecutive rows are checked."""
    same_episode = np.diff(episode_index) == 0
    bad = np.unique(episode_index[1:][same_episode & (np.diff(frame_index) != 1)])
    if bad.size:
        shown = ", ".join(str(int(e)) for e in bad[:5]) + (" ..." if bad.size > 5 else "")
        warnings.append(
            f"{file}: frame_index skips or repeats values in {bad.size} episode(s) ({shown}); "
            "rows are ordered by frame_index"
        )


def _concat(first: Episode, rest: Episode, source: str) -> Episode:
    """One episode from two parts of it stored in consecutive files."""
    return Episode(
        dataset=first.dataset,
        source=source,
        index=first.index,
        action=np.concatenate([first.action, rest.action]),
        state=None if first.state is None else np.concatenate([first.state, rest.state]),
        extra={
            name: np.concatenate([values, rest.extra[name]]) for name, values in first.extra.items()
        },
    )


def _truncate(episode: Episode, length: int) -> Episode:
    """The first ``length`` steps of an episode (itself when it is no longer)."""
    if episode.length <= length:
        return episode
    return Episode(
        dataset=episode.dataset,
        source=episode.source,
        index=episode.index,
        action=episode.action[:length],
        state=None if episode.state is None else episode.state[:length],
        extra={
            **{name: values[:length] for name, values in episode.extra.items()},
            "truncated": True,
        },
    )


class _FeatureWidths:
    """Checks that action/state widths stay the same across a dataset's episodes, and warns
    once when they disagree with the shapes declared in info.json."""

    def __init__(
        self,
        info: dict[str, Any],
        root: Path,
        action_key: str,
        state_key: str | None,
        warnings: list[str] | None,
    ):
        self.info = info
        self.root = root
        self.keys = {"action": action_key, "state": state_key}
        self.warnings = warnings
        self.seen: dict[str, int] = {}

    def check(self, episode: Episode, file: Path) -> None:
        for role, array in (("action", episode.action), ("state", episode.state)):
            if array is None:
                continue
            width = array.shape[1]
            key = self.keys[role]
            if role not in self.seen:
                self.seen[role] = width
                self._compare_with_info(key, width)
            elif width != self.seen[role]:
                raise InputDataError(
                    str(file),
                    f"column {key!r} has {width} values per row in episode_index {episode.index}, "
                    f"but earlier episodes have {self.seen[role]}",
                )

    def _compare_with_info(self, key: str, width: int) -> None:
        shape = self.info["features"].get(key, {}).get("shape")
        if self.warnings is None or not isinstance(shape, list) or not shape:
            return
        declared = int(np.prod(shape))
        if declared != width:
            self.warnings.append(
                f"{self.root / 'meta' / 'info.json'}: feature {key!r} declares shape {shape} "
                f"but the data has {width} values per row; using the data"
            )


def declared_width(path: str | Path, key: str) -> int:
    """Values per row of column ``key``, from the first data file: its parquet schema for a
    fixed-size list, else its first row (the data wins over ``info.json`` shapes, which real
    datasets get wrong). Reads no more than one row group of one column."""
    file = lerobot_data_files(Path(path))[0]
    pf = _open_parquet(file)
    schema = pf.schema_arrow
    if key not in schema.names:
        raise InputDataError(str(file), f"no column {key!r}; available columns: {', '.join(schema.names)}")
    kind = schema.field(key).type
    if pa.types.is_fixed_size_list(kind):
        return int(kind.list_size)
    if _is_plain_number(kind):
        return 1
    if pf.metadata.num_rows == 0 or pf.metadata.num_row_groups == 0:
        raise InputDataError(str(file), f"column {key!r} has no rows to tell its width")
    try:
        return _matrix_column(pf.read_row_group(0, columns=[key]).slice(0, 1), key, file).shape[1]
    except (pa.ArrowException, OSError) as exc:
        raise InputDataError(str(file), f"cannot read parquet data ({exc})") from exc


def declared_episodes(root: Path) -> dict[int, int] | None:
    """``episode_index -> length`` as the dataset's episode metadata declares them (v2.x
    ``meta/episodes.jsonl``, v3.0 ``meta/episodes/**/*.parquet``); None when it has none."""
    jsonl = root / "meta" / "episodes.jsonl"
    try:
        if jsonl.is_file():
            rows = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines() if line.strip()]
            return {int(r["episode_index"]): int(r["length"]) for r in rows}
        files = sorted((root / "meta" / "episodes").rglob("*.parquet"))
        if not files:
            return None
        out = {}
        for file in files:
            table = pq.read_table(file, columns=["episode_index", "length"])
            out.update(zip(table["episode_index"].to_pylist(), table["length"].to_pylist()))
        return {int(k): int(v) for k, v in out.items()}
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as exc:
        raise InputDataError(str(root / "meta"), f"episode metadata is unreadable ({exc})") from None


def metadata_warnings(path: str | Path) -> list[str]:
    """Where ``info.json``'s totals disagree with the data files (read from the parquet footers and
    the episode metadata, no data): real datasets carry totals copied from a larger original, so
    these are warnings the launcher prints; the data wins."""
    root = Path(path)
    info = lerobot_info(root)
    rows = sum(data_file_rows(file) for file in lerobot_data_files(root))
    declared = declared_episodes(root)
    out = []
    for field, actual, unit in (("total_frames", rows, "frames"),
                                ("total_episodes", None if declared is None else len(declared), "episodes")):
        said = info.get(field)
        if actual is not None and isinstance(said, int) and said != actual:
            out.append(f"{root / 'meta' / 'info.json'}: {field} says {said} but the data holds {actual} {unit}; "
                       f"using the data")
    return out


def _check_declared_episodes(root: Path, lengths: dict[int, int]) -> None:
    """Every episode the metadata declares is in the data files, with its declared length, and no
    other: a missing episode file, or rows appended, must not pass as a smaller or larger dataset."""
    declared = declared_episodes(root)
    if declared is None:
        return
    where = str(root / "meta" / ("episodes.jsonl" if (root / "meta" / "episodes.jsonl").is_file() else "episodes"))
    missing = sorted(set(declared) - set(lengths))
    extra = sorted(set(lengths) - set(declared))
    if missing or extra:
        detail = (f"missing from the data: episode_index {_listing(missing)}" if missing
                  else f"not declared: episode_index {_listing(extra)}")
        raise InputDataError(where, f"declares {len(declared)} episodes but the data files hold {len(lengths)} "
                                    f"({detail})")
    wrong = [(i, declared[i], lengths[i]) for i in sorted(lengths) if declared[i] != lengths[i]]
    if wrong:
        i, said, got = wrong[0]
        raise InputDataError(where, f"{len(wrong)} episode(s) have another length in the data: episode_index {i} "
                                    f"is declared with {said} frames, the data holds {got}")


def _listing(values: list[int]) -> str:
    return ", ".join(str(v) for v in values[:5]) + (" ..." if len(values) > 5 else "")


def _check_totals(
    info: dict[str, Any], root: Path, n_episodes: int, n_frames: int, warnings: list[str] | None
) -> None:
    """Warn when info.json's episode/frame totals disagree with what the data files hold."""
    if warnings is None:
        return
    for field, actual, unit in (
        ("total_episodes", n_episodes, "episodes"),
        ("total_frames", n_frames, "frames"),
    ):
        declared = info.get(field)
        if isinstance(declared, int) and declared != actual:
            warnings.append(
                f"{root / 'meta' / 'info.json'}: {field} says {declared} "
                f"but the data holds {actual} {unit}; using the data"
            )
