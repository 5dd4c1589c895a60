"""Dataset readers (RLDS/TFDS and LeRobot) behind one interface, and dataset fingerprints.

A dataset is read as a list of independent ``ReadTask`` s (one per RLDS shard read, one per
LeRobot data file) so that Beam can spread them over workers and the values cache can hold one
entry per task; ``read_task`` yields a task's episodes (an RLDS task's with the dataset's
standardization transforms applied; a LeRobot task's are the episode parts its file holds, which
``cached_episodes`` assembles into the dataset's episodes).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from stepnorm.config import Config, DatasetConfig
from stepnorm.errors import InputDataError
from stepnorm.paths import is_remote
from stepnorm.sources.base import Episode
from stepnorm.sources.transforms import apply_transforms, build_transforms, transform_identity

__all__ = ["Episode", "ReadTask", "cached_episodes", "check_widths", "dataset_fingerprint", "dataset_values_key",
           "declared_widths", "needed_tasks", "read_tasks", "read_task", "task_values_keys"]


@dataclass(frozen=True)
class ReadTask:
    """One independent unit of reading: an RLDS shard read, or one LeRobot data file."""

    dataset: str
    locator: str  # shard filename / LeRobot data file
    skip: int = 0
    take: int = -1
    first_index: int = 0
    shard_length: int = -1  # RLDS: records the shard holds per dataset_info.json


def read_tasks(ds: DatasetConfig) -> list[ReadTask]:
    """The tasks that together read every episode of the dataset's split, in order."""
    if ds.format == "rlds":
        from stepnorm.sources.rlds import shard_reads

        return [ReadTask(ds.name, r.filename, r.skip, r.take, r.first_index, r.shard_length)
                for r in shard_reads(ds.path, ds.split)]
    # One task per LeRobot data file (path order, which is episode order): a v3.0 episode may
    # continue in the next file, and max_frames cuts across files in order; both are handled when
    # the files' parts are assembled (cached_episodes), so each file is read (and cached) alone.
    from stepnorm.sources.lerobot import lerobot_data_files

    return [ReadTask(ds.name, str(file)) for file in lerobot_data_files(ds.path)]


def read_task(ds: DatasetConfig, task: ReadTask, *, image_keys=(), keep_serialized: bool = False,
              transform: bool = True) -> Iterator[Episode]:
    """Episodes of one task, the dataset's transforms applied (unless ``transform=False``).

    A LeRobot task (one data file) yields the episode parts its file holds, untransformed (an
    episode may continue in the next file; ``cached_episodes`` assembles them, and transforms
    apply to whole episodes): it must be read with ``transform=False``.
    """
    if ds.format == "rlds":
        from stepnorm.sources.rlds import ShardRead, iter_shard_episodes

        transforms = build_transforms(ds.transforms, f"datasets.{ds.name}.transforms") if transform else []
        episodes = iter_shard_episodes(ds.path, ShardRead(task.locator, task.skip, task.take, task.first_index,
                                                               task.shard_length),
                                       dataset=ds.name, action_key=ds.action_key, state_key=ds.state_key,
                                       image_keys=image_keys, keep_serialized=keep_serialized)
        for episode in episodes:
            yield apply_transforms(episode, transforms) if transforms else episode
        return
    if transform:
        raise ValueError(f"{task.locator}: a LeRobot read task yields parts of episodes; read it with "
                         f"transform=False and assemble the parts (cached_episodes) before transforms")
    from stepnorm.sources.lerobot import iter_lerobot_file_episodes

    yield from iter_lerobot_file_episodes(task.locator, dataset=ds.name, action_key=ds.action_key,
                                          state_key=ds.state_key)


def needed_tasks(ds: DatasetConfig, tasks: list[tuple[ReadTask, str]],
                 cached_steps: Callable[[str], int | None] | None = None) -> list[tuple[ReadTask, str]]:
    """The (task, key) pairs of ``task_values_keys(ds)`` whose values the dataset's statistics use.

    All of them, except for a LeRobot dataset with ``max_frames``: its data files up to the one in
    which the frames (in path order) reach ``max_frames``; no file past it is read, as in
    ``iter_lerobot_episodes``. A file's rows come from ``cached_steps(key)`` (the steps its cache
    entry holds, None when it is not cached), else from its parquet footer.
    """
    if ds.format != "lerobot" or ds.max_frames is None:
        return list(tasks)
    from stepnorm.sources.lerobot import data_file_rows

    out, frames = [], 0
    for task, key in tasks:
        out.append((task, key))
        rows = cached_steps(key) if cached_steps is not None else None
        frames += data_file_rows(task.locator) if rows is None else rows
        if frames >= ds.max_frames:
            break
    return out


