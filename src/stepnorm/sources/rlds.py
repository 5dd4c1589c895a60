"""RLDS / TFDS dataset directories: episodes as numpy, images left encoded.

TFDS does the format work: ``tfds.builder_from_directory`` reads ``dataset_info.json`` and
``features.json``, split strings (``train``, ``val``, ``train[:90%]``) resolve to per-shard file
instructions, and TFDS's example proto and numpy conversion decode only the fields we ask for
(float64 features stored as float32 come back as float64; encoded frames are not copied out unless
used). Beam's TFRecord code reads the framing and checks CRCs.
Works on any filesystem TFDS supports (local paths, ``gs://``).
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from stepnorm.errors import ConfigError, InputDataError
from stepnorm.sources.base import Episode



@dataclass(frozen=True)
class ShardRead:
    """Part of one shard that a split selects: records ``[skip, skip + take)``.

    ``first_index`` is the ordinal (within the split) of the first episode read.
    """

    filename: str
    skip: int
    take: int
    first_index: int


def _tfds():
    import tensorflow_datasets as tfds

    return tfds


@functools.lru_cache(maxsize=64)
def rlds_builder(path: str):
    """The TFDS builder of a dataset directory; InputDataError if it is not one."""
    tfds = _tfds()
    try:
        return tfds.builder_from_directory(str(path))
    except Exception as exc:  # TFDS raises many kinds (FileNotFoundError, ValueError, JSON errors)
        raise InputDataError(str(path), f"not a readable TFDS dataset directory ({type(exc).__name__}: "
                                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def step_keys(path: str) -> list[str]:
    """Flattened step feature names (``action``, ``observation/state`` ...)."""
    tfds = _tfds()
    flat = tfds.core.utils.flatten_nest_dict(rlds_builder(str(path)).info.features.get_serialized_info())
    return sorted(k[len("steps/"):] for k in flat if k.startswith("steps/"))


def shard_reads(path: str, split: str) -> list[ShardRead]:
    """What a split string selects, shard by shard, in order."""
    builder = rlds_builder(str(path))
    try:
        instructions = builder.info.splits[split].file_instructions
    except Exception as exc:  # unknown split, bad slice syntax
        raise ConfigError(str(path), f"split {split!r} cannot be read: {str(exc).splitlines()[0]} "
                                     f"(splits: {', '.join(builder.info.splits)})") from None
    out, index = [], 0
    for ins in instructions:
        out.append(ShardRead(str(ins.filename), int(ins.skip), int(ins.take), index))
        index += int(ins.take)
    return out


def rlds_data_files(path: str, split: str) -> list[str]:
    """The shard files a split reads (for fingerprints)."""
    return sorted({r.filename for r in shard_reads(path, split)})


def _parser(path: str, keys: Sequence[str]):
    tfds = _tfds()
    from tensorflow_datasets.core import example_parser

    flat = tfds.core.utils.flatten_nest_dict(rlds_builder(str(path)).info.features.get_serialized_info())
    available = sorted(k[len("steps/"):] for k in flat if k.startswith("steps/"))
    specs = {}
    for key in keys:
        full = f"steps/{key}"
        if full not in flat:
            raise InputDataError(str(path), f"no step feature {key!r} (available: {', '.join(available)})")
        specs[full] = flat[full]
    return example_parser.ExampleParserNp(specs)


def iter_shard_records(read: ShardRead) -> Iterator[bytes]:
    """Serialized episodes of one shard read; InputDataError for a corrupt or truncated shard.

    Beam's TFRecord framing (length and data CRC32C checks, google-crc32c). Local shards are read
    without TensorFlow (its start-up dominated small runs); remote ones (``gs://`` ...) through
    TensorFlow's filesystems, as TFDS itself reads them.
    """
    from apache_beam.io.tfrecordio import _TFRecordUtil

    count = 0
    try:
        with _open_binary(read.filename) as handle:
            for position in range(read.skip + read.take):
                record = _TFRecordUtil.read_record(handle)
                if record is None:
                    break
                if position >= read.skip:
                    count += 1
                    yield record
    except (ValueError, struct.error) as exc:
        raise InputDataError(read.filename, f"corrupt or truncated TFRecord shard at record {read.skip + count} "
                                            f"({str(exc).split(':')[0]})") from None
    except OSError as exc:
        raise InputDataError(read.filename, f"cannot read shard ({exc})") from None
    if count != read.take:
        raise InputDataError(read.filename, f"truncated shard: holds {read.skip + count} records, "
                                            f"dataset_info.json says at least {read.skip + read.take}")


def _open_binary(path: str):
    if "://" in path:
        import tensorflow as tf

        return tf.io.gfile.GFile(path, "rb")
    return open(path, "rb")


def iter_shard_episodes(path: str, read: ShardRead, *, dataset: str, action_key: str,
                        state_key: str | None, image_keys: Sequence[str] = (),
                        keep_serialized: bool = False) -> Iterator[Episode]:
    """Episodes of one shard read: ``action [T, D]``, ``state [T, Ds]``, images per step.

    Encoded images (JPEG/PNG bytes) come as a lazy sequence over the parsed example: a reader that
    keeps one frame per episode copies one frame, not T. Images stored as raw tensors come as
    arrays. With ``keep_serialized`` the raw example bytes travel in ``extra["serialized"]`` (for
    writers that must keep every original field).
    """
    from tensorflow_datasets.core import example_parser
    from tensorflow_datasets.proto import tf_example_pb2

    keys = [action_key] + ([state_key] if state_key else []) + list(image_keys)
    parser = _parser(path, keys)
    specs = parser.example_specs
    encoded = {k for k in image_keys if specs[f"steps/{k}"].np_dtype == np.object_}
    # TFDS's numpy conversion for everything but encoded images (it would copy every frame).
    numeric = {k: v for k, v in specs.items() if k[len("steps/"):] not in encoded}
    for offset, record in enumerate(iter_shard_records(read)):
        where = f"{read.filename} (record {read.skip + offset})"
        try:
            example = tf_example_pb2.Example.FromString(record)
            parsed = example_parser._features_to_numpy(example.features, numeric)
        except Exception as exc:  # protobuf DecodeError, reshape errors from a malformed episode
            raise InputDataError(where, f"cannot parse episode ({type(exc).__name__}: {exc})") from None
        flat = {k[len("steps/"):]: v for k, v in parsed.items() if k.startswith("steps/")}
        for key in encoded:
            feature = example.features.feature.get(f"steps/{key}")
            if feature is not None:
                flat[key] = feature.bytes_list.value
        action = flat.get(action_key)
        state = flat.get(state_key) if state_key else None
        if action is None:
            if any(v is not None and len(v) for v in flat.values()):
                raise InputDataError(where, f"episode has steps but no {action_key!r}")
            # An empty episode may omit its step keys (TFDS writes none for T = 0).
            action = np.zeros((0,) + _step_shape(parser, action_key))
            state = np.zeros((0,) + _step_shape(parser, state_key)) if state_key else None
        elif state_key and state is None:
            raise InputDataError(where, f"episode has {action_key!r} but no {state_key!r}")
        action = np.asarray(action)
        if action.ndim == 1:
            action = action[:, None]
        if state is not None:
            state = np.asarray(state)
            if state.ndim == 1:
                state = state[:, None]
        extra = {"serialized": record} if keep_serialized else {}
        images = {k: flat[k] if k in encoded else list(flat[k]) for k in image_keys if flat.get(k) is not None}
        yield Episode(dataset, where, read.first_index + offset, action, state, images, extra)


def iter_rlds_episodes(path: str, *, dataset: str, split: str, action_key: str, state_key: str | None,
                       image_keys: Sequence[str] = ()) -> Iterator[Episode]:
    """All episodes of a split, in order."""
    for read in shard_reads(path, split):
        yield from iter_shard_episodes(path, read, dataset=dataset, action_key=action_key,
                                       state_key=state_key, image_keys=image_keys)


def _step_shape(parser, key: str) -> tuple[int, ...]:
    shape = tuple(parser.example_specs[f"steps/{key}"].shape[1:])
    return shape if shape else (1,)
