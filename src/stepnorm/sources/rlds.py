"""RLDS / TFDS dataset directories: episodes as numpy, images left encoded.

TFDS does the format work: ``tfds.builder_from_directory`` reads ``dataset_info.json`` and
``features.json``, split strings (``train``, ``val``, ``train[:90%]``) resolve to per-shard file
instructions, and TFDS's example proto and numpy conversion decode only the fields we ask for
(float64 features stored as float32 come back as float64; encoded frames are not copied out unless
used). Beam's TFRecord code reads the framing and checks CRCs.
Works on any filesystem TFDS supports (local paths, ``gs://``).

What TFDS resolves from the metadata alone (a split's shard reads, the declared widths) is a
function of ``dataset_info.json``, ``features.json``, the arguments and the TFDS version; inside
``plans_in(DIR)`` (``stepnorm stats`` with a local values cache: ``ROOT/plans``) it is remembered
there under a hash of all of them, so a run whose values all come from the cache does not import
TFDS (0.4 s of a rerun). A plan is a few hundred bytes per shard, checked by its own sha256 when
read (a damaged one is recomputed), and removed with the entries by ``stepnorm cache prune``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import json
import os
import struct
from pathlib import Path
from dataclasses import dataclass
from typing import Iterator, Sequence, Union

import numpy as np

from stepnorm.errors import ConfigError, InputDataError
from stepnorm.paths import is_remote
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
    shard_length: int = -1  # records dataset_info.json declares for the whole shard (-1: unknown)


def _tfds():
    import tensorflow_datasets as tfds

    return tfds


PLAN_FORMAT = 1
_PLANS: contextvars.ContextVar[Path | None] = contextvars.ContextVar("stepnorm_rlds_plans", default=None)


@contextlib.contextmanager
def plans_in(directory: str | os.PathLike | None):
    """Within: metadata-only results (``shard_reads``, ``declared_widths``) remembered under
    ``directory`` (None: not remembered)."""
    token = _PLANS.set(None if directory is None else Path(directory))
    try:
        yield
    finally:
        _PLANS.reset(token)


def _tfds_version() -> str:
    from importlib import metadata

    return metadata.version("tensorflow-datasets")


def _remembered(path: str, what: list, compute):
    """``compute()`` (JSON-able), or its value remembered for these metadata files, arguments and
    TFDS version. Errors are not remembered (TFDS raises them again)."""
    directory = _PLANS.get()
    if directory is None or is_remote(path):
        return compute()
    digest = hashlib.sha256(json.dumps({"format": PLAN_FORMAT, "tfds": _tfds_version(), "path": os.path.abspath(path),
                                        "what": what}, sort_keys=True).encode())
    for name in ("dataset_info.json", "features.json"):
        try:
            data = Path(path, name).read_bytes()
        except OSError:
            return compute()  # TFDS says what is wrong with the directory
        digest.update(b"\0" + name.encode() + b"\0" + data)
    key = digest.hexdigest()
    file = directory / key[:2] / f"{key}.json"
    try:
        stored = json.loads(file.read_bytes())
        body = json.dumps(stored["value"], sort_keys=True)
        if stored.get("key") == key and stored.get("sha256") == hashlib.sha256(body.encode()).hexdigest():
            os.utime(file)  # last use, for ``cache prune``
            return stored["value"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent or damaged: computed again and rewritten
    value = compute()
    body = json.dumps(value, sort_keys=True)
    from stepnorm.outputs import write_atomic

    try:
        write_atomic(file, json.dumps({"key": key, "path": os.path.abspath(path), "what": what, "value": value,
                                       "sha256": hashlib.sha256(body.encode()).hexdigest()}))
    except OSError:
        pass  # a read-only cache: the plan is only a shortcut
    return value


@functools.lru_cache(maxsize=64)
def rlds_builder(path: str):
    """The TFDS builder of a dataset directory; InputDataError if it is not one."""
    tfds = _tfds()
    try:
        return tfds.builder_from_directory(str(path))
    except Exception as exc:  # TFDS raises many kinds (FileNotFoundError, ValueError, JSON errors)
        raise InputDataError(str(path), f"not a readable TFDS dataset directory ({type(exc).__name__}: "
                                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def shard_reads(path: str, split: str) -> list[ShardRead]:
    """What a split string selects, shard by shard, in order."""
    rows = _remembered(str(path), ["shard_reads", split], lambda: [
        [r.filename, r.skip, r.take, r.first_index, r.shard_length] for r in _shard_reads(path, split)])
    return [ShardRead(str(f), int(skip), int(take), int(first), int(length)) for f, skip, take, first, length in rows]


def _shard_reads(path: str, split: str) -> list[ShardRead]:
    builder = rlds_builder(str(path))
    try:
        instructions = builder.info.splits[split].file_instructions
    except Exception as exc:  # unknown split, bad slice syntax
        raise ConfigError(str(path), f"split {split!r} cannot be read: {str(exc).splitlines()[0]} "
                                     f"(splits: {', '.join(builder.info.splits)})") from None
    out, index = [], 0
    for ins in instructions:
        out.append(ShardRead(str(ins.filename), int(ins.skip), int(ins.take), index, int(ins.examples_in_shard)))
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

    TFRecord framing checked with Beam's masked CRC32C (google-crc32c) on the length and on the
    data (``_read_record``). Local shards are read without TensorFlow (its start-up dominated
    small runs); remote ones (``gs://`` ...) through TensorFlow's filesystems, as TFDS itself
    reads them.
    """
    count = 0
    try:
        with _open_binary(read.filename) as handle:
            for position in range(read.skip + read.take):
                record = _read_record(handle)
                if record is None:
                    break
                if position >= read.skip:
                    count += 1
                    yield record
            if count == read.take and read.skip + read.take == read.shard_length:
                _check_shard_end(handle, read)
    except (ValueError, struct.error) as exc:
        raise InputDataError(read.filename, f"corrupt or truncated TFRecord shard at record {read.skip + count} "
                                            f"({str(exc).split(':')[0]})") from None
    except OSError as exc:
        raise InputDataError(read.filename, f"cannot read shard ({exc})") from None
    if count != read.take:
        raise InputDataError(read.filename, f"truncated shard: holds {read.skip + count} records, "
                                            f"dataset_info.json says at least {read.skip + read.take}")