def cached_episodes(ds: DatasetConfig, tasks: list[tuple[ReadTask, str]], cache) -> Iterator[Episode]:
    """The dataset's episodes as read (before transforms) from the values-cache entries of
    ``tasks`` ((task, key) pairs in task order, ``cache`` a ``stepnorm.values.ValuesCache``).

    RLDS: the entries' episodes in order. LeRobot: each entry holds one data file's episode
    parts; they are assembled as ``iter_lerobot_episodes`` assembles the files it reads (an
    episode continued in the next file merged, ``max_frames`` applied), with every check it makes
    across files and against the episode metadata, on every run, entries reused or not. Opens no
    data file.
    """
    if ds.format != "lerobot":
        yield from cache.episodes([key for _, key in tasks], ds.name)
        return
    from stepnorm.sources.lerobot import assemble_lerobot_episodes

    # Lazy: an entry is read only when the assembly reaches it.
    parts = ((Path(task.locator), cache.episodes([key], ds.name)) for task, key in tasks)
    yield from assemble_lerobot_episodes(ds.path, parts, action_key=ds.action_key, state_key=ds.state_key,
                                         max_frames=ds.max_frames)


def declared_widths(ds: DatasetConfig, cache=None) -> tuple[int, int | None]:
    """(action dims, state dims or None) as the dataset's metadata declares them, after the
    dataset's transforms: what the statistics will have, known before any data is read.

    LeRobot takes the widths from its first data file; with ``cache`` (a values cache) and that
    file's entry in it, from the entry (the same numbers: every row of a file has one width), so a
    run whose values all come from the cache opens no data file."""
    import numpy as np

    if ds.format == "rlds":
        from stepnorm.sources.rlds import declared_widths as rlds_widths, key_list

        action = sum(rlds_widths(ds.path, key_list(ds.action_key)))
        state = sum(rlds_widths(ds.path, key_list(ds.state_key))) if ds.state_key is not None else None
    else:
        known = _cached_lerobot_widths(ds, cache) if cache is not None else None
        if known is not None:
            action, state = known
        else:
            from stepnorm.sources.lerobot import declared_width

            action = declared_width(ds.path, ds.action_key)
            state = declared_width(ds.path, ds.state_key) if ds.state_key is not None else None
    probe = Episode(ds.name, f"{ds.path} (declared shapes)", 0, np.zeros((2, action)),
                    None if state is None else np.zeros((2, state)))
    transforms = build_transforms(ds.transforms, f"datasets.{ds.name}.transforms")
    with np.errstate(all="ignore"):  # zeros stand in for the values; only the widths matter
        probe = apply_transforms(probe, transforms) if transforms else probe
    return probe.action.shape[1], None if probe.state is None else probe.state.shape[1]


def _cached_lerobot_widths(ds: DatasetConfig, cache) -> tuple[int, int | None] | None:
    """(action, state) widths from the cached values of the dataset's first data file (the file
    ``lerobot.declared_width`` reads); None when that entry is not cached or holds no rows."""
    _, key = task_values_keys(ds)[0]
    if not cache.has(key):
        return None
    for episode in cache.episodes([key], ds.name):
        return episode.action.shape[1], None if episode.state is None else episode.state.shape[1]
    return None


