"""Local or remote: the one rule for telling a URL (``gs://bucket/x``) from a local path.

A remote path starts with a URL scheme and ``://``; it is read through TensorFlow's filesystems
(``tf.io.gfile``, as TFDS reads it) and is never resolved against the config's directory or
handed to ``os``/``pathlib``. Everything else is a local path, even one with ``://`` further in.
etils.epath is not used for this: it knows only the gs/s3/az/hf schemes (TensorFlow's filesystems
also read e.g. ``ram://`` and ``hdfs://``) and itself only looks for ``://``.
"""

from __future__ import annotations

import os
import re

# RFC 3986 scheme: a letter, then letters, digits, "+", "-" or "."
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")


def is_remote(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a URL of a (remote) filesystem rather than a local path."""
    return _URL.match(os.fspath(path)) is not None