def _read_record(handle) -> bytes | None:
    """One TFRecord's payload (None at the end of the file), its length and data CRCs checked as
    Beam's ``_TFRecordUtil.read_record`` checks them, with one copy of the payload: Beam reads the
    payload and its CRC together and then copies the payload out of them (``struct.unpack``),
    which cost 2.9 s of 22.8 s reading a 20 GB set."""
    from apache_beam.io.tfrecordio import _TFRecordUtil

    header = handle.read(12)
    if not header:
        return None
    if len(header) != 12:
        raise ValueError(f"Not a valid TFRecord. Fewer than 12 bytes: {header.hex()}")
    length, length_mask = struct.unpack("<QI", header)
    if _TFRecordUtil._masked_crc32c(header[:8]) != length_mask:
        raise ValueError(f"Not a valid TFRecord. Mismatch of length mask: {header.hex()}")
    data = handle.read(length)
    footer = handle.read(4) if len(data) == length else b""
    if len(footer) != 4:
        raise ValueError(f"Not a valid TFRecord. Fewer than {length + 4} bytes")
    if _TFRecordUtil._masked_crc32c(data) != struct.unpack("<I", footer)[0]:
        raise ValueError("Not a valid TFRecord. Mismatch of data mask")
    return data


def _check_shard_end(handle, read: ShardRead) -> None:
    """After the last declared record a shard must end: a further record means dataset_info.json's
    ``shardLengths`` undercounts the shard (its episodes would be silently skipped); other bytes
    mean the file was appended to or damaged."""
    position = handle.tell()
    if not handle.read(1):
        return
    handle.seek(position)
    try:
        extra = _read_record(handle)
    except (ValueError, struct.error):
        extra = None
    if extra is not None:
        raise InputDataError(read.filename, f"holds more records than the {read.shard_length} that "
                                            f"dataset_info.json's shardLengths declares; its episodes would be "
                                            f"skipped (fix dataset_info.json or re-create the dataset)")
    handle.seek(0, os.SEEK_END)
    raise InputDataError(read.filename, f"{handle.tell() - position} bytes after its last record "
                                        f"(record {read.shard_length}): the file was appended to or is corrupt")


def _open_binary(path: str):
    if is_remote(path):
        import tensorflow as tf

        return tf.io.gfile.GFile(path, "rb")
    return open(path, "rb")


StepKeys = Union[str, Sequence[str]]


def key_list(keys: StepKeys | None) -> list[str]:
    """A step key or a list of step keys (concatenated along the last axis) as a list."""
    if keys is None:
        return []
    return [keys] if isinstance(keys, str) else list(keys)