def check_widths(cfg: Config, names=None, cache=None) -> None:
    """Every mask and dim index of the config against the widths the datasets (all, or ``names``)
    declare, before any pipeline starts (a mask of the wrong length would otherwise surface only
    after reading, or only in `stepnorm normalize`).

    The checks run in the order reading would meet them, with the same messages: a delta_mask
    of another width (naming the dataset's first file), action/state dims that differ across
    datasets, then masks (ConfigError) and dim indices. ``cache``: see ``declared_widths``.
    """
    from stepnorm.errors import ConfigError

    where = cfg.path or "<config>"
    chosen = [ds for ds in cfg.datasets if names is None or ds.name in names]
    widths = {}
    for ds in chosen:
        action, state = widths[ds.name] = declared_widths(ds, cache)
        if cfg.delta_mask is not None and len(cfg.delta_mask) != action:
            raise InputDataError(f"{ds.name} ({_first_file(ds)})", f"delta_mask has {len(cfg.delta_mask)} entries "
                                                                  f"but the action has {action} dims")
    if len(set(widths.values())) > 1:
        listing = ", ".join(f"{n}: action {a}, state {s}" for n, (a, s) in widths.items())
        raise InputDataError(where, f"action/state dims differ across datasets ({listing}); standardize them "
                                    f"with transforms (select_dims)")
    for ds in chosen:
        action, state = widths[ds.name]
        for key, width in (("action", action), ("state", state)):
            spec = cfg.normalization.get(key)
            if spec is None or spec.mask is None:
                continue
            if width is None:
                raise ConfigError(where, f"normalization.{key}.mask needs datasets.{ds.name}.state_key (the "
                                         f"dataset has no state)")
            if len(spec.mask) != width:
                raise ConfigError(where, f"normalization.{key}.mask has {len(spec.mask)} entries but dataset "
                                         f"{ds.name!r} has {width} {key} dims ({ds.path})")
        for label, dims, width, what in (("gripper_dims", ds.gripper_dims, action, "action"),
                                         ("position_dims", ds.position_dims, state, "state")):
            bad = [d for d in dims if width is None or d >= width]
            if bad:
                raise ConfigError(where, f"datasets.{ds.name}.{label} {bad} out of range for {width or 0} {what} "
                                         f"dims")


def _first_file(ds: DatasetConfig) -> str:
    if ds.format == "rlds":
        from stepnorm.sources.rlds import shard_reads

        reads = shard_reads(ds.path, ds.split)
        return reads[0].filename if reads else ds.path
    from stepnorm.sources.lerobot import lerobot_data_files

    return str(lerobot_data_files(ds.path)[0])


