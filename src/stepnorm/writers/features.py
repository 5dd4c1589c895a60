"""The written dataset's TFDS features and metadata (no Beam).

The added step fields (``steps/action_chunk``, ``steps/action_chunk_valid``,
``steps/observation/state_normalized``), merged into the source's features; and the TFDS
metadata files (``dataset_info.json``, ``features.json``) of a written dataset directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from stepnorm.errors import InputDataError

ACTION_CHUNK = "action_chunk"
ACTION_CHUNK_VALID = "action_chunk_valid"
STATE_NORMALIZED = "state_normalized"  # inside steps/observation
SHARD_PATTERN = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"

__all__ = ["ACTION_CHUNK", "ACTION_CHUNK_VALID", "SHARD_PATTERN", "STATE_NORMALIZED", "added_features",
           "extend_features", "feature_from_json", "shard_name", "write_metadata"]


def added_features(horizon: int, action_dim: int, state_dim: int | None):
    """The FeaturesDict of just the added fields (``state_dim`` None: no normalized state)."""
    import tensorflow_datasets as tfds

    steps = {
        ACTION_CHUNK: tfds.features.Tensor(shape=(horizon, action_dim), dtype=np.float32,
                                           doc="action chunk a[t:t+H] (padded by repeating the last action), normalized"),
        ACTION_CHUNK_VALID: tfds.features.Tensor(shape=(horizon,), dtype=np.bool_,
                                                 doc="False where the chunk position is padding (t+k >= T)"),
    }
    if state_dim is not None:
        steps["observation"] = tfds.features.FeaturesDict({
            STATE_NORMALIZED: tfds.features.Tensor(shape=(state_dim,), dtype=np.float32, doc="normalized state"),
        })
    return tfds.features.FeaturesDict({"steps": tfds.features.Dataset(steps)})


def extend_features(source, added, where: str):
    """``source`` FeaturesDict with ``added``'s step fields merged in (the output's features).

    Existing feature objects are reused as they are, so their serialized layout (and docs) stay
    those of the source. Raises InputDataError if the source already has a field being added.
    """
    import tensorflow_datasets as tfds

    def merge(base, extra, path):
        out = dict(base.items()) if base is not None else {}
        for key, feature in extra.items():
            here = f"{path}/{key}"
            if isinstance(feature, tfds.features.FeaturesDict):
                current = out.get(key)
                if current is not None and not isinstance(current, tfds.features.FeaturesDict):
                    raise InputDataError(where, f"feature {here} is not a dict; cannot add {here}/...")
                out[key] = tfds.features.FeaturesDict(merge(current, feature, here),
                                                      doc=current.doc if current is not None else None)
            elif key in out:
                raise InputDataError(where, f"already has feature {here} (is it already normalized?)")
            else:
                out[key] = feature
        return out

    if "steps" not in source or not isinstance(source["steps"], tfds.features.Dataset):
        raise InputDataError(where, "has no 'steps' dataset feature (not an RLDS dataset)")
    steps = source["steps"]
    new_steps = tfds.features.Dataset(merge(steps.feature, added["steps"].feature, "steps"), doc=steps.doc)
    return tfds.features.FeaturesDict({**dict(source.items()), "steps": new_steps}, doc=source.doc)


def feature_from_json(doc: dict):
    """A FeatureConnector from its ``to_json()`` form."""
    import tensorflow_datasets as tfds

    return tfds.features.FeatureConnector.from_json(doc)


def shard_name(dataset: str, split: str, index: int, num_shards: int) -> str:
    """``{dataset}-{split}.tfrecord-{i:05d}-of-{n:05d}``, TFDS's name for shard ``index`` (SHARD_PATTERN)."""
    return f"{dataset}-{split}.tfrecord-{index:05d}-of-{num_shards:05d}"


def write_metadata(data_dir: Path, dataset: str, features_json: dict, splits: dict[str, tuple[Sequence[int], int]],
                   description: str, metadata: dict, homepage: str | None = None, citation: str | None = None) -> None:
    """Write the TFDS metadata of a dataset directory whose shards are written (``shard_name``).

    ``splits``: output split -> (episodes per shard, bytes); ``metadata`` goes into the dataset
    info's metadata (stepnorm records its provenance there).
    """
    import tensorflow_datasets as tfds

    split_infos = []
    for split, (shard_lengths, num_bytes) in splits.items():
        template = tfds.core.ShardedFileTemplate(data_dir=data_dir, template=SHARD_PATTERN, dataset_name=dataset,
                                                 split=split, filetype_suffix="tfrecord")
        split_infos.append(tfds.core.SplitInfo(name=split, shard_lengths=list(shard_lengths),
                                               filename_template=template, num_bytes=num_bytes))
    template = tfds.core.ShardedFileTemplate(data_dir=data_dir, template=SHARD_PATTERN, dataset_name=dataset,
                                             filetype_suffix="tfrecord")
    kwargs = {"homepage": homepage, "citation": citation} if homepage is not None or citation is not None else {}
    tfds.folder_dataset.write_metadata(data_dir=data_dir, features=feature_from_json(features_json),
                                       split_infos=split_infos, filename_template=template, check_data=False,
                                       description=description, metadata=tfds.core.MetadataDict(**metadata),
                                       disable_shuffling=True, **kwargs)