def iter_shard_episodes(path: str, read: ShardRead, *, dataset: str, action_key: StepKeys,
                        state_key: StepKeys | None, image_keys: Sequence[str] = (),
                        keep_serialized: bool = False) -> Iterator[Episode]:
    """Episodes of one shard read: ``action [T, D]``, ``state [T, Ds]``, images per step.

    ``action_key`` / ``state_key`` name one step feature or a list of them, concatenated in order
    (scalars count as one dim, booleans become 0/1): OXE datasets whose action is a dict such as
    ``action/world_vector``, ``action/rotation_delta``, ``action/gripper_closedness_action``.

    Encoded images (JPEG/PNG bytes) come as a lazy sequence over the parsed example: a reader that
    keeps one frame per episode copies one frame, not T. Images stored as raw tensors come as
    arrays. With ``keep_serialized`` the raw example bytes travel in ``extra["serialized"]`` (for
    writers that must keep every original field).
    """
    from tensorflow_datasets.core import example_parser
    from tensorflow_datasets.proto import tf_example_pb2

    action_keys, state_keys = key_list(action_key), key_list(state_key)
    keys = list(dict.fromkeys(action_keys + state_keys + list(image_keys)))
    parser = _parser(path, keys)
    specs = parser.example_specs
    widths = {k: _step_width(parser, k) for k in action_keys + state_keys}
    encoded = {k for k in image_keys if specs[f"steps/{k}"].np_dtype == np.object_}
    # TFDS's numpy conversion for everything but encoded images (it would copy every frame). It is
    # ExampleParserNp's own helper, used directly to keep the parsed proto; TFDS is pinned (4.9.10).
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
        action = _columns(flat, action_keys, where, widths)
        state = _columns(flat, state_keys, where, widths) if state_keys else None
        if action is None:
            if any(v is not None and len(v) for v in flat.values()):
                raise InputDataError(where, f"episode has steps but no {_names(action_keys)}")
            # An empty episode may omit its step keys (TFDS writes none for T = 0).
            action = np.zeros((0, sum(widths[k] for k in action_keys)))
            state = np.zeros((0, sum(widths[k] for k in state_keys))) if state_keys else None
        elif state_keys and state is None:
            raise InputDataError(where, f"episode has {_names(action_keys)} but no {_names(state_keys)}")
        elif state is not None and len(state) != len(action):
            raise InputDataError(where, f"{_names(state_keys)} has {len(state)} steps but {_names(action_keys)} "
                                        f"has {len(action)}")
        extra = {"serialized": record} if keep_serialized else {}
        images = {k: flat[k] if k in encoded else list(flat[k]) for k in image_keys if flat.get(k) is not None}
        yield Episode(dataset, where, read.first_index + offset, action, state, images, extra)


def _names(keys: list[str]) -> str:
    return repr(keys[0]) if len(keys) == 1 else "+".join(repr(k) for k in keys)


def _columns(flat: dict, keys: list[str], where: str, widths: dict[str, int]) -> np.ndarray | None:
    """``[T, D]`` from one or more step features (None if the episode has none of them)."""
    parts = [flat.get(k) for k in keys]
    if all(p is None for p in parts):
        return None
    missing = [k for k, p in zip(keys, parts) if p is None]
    if missing:
        raise InputDataError(where, f"episode has {_names([k for k in keys if k not in missing])} but no "
                                    f"{_names(missing)}")
    arrays = []
    for key, part in zip(keys, parts):
        part = np.asarray(part)
        if part.dtype == np.bool_:
            part = part.astype(np.float32)
        arrays.append(part.reshape(len(part), widths[key]) if part.ndim != 2 else part)
    if len(arrays) == 1:
        return arrays[0]
    lengths = {len(a) for a in arrays}
    if len(lengths) > 1:
        raise InputDataError(where, f"{_names(keys)} have different step counts ({sorted(lengths)})")
    return np.concatenate(arrays, axis=1)


def declared_widths(path: str, keys: Sequence[str]) -> list[int]:
    """Per step key, the dims one step holds as ``features.json`` declares them (no data read)."""
    return [int(w) for w in _remembered(str(path), ["declared_widths", list(keys)], lambda: _declared_widths(path, keys))]


def _declared_widths(path: str, keys: Sequence[str]) -> list[int]:
    tfds = _tfds()
    flat = tfds.core.utils.flatten_nest_dict(rlds_builder(str(path)).info.features.get_serialized_info())
    out = []
    for key in keys:
        spec = flat.get(f"steps/{key}")
        if spec is None:
            available = sorted(k[len("steps/"):] for k in flat if k.startswith("steps/"))
            raise InputDataError(str(path), f"no step feature {key!r} (available: {', '.join(available)})")
        shape = spec.shape[1:]
        if any(d is None for d in shape):
            raise InputDataError(str(path), f"step feature {key!r} has no fixed shape ({list(shape)})")
        out.append(int(np.prod(shape, dtype=np.int64)))
    return out


def _step_width(parser, key: str) -> int:
    """Dims one step of ``key`` contributes (1 for a scalar)."""
    return int(np.prod(parser.example_specs[f"steps/{key}"].shape[1:], dtype=np.int64))
