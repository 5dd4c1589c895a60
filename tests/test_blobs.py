"""stepnorm.blobs, the one blob format: round trips, version checks, the sealed trailer."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepnorm import blobs


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(allow_nan=False), max_size=6), max_size=5),
       st.lists(st.binary(max_size=20), max_size=5))
def test_ragged_round_trip(float_parts, byte_parts):
    arrays = {**blobs.ragged("f", [np.asarray(p, np.float64) for p in float_parts]),
              **blobs.ragged_bytes("b", byte_parts)}
    with blobs.unpack(blobs.pack(arrays, 7), 7, "test") as z:
        back = blobs.split_ragged(z, "f")
        assert [list(p) for p in back] == float_parts
        assert blobs.split_ragged_bytes(z, "b") == byte_parts


def test_version_mismatch_names_the_kind():
    blob = blobs.pack({"x": np.zeros(2)}, 2)
    with pytest.raises(ValueError, match="accumulator format version 2 is not 3"):
        with blobs.unpack(blob, 3, "accumulator"):
            pass


def test_seal_detects_truncation_and_corruption():
    sealed = blobs.seal(b"payload bytes", b"tag:")
    assert blobs.unseal(sealed, b"tag:") == b"payload bytes"
    with pytest.raises(ValueError, match="no checksum trailer"):
        blobs.unseal(sealed[:-5], b"tag:")
    damaged = bytearray(sealed)
    damaged[2] ^= 1
    with pytest.raises(ValueError, match="checksum mismatch"):
        blobs.unseal(bytes(damaged), b"tag:")


def _arrays():
    rng = np.random.default_rng(3)
    return {"f64": rng.normal(size=(5, 3)), "fortran": np.asfortranarray(rng.normal(size=(4, 6))),
            "scalar": np.asarray(7), "empty": np.zeros((0, 4)), "u8": rng.integers(0, 255, 300).astype(np.uint8),
            "bools": rng.uniform(size=9) > 0.5, "text": np.asarray(["a", "ep/1", "ünï"]), "i64": np.arange(-3, 4),
            "big": rng.normal(size=70_000)}


@pytest.mark.parametrize("views", [False, True])
def test_views_read_what_np_load_reads(views):
    """``unpack(..., views=True)`` (the values cache's zero-copy read) gives np.load's arrays,
    dtypes and shapes, as read-only views of the blob."""
    arrays = _arrays()
    blob = blobs.pack(arrays, 4)
    with blobs.unpack(blob, 4, "test", views=views) as z:
        assert sorted(z.files) == sorted(["version", *arrays])
        for name, want in arrays.items():
            got = z[name]
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, want)
            if views:
                assert not got.flags.writeable
        assert "f64" in z and "nothing" not in z


def test_views_refuse_what_they_cannot_map():
    import io
    import zipfile

    buf = io.BytesIO()
    np.savez_compressed(buf, version=np.asarray(1), x=np.zeros(3))
    with pytest.raises(ValueError, match="not a stored .npy array"):
        blobs.StoredArrays(buf.getvalue())
    buf = io.BytesIO()
    np.savez(buf, version=np.asarray(1), x=np.asarray([{}, 1], dtype=object))
    with pytest.raises(ValueError, match="Python objects"):
        blobs.StoredArrays(buf.getvalue())["x"]
    blob = blobs.pack({"x": np.zeros(1000)}, 1)
    with pytest.raises((ValueError, zipfile.BadZipFile)):
        blobs.StoredArrays(blob[:-200])
