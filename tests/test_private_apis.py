"""Pins on the private APIs of other projects that stepnorm's hot paths use.

Each test calls the private API exactly as stepnorm does (the call site is named) and fails with
a message naming the call when its behaviour changes, so an upgrade of Beam, TFDS or Python that
breaks one shows up here, not as wrong statistics or a corrupt shard:

- ``apache_beam.io.tfrecordio._TFRecordUtil._masked_crc32c`` (sources/rlds._read_record, the shard
  reader) and ``.write_record`` (pipelines/normalize, the shard writer; bench/bench_normalize);
- ``tensorflow_datasets.core.example_parser._features_to_numpy`` (sources/rlds.iter_shard_episodes);
- ``atexit._run_exitfuncs`` (cli.entry).
"""

import contextlib
import io
import struct
import subprocess
import sys

import numpy as np
import pytest


@contextlib.contextmanager
def pinned(call: str, used_in: str):
    """Turn any failure inside into one message naming the private call and where stepnorm uses it."""
    try:
        yield
    except Exception as exc:  # assertion failures and API errors alike
        pytest.fail(f"private API changed: {call} (used by {used_in}) no longer behaves as stepnorm relies on: "
                    f"{type(exc).__name__}: {exc}", pytrace=False)


# -- Beam's TFRecord framing ------------------------------------------------------------------------
def _masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC32C, written out from the format's definition."""
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _framed(record: bytes) -> bytes:
    length = struct.pack("<Q", len(record))
    return length + struct.pack("<I", _masked_crc(length)) + record + struct.pack("<I", _masked_crc(record))


RECORDS = [b"", b"x", bytes(range(256)) * 40, b"\0" * 7]


def test_tfrecordutil_write_record(tmp_path):
    import tensorflow as tf
    from apache_beam.io.filesystems import CompressionTypes, FileSystems

    path = str(tmp_path / "shard.tfrecord")
    with pinned("apache_beam.io.tfrecordio._TFRecordUtil.write_record(handle, record)",
                "pipelines/normalize.py shard writer"):
        from apache_beam.io.tfrecordio import _TFRecordUtil

        # as the writer opens its shards
        with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            for record in RECORDS:
                _TFRecordUtil.write_record(handle, record)
        data = open(path, "rb").read()
        assert data == b"".join(_framed(r) for r in RECORDS), "framing differs from the TFRecord format"
        # the writer's byte count (dataset_info.json num_bytes) assumes 16 bytes of framing per record
        assert len(data) == sum(len(r) + 16 for r in RECORDS)
        # and TensorFlow's own reader accepts the shard
        assert [r.numpy() for r in tf.data.TFRecordDataset(path)] == RECORDS