def _file_identity(path: str) -> dict:
    """What identifies a file's content without reading it (the one identity the cache keys use).

    Local: name, size, mtime, ctime and inode (a rewrite in place changes ctime, which a user
    cannot set back; a copy has another inode). gs://: the object's generation (a new one at every
    write, set by the server) and CRC32C (``_gcs_identity``). Other remote filesystems: name, size
    and mtime, which is all ``tf.io.gfile`` reports.
    """
    if path.startswith("gs://"):
        return _gcs_identity(path)
    if is_remote(path):
        import tensorflow as tf

        stat = tf.io.gfile.stat(path)
        return {"file": path, "size": int(stat.length), "mtime_ns": int(stat.mtime_nsec)}
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise InputDataError(path, f"cannot stat ({exc.strerror})") from None
    return {"file": os.path.basename(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "ctime_ns": stat.st_ctime_ns, "inode": stat.st_ino}


_GCS_CLIENT = None


def _gcs_client():
    """One Cloud Storage client per process: the default credentials, else anonymous (public buckets
    such as Open X-Embodiment's need none). ``STORAGE_EMULATOR_HOST`` points it at an emulator."""
    global _GCS_CLIENT
    if _GCS_CLIENT is None:
        from google.auth.exceptions import DefaultCredentialsError
        from google.cloud import storage

        try:
            _GCS_CLIENT = storage.Client()
        except DefaultCredentialsError:
            _GCS_CLIENT = storage.Client.create_anonymous_client()
    return _GCS_CLIENT


def _gcs_identity(path: str) -> dict:
    """A gs:// object's identity from its metadata (one small request, no data read)."""
    try:
        from google.api_core import exceptions as gexc
    except ImportError:
        raise InputDataError(path, "identifying gs:// files by generation and CRC32C needs google-cloud-storage; "
                                   "install it with: pip install 'stepnorm[gcs]'") from None
    bucket, _, name = path[len("gs://"):].partition("/")
    try:
        blob = _gcs_client().bucket(bucket).get_blob(name)
    except gexc.GoogleAPIError as exc:
        raise InputDataError(path, f"cannot read the object's metadata ({type(exc).__name__}: {exc})") from None
    if blob is None:
        raise InputDataError(path, "no such object")
    if blob.generation is None or not blob.crc32c:
        raise InputDataError(path, "the object's metadata has no generation or CRC32C")
    return {"file": path, "size": int(blob.size), "generation": int(blob.generation), "crc32c": blob.crc32c}


def _metadata_hash(ds: DatasetConfig) -> str:
    """The dataset's metadata files, hashed: RLDS ``dataset_info.json`` and ``features.json``;
    LeRobot ``meta/info.json`` and the episode metadata (``lerobot.episode_metadata_files``)."""
    if ds.format == "rlds":
        names = ["dataset_info.json", "features.json"]
    else:
        from stepnorm.sources.lerobot import episode_metadata_files

        names = ["meta/info.json"] + [f.relative_to(ds.path).as_posix() for f in episode_metadata_files(ds.path)]
    digest = hashlib.sha256()
    for name in names:
        path = os.path.join(ds.path, name)
        if is_remote(path):
            import tensorflow as tf

            data = tf.io.gfile.GFile(path, "rb").read() if tf.io.gfile.exists(path) else b""
        else:
            data = Path(path).read_bytes() if os.path.exists(path) else b""
        digest.update(name.encode() + b"\0" + data)
    return digest.hexdigest()


# 3: one entry per LeRobot data file (its episode parts), keyed without max_frames (applied when
# the parts are assembled) and with only the part of info.json a file's reading consults.
VALUES_FORMAT = 5  # 4: values.FORMAT_VERSION 2 (fields stacked); 5: frames picked by the counter-based
# samples.step_priorities


def task_values_keys(ds: DatasetConfig) -> list[tuple[ReadTask, str]]:
    """Each read task of the dataset's split with the cache key of its numeric values.

    A key covers what the task reads: the identity of its data file (``_file_identity``; an RLDS
    task reads one shard, a LeRobot task one data file), the part of the file it takes, the
    metadata the reading consults (RLDS: ``dataset_info.json`` and ``features.json``, hashed;
    LeRobot: the codebase version and the declared features of the keys read,
    ``lerobot.read_identity``), the keys read, the dataset name (the validators' image frames are
    picked by it) and the values format. Not the transforms nor the statistics config, so changing
    those reads no data; a new or changed file changes only its own task's key. A LeRobot entry
    holds its whole file (``max_frames`` is applied when the files' parts are assembled,
    ``cached_episodes``), so ``max_frames`` is not in the key. Reads no data.
    """
    common = {"version": VALUES_FORMAT, "name": ds.name, "format": ds.format, "action_key": ds.action_key,
              "state_key": ds.state_key}
    if ds.format == "rlds":
        common.update(image_keys=list(ds.image_keys), max_frames=ds.max_frames, metadata=_metadata_hash(ds))
    else:
        from stepnorm.sources.lerobot import read_identity

        common.update(image_keys=[], metadata=read_identity(ds.path, ds.action_key, ds.state_key))
    out = []
    for task in read_tasks(ds):
        identity = dict(common, read=[task.skip, task.take, task.first_index], files=[_file_identity(task.locator)])
        out.append((task, hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()))
    return out


def dataset_values_key(ds: DatasetConfig) -> str:
    """One key for all of a dataset's values: its tasks' keys in order (an RLDS key covers the
    metadata files), and for LeRobot ``max_frames`` and every metadata file (hashed: info.json
    and the episode metadata, which the checks made when its files' parts are assembled read)."""
    key = {"tasks": [k for _, k in task_values_keys(ds)]}
    if ds.format == "lerobot":
        key.update(max_frames=ds.max_frames, metadata=_metadata_hash(ds))
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def dataset_fingerprint(cfg: Config, ds: DatasetConfig) -> str:
    """A dataset's fingerprint in the artifact: its values key, its transforms (name, arguments and
    the hash of their source) and the statistics config."""
    key = {"values": dataset_values_key(ds), "statistics": cfg.statistics_config(),
           "transforms": transform_identity(build_transforms(ds.transforms, f"datasets.{ds.name}.transforms"))}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
