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
