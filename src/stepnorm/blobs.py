"""The one binary format of stepnorm's blobs: accumulators, validators' samples, values-cache entries.

A blob is an ``.npz`` archive (numpy, never pickle) holding a ``version`` entry and named arrays;
variable-length parts (a cell's sample values, encoded image frames) are stored as one ``.data``
array with their ``.lengths``. A blob stored on its own (a values-cache entry) is sealed with a
sha256 trailer, so truncation and corruption are detected before the archive is opened.
Numpy only: the statistics core uses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import struct
import zipfile
from typing import Iterator, Mapping, Sequence

import numpy as np

__all__ = ["StoredArrays", "pack", "ragged", "ragged_bytes", "seal", "split", "split_ragged", "split_ragged_bytes", "unpack", "unseal"]


def pack(arrays: Mapping[str, np.ndarray], version: int) -> bytes:
    """``arrays`` and ``version`` as one blob."""
    buf = io.BytesIO()
    np.savez(buf, version=np.asarray(version), **arrays)
    return buf.getvalue()


@contextlib.contextmanager
def unpack(blob: bytes, version: int, what: str, views: bool = False) -> Iterator:
    """The arrays of a blob (a read-only mapping, open inside the ``with``); ValueError when it is not
    a blob of ``version`` (``what`` names the kind in the message).

    ``views``: the arrays are read-only views of ``blob`` (``StoredArrays``: no copy and no zip
    CRC, for a sealed blob whose sha256 was checked); else numpy's ``np.load`` copies."""
    with (contextlib.nullcontext(StoredArrays(blob)) if views else np.load(io.BytesIO(blob), allow_pickle=False)) as z:
        got = int(z["version"]) if "version" in z.files else None
        if got != version:
            raise ValueError(f"{what} format version {got} is not {version}")
        yield z


class StoredArrays:
    """The arrays of a ``pack`` blob (an uncompressed npz: one stored ``.npy`` member per array)
    as read-only views of the blob's bytes, located through the zip's central directory and each
    member's ``.npy`` header. ValueError for anything else (a compressed member, an object array,
    sizes that disagree)."""

    _LOCAL_HEADER = 30  # a zip local file header's fixed part; then the name and the extra field

    def __init__(self, blob: bytes):
        self._blob = blob
        self._at: dict[str, tuple[int, int]] = {}
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            for info in archive.infolist():
                if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                    raise ValueError(f"member {info.filename!r} is not a stored .npy array")
                at = info.header_offset
                local = blob[at:at + self._LOCAL_HEADER]
                if len(local) < self._LOCAL_HEADER or local[:4] != b"PK\x03\x04":
                    raise ValueError(f"member {info.filename!r} has no local header")
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                start = at + self._LOCAL_HEADER + name_len + extra_len
                if start + info.file_size > len(blob):
                    raise ValueError(f"member {info.filename!r} runs past the end")
                self._at[info.filename[: -len(".npy")]] = (start, info.file_size)
        self.files = list(self._at)

    def __contains__(self, name: str) -> bool:
        return name in self._at

    def __getitem__(self, name: str) -> np.ndarray:
        start, size = self._at[name]
        head = io.BytesIO(self._blob[start:start + min(size, 1 << 17)])
        major, _ = np.lib.format.read_magic(head)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(head)
        if dtype.hasobject:
            raise ValueError(f"array {name!r} holds Python objects")
        count = int(np.prod(shape, dtype=np.int64))
        offset = head.tell()
        if count * dtype.itemsize != size - offset:
            raise ValueError(f"array {name!r} holds {size - offset} bytes, its header says {count * dtype.itemsize}")
        data = np.frombuffer(self._blob, dtype, count, start + offset)
        return data.reshape(shape[::-1]).T if fortran else data.reshape(shape)


def ragged(prefix: str, parts: Sequence[np.ndarray], dtype=np.float64) -> dict[str, np.ndarray]:
    """Variable-length 1-D ``parts`` as ``{prefix}.lengths`` and ``{prefix}.data``."""
    return {f"{prefix}.lengths": np.asarray([len(p) for p in parts], np.int64),
            f"{prefix}.data": np.concatenate([np.asarray(p, dtype) for p in parts] + [np.zeros(0, dtype)])}


def split(data: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    """``data`` cut into consecutive parts of ``lengths``."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return [data[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


def split_ragged(z: Mapping[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    """The parts ``ragged`` stored, in order."""
    return split(z[f"{prefix}.data"], z[f"{prefix}.lengths"])


def ragged_bytes(prefix: str, parts: Sequence[bytes]) -> dict[str, np.ndarray]:
    """Byte strings (e.g. encoded frames) as ``ragged`` uint8 parts."""
    return ragged(prefix, [np.frombuffer(p, np.uint8) for p in parts], np.uint8)


def split_ragged_bytes(z: Mapping[str, np.ndarray], prefix: str) -> list[bytes]:
    return [part.tobytes() for part in split_ragged(z, prefix)]


def seal(payload: bytes, tag: bytes) -> bytes:
    """``payload`` with a trailer: ``tag`` and the payload's sha256."""
    return payload + tag + hashlib.sha256(payload).digest()


def unseal(blob: bytes, tag: bytes) -> bytes:
    """The payload of a sealed blob; ValueError (the reason) when the trailer is missing or wrong."""
    cut = len(blob) - len(tag) - 32
    if cut < 0 or blob[cut:cut + len(tag)] != tag:
        raise ValueError("no checksum trailer (truncated or not a stepnorm file)")
    payload = blob[:cut]
    if hashlib.sha256(payload).digest() != blob[cut + len(tag):]:
        raise ValueError("checksum mismatch")
    return payload