def test_tfrecordutil_masked_crc32c_and_the_shard_reader(tmp_path):
    """stepnorm's record reader (``rlds._read_record``) checks the framing with Beam's masked CRC:
    it reads what TensorFlow wrote, returns None at the end, and rejects every damaged form the
    way Beam's own ``read_record`` does (ValueError, which the reader reports as a corrupt shard)."""
    import tensorflow as tf

    from stepnorm.sources.rlds import _read_record

    path = str(tmp_path / "tf.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:  # an independent writer
        for record in RECORDS:
            writer.write(record)
    good = open(path, "rb").read()
    call = "apache_beam.io.tfrecordio._TFRecordUtil._masked_crc32c(bytes)"
    with pinned(call, "sources/rlds.py _read_record"):
        from apache_beam.io.tfrecordio import _TFRecordUtil

        length = struct.pack("<Q", len(RECORDS[0]))
        assert struct.pack("<I", _TFRecordUtil._masked_crc32c(length)) == good[8:12]
        assert struct.pack("<I", _TFRecordUtil._masked_crc32c(RECORDS[0])) == good[12 + len(RECORDS[0]):][:4]
    with open(path, "rb") as handle:  # as the reader opens local shards
        got = [_read_record(handle) for _ in RECORDS]
        assert got == RECORDS
        assert _read_record(handle) is None, "end of file must read as None"
    flipped = bytearray(good)
    flipped[len(_framed(RECORDS[0])) + 12] ^= 1  # one bit of the second record's data
    crc_flipped = bytearray(good)
    crc_flipped[len(_framed(RECORDS[0])) - 1] ^= 1  # one bit of the first record's data CRC
    for broken in (good[:-3], good[:5], bytes(flipped), bytes(crc_flipped), good[:12] + b"\xff" + good[13:],
                   good[:8] + b"\x00" + good[9:]):
        for reader in (_read_record, _TFRecordUtil.read_record):
            handle = io.BytesIO(broken)
            with pytest.raises((ValueError, struct.error)):
                while reader(handle) is not None:
                    pass


# -- TFDS's example -> numpy conversion -------------------------------------------------------------
def _rlds_features():
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict({"steps": tfds.features.Dataset({
        "action": tfds.features.Tensor(shape=(3,), dtype=np.float64),
        "observation": {"state": tfds.features.Tensor(shape=(2,), dtype=np.float32),
                        "image": tfds.features.Image(shape=(4, 4, 3), encoding_format="png")},
        "is_first": np.bool_,
        "reward": np.float32,
    })})


def _episode(t: int, rng) -> dict:
    return {"steps": {"action": rng.normal(size=(t, 3)), "observation": {
        "state": rng.normal(size=(t, 2)).astype(np.float32),
        "image": rng.integers(0, 255, size=(t, 4, 4, 3), dtype=np.uint8)},
        "is_first": np.arange(t) == 0, "reward": rng.normal(size=t).astype(np.float32)}}


@pytest.mark.parametrize("t", [0, 1, 5])
def test_features_to_numpy(t):
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import example_parser
    from tensorflow_datasets.proto import tf_example_pb2

    features = _rlds_features()
    serialized = features.serialize_example(_episode(t, np.random.default_rng(t)))
    flat_specs = tfds.core.utils.flatten_nest_dict(features.get_serialized_info())
    # the public parser over all fields is the reference
    reference = tfds.core.utils.flatten_nest_dict(
        example_parser.ExampleParserNp(features.get_serialized_info()).parse_example(serialized))
    # stepnorm asks only for the numeric fields; the encoded image stays in the proto
    numeric = {k: v for k, v in flat_specs.items() if k != "steps/observation/image"}
    with pinned("tensorflow_datasets.core.example_parser._features_to_numpy(example.features, flat_specs)",
                "sources/rlds.py iter_shard_episodes"):
        example = tf_example_pb2.Example.FromString(serialized)
        parsed = example_parser._features_to_numpy(example.features, numeric)
        assert "steps/observation/image" not in parsed, "fields outside the specs must be skipped"
        expected = {k: v for k, v in reference.items() if k in numeric}
        assert set(parsed) == set(expected) == set(numeric), f"keys {sorted(parsed)} != {sorted(expected)}"
        for key, value in parsed.items():
            assert isinstance(value, np.ndarray), f"{key}: {type(value).__name__}, not an array"
            assert value.dtype == expected[key].dtype and value.shape == expected[key].shape, key
            np.testing.assert_array_equal(value, expected[key], err_msg=key)
        # float64 features are stored as float32 and come back as float64
        assert parsed["steps/action"].dtype == np.float64
        # the encoded frames stay readable as bytes from the same proto
        assert len(example.features.feature["steps/observation/image"].bytes_list.value) == t


# -- atexit -----------------------------------------------------------------------------------------
_ENTRY = """
import atexit, sys, weakref

class Resource:
    pass

resource = Resource()
weakref.finalize(resource, print, "finalizer ran", flush=True)
atexit.register(print, "atexit handler ran", flush=True)
atexit.register(lambda: 1 / 0)  # a failing handler must not stop the others or the exit code

from stepnorm.cli import entry
sys.argv = ["stepnorm", "sample", "--help"]
entry()
"""


def test_atexit_run_exitfuncs():
    proc = subprocess.run([sys.executable, "-c", _ENTRY], capture_output=True, text=True, timeout=120)
    with pinned("atexit._run_exitfuncs()", "cli.py entry, before os._exit"):
        assert proc.returncode == 0, f"exit code {proc.returncode}: {proc.stderr[-500:]}"
        lines = proc.stdout.splitlines()
        assert lines.count("atexit handler ran") == 1 and lines.count("finalizer ran") == 1, proc.stdout[-500:]
        assert "ZeroDivisionError" in proc.stderr  # reported, not raised
