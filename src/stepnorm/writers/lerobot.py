"""LeRobot -> RLDS: the layout, features and examples of a LeRobot dataset written as RLDS (no Beam).

``steps/action``, ``steps/observation/state``, every other numeric parquet column
(``observation.velocity`` -> ``steps/observation/velocity``), ``is_first``/``is_last``/``is_terminal``
and ``episode_metadata/episode_index``; videos are not copied.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from stepnorm.config import DatasetConfig
from stepnorm.errors import InputDataError
from stepnorm.sources.base import Episode
from stepnorm.sources.transforms import apply_transforms, build_transforms
from stepnorm.writers.features import ACTION_CHUNK, ACTION_CHUNK_VALID, STATE_NORMALIZED, extend_features

__all__ = ["deep_merge", "lerobot_episodes", "lerobot_example", "lerobot_features", "lerobot_layout"]


def _lerobot_tensor(values: np.ndarray):
    """The Tensor feature of a numeric ``[T, ...]`` column, or None for columns RLDS cannot hold."""
    import tensorflow_datasets as tfds

    if values.dtype == object or values.dtype.kind not in "biuf" or values.dtype == np.uint64:
        return None
    return tfds.features.Tensor(shape=values.shape[1:], dtype=values.dtype)


def lerobot_layout(ds: DatasetConfig, first: Episode) -> dict[str, tuple[str, ...]]:
    """LeRobot column -> RLDS step path (``observation.velocity`` -> ``("observation", "velocity")``).

    The action and state columns go to ``action`` and ``observation/state`` whatever their names;
    non-numeric columns are left out. Raises InputDataError when two columns land on one path.
    """
    layout = {ds.action_key: ("action",)}
    if ds.state_key is not None:
        layout[ds.state_key] = ("observation", "state")
    for name, values in first.extra.items():
        if isinstance(values, np.ndarray) and _lerobot_tensor(values) is not None:
            layout[name] = tuple(name.split("."))
    reserved = {("is_first",), ("is_last",), ("is_terminal",), (ACTION_CHUNK,), (ACTION_CHUNK_VALID,),
                ("observation", STATE_NORMALIZED)}
    paths = list(layout.values()) + sorted(reserved)
    for i, path in enumerate(paths):
        for other in paths[i + 1:]:
            shorter = min(len(path), len(other))
            if path[:shorter] == other[:shorter]:
                raise InputDataError(ds.path, f"columns map to clashing RLDS step fields {'/'.join(path)} and "
                                              f"{'/'.join(other)}")
    return layout


def _nest(flat: dict[tuple[str, ...], object]) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def _lerobot_columns(raw: Episode, ds: DatasetConfig) -> dict[str, np.ndarray]:
    columns = dict(raw.extra)
    columns[ds.action_key] = raw.action
    if ds.state_key is not None:
        columns[ds.state_key] = raw.state
    return columns


def lerobot_features(ds: DatasetConfig, first: Episode, added):
    """The full RLDS FeaturesDict of a LeRobot dataset written out (from its first episode)."""
    import tensorflow_datasets as tfds

    layout = lerobot_layout(ds, first)
    columns = _lerobot_columns(first, ds)
    flat = {path: _lerobot_tensor(np.asarray(columns[name])) for name, path in layout.items()}
    flat.update({("is_first",): tfds.features.Scalar(np.bool_), ("is_last",): tfds.features.Scalar(np.bool_),
                 ("is_terminal",): tfds.features.Scalar(np.bool_, doc="True on the last step (demonstrations)")})

    def to_features(tree):
        return {k: tfds.features.FeaturesDict(to_features(v)) if isinstance(v, dict) else v for k, v in tree.items()}

    base = tfds.features.FeaturesDict({
        "steps": tfds.features.Dataset(to_features(_nest(flat))),
        "episode_metadata": tfds.features.FeaturesDict({"episode_index": tfds.features.Scalar(np.int64)}),
    })
    return extend_features(base, added, ds.path)


def lerobot_example(ds: DatasetConfig, layout: dict[str, tuple[str, ...]], raw: Episode) -> dict:
    """A raw LeRobot episode as a nested RLDS example (without the added fields)."""
    t_len = raw.length
    columns = _lerobot_columns(raw, ds)
    flat = {path: np.asarray(columns[name]) for name, path in layout.items()}
    last = np.arange(t_len) == t_len - 1
    flat.update({("is_first",): np.arange(t_len) == 0, ("is_last",): last, ("is_terminal",): last})
    return {"steps": _nest(flat), "episode_metadata": {"episode_index": np.int64(raw.index)}}


def deep_merge(a: dict, b: dict) -> dict:
    """``a`` with ``b`` merged in, recursively for nested dicts."""
    out = dict(a)
    for key, value in b.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and key in out else value
    return out


def lerobot_episodes(ds: DatasetConfig) -> Iterator[tuple[Episode, Episode]]:
    """(raw episode with every column, episode with the dataset's transforms applied)."""
    from stepnorm.sources.lerobot import iter_lerobot_episodes

    transforms = build_transforms(ds.transforms, f"datasets.{ds.name}.transforms")
    for raw in iter_lerobot_episodes(ds.path, dataset=ds.name, action_key=ds.action_key, state_key=ds.state_key,
                                     max_frames=ds.max_frames, columns_only=False):
        yield raw, apply_transforms(raw, transforms) if transforms else raw
