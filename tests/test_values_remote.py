"""The values cache on a Beam filesystem URL (what a cluster needs: workers write the entries the
launcher reads), end to end through `stepnorm stats` and `stepnorm cache`.

The filesystem is an in-memory one registered with Beam under the scheme ``memtest`` (defining a
``FileSystem`` subclass registers it), so the cache goes through ``apache_beam.io.filesystems``
exactly as it does for gs://, s3:// or hdfs://, without a network:

- stats.json is the same bytes with the cache there as with a local cache, every entry lands in
  the filesystem (and nothing in a local cache), and a rerun opens no data file (``extract reused``);
- entries are written under a temporary name and renamed into place, no temporary file is left;
- ``cache ls`` lists them, a reuse marks them used, ``cache rm`` / ``cache prune`` evict them;
- a corrupt entry is exit 2, one line naming it.
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import pytest
from apache_beam.io.filesystem import BeamIOError, FileMetadata, FileSystem

from stepnorm.cli import main

FILES: dict[str, bytes] = {}
MTIMES: dict[str, float] = {}
OPS: list[tuple[str, str]] = []


class _Writer(io.BytesIO):
    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def close(self):
        if not self.closed:
            FILES[self.path], MTIMES[self.path] = self.getvalue(), time.time()
            OPS.append(("create", self.path))
        super().close()


class MemTestFileSystem(FileSystem):
    """A flat in-memory object store (no directories, like GCS or S3)."""

    @classmethod
    def scheme(cls):
        return "memtest"

    def join(self, basepath, *paths):
        return "/".join([basepath.rstrip("/")] + [p.strip("/") for p in paths])

    def split(self, path):
        head, _, tail = path.rpartition("/")
        return head, tail

    def mkdirs(self, path):
        pass

    def has_dirs(self):
        return False

    def _list(self, dir_or_prefix):
        for path in sorted(FILES):
            if path.startswith(dir_or_prefix):
                yield FileMetadata(path, len(FILES[path]), MTIMES[path])

    def create(self, path, mime_type="application/octet-stream", compression_type=None):
        return _Writer(path)

    def open(self, path, mime_type="application/octet-stream", compression_type=None):
        if path not in FILES:
            raise BeamIOError(f"no such file {path}", {path: FileNotFoundError(path)})
        return io.BytesIO(FILES[path])

    def copy(self, source_file_names, destination_file_names):
        for src, dst in zip(source_file_names, destination_file_names):
            FILES[dst], MTIMES[dst] = FILES[src], time.time()

    def rename(self, source_file_names, destination_file_names):
        for src, dst in zip(source_file_names, destination_file_names):
            FILES[dst], MTIMES[dst] = FILES.pop(src), time.time()
            MTIMES.pop(src)
            OPS.append(("rename", dst))

    def exists(self, path):
        return path in FILES or any(p.startswith(path.rstrip("/") + "/") for p in FILES)

    def size(self, path):
        return len(FILES[path])

    def last_updated(self, path):
        return MTIMES[path]

    def checksum(self, path):
        return str(len(FILES[path]))

    def metadata(self, path):
        return FileMetadata(path, len(FILES[path]), MTIMES[path])

    def delete(self, paths):
        for path in paths:
            for p in [p for p in FILES if p == path or p.startswith(path.rstrip("/") + "/")]:
                del FILES[p], MTIMES[p]


ROOT = "memtest://bucket/stepnorm-cache"


@pytest.fixture()
def sample(tmp_path):
    FILES.clear(), MTIMES.clear(), OPS.clear()
    assert main(["sample", str(tmp_path / "sample")]) == 0
    yield tmp_path / "sample" / "config.yaml"
    FILES.clear(), MTIMES.clear(), OPS.clear()


def _stats(cfg: Path, out: Path, *extra) -> None:
    assert main(["stats", str(cfg), "--out", str(out), *extra]) == 0


def _bytes(out: Path) -> str:
    return re.sub(r'"created": "[^"]*"', '"created": ""', (out / "stats.json").read_text())


def _entries() -> list[str]:
    return sorted(p for p in FILES if p.startswith(f"{ROOT}/values/") and p.endswith(".npz"))


def test_stats_with_the_cache_on_a_beam_filesystem(sample, tmp_path, monkeypatch, capsys):
    local = tmp_path / "local-cache"
    _stats(sample, tmp_path / "local", "--cache", str(local))
    _stats(sample, tmp_path / "remote", "--cache", ROOT)
    assert _bytes(tmp_path / "remote") == _bytes(tmp_path / "local")
    entries = _entries()
    assert len(entries) == len(list(local.glob("values/*/*.npz"))) > 0
    assert sorted(Path(p).name for p in entries) == sorted(p.name for p in local.glob("values/*/*.npz"))
    # each entry was written under a temporary name and renamed into place; none is left
    assert all(any(op == ("rename", p) for op in OPS) for p in entries)
    assert not [p for p in FILES if p.endswith(".tmp")]

    # a rerun reads no data file and marks its entries used
    import stepnorm.sources.rlds as rlds

    monkeypatch.setattr(rlds, "iter_shard_episodes", lambda *a, **k: (_ for _ in ()).throw(AssertionError("read")))
    info = entries[0][: -len(".npz")] + ".json"
    MTIMES[info] = time.time() - 5 * 86400
    capsys.readouterr()
    _stats(sample, tmp_path / "again", "--cache", ROOT)
    out = capsys.readouterr().out
    assert out.count("extract reused") == 2
    assert _bytes(tmp_path / "again") == _bytes(tmp_path / "local")
    assert MTIMES[info] > time.time() - 60

    # cache ls / rm / prune on the URL
    assert main(["cache", "ls", "--cache", ROOT]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith(f"{len(entries)} entries") and lines[-1].endswith(f"{ROOT}/values")
    name = lines[0].split()[1]
    assert main(["cache", "rm", "--dataset", name, "--cache", ROOT]) == 0
    assert "removed 1 entries" in capsys.readouterr().out
    assert len(_entries()) == len(entries) - 1
    leftover = f"{ROOT}/values/ab/.abc.npz.k1ll3d.tmp"  # as a killed worker leaves it
    FILES[leftover], MTIMES[leftover] = b"x", time.time() - 2 * 3600
    assert main(["cache", "prune", "--max-size", "0", "--cache", ROOT]) == 0
    assert f"removed {len(entries) - 1} entries" in capsys.readouterr().out
    assert _entries() == [] and leftover not in FILES


def test_a_corrupt_remote_entry_is_one_line(sample, tmp_path, capsys):
    _stats(sample, tmp_path / "a", "--cache", ROOT)
    entry = _entries()[0]
    FILES[entry] = FILES[entry][:-7] + b"garbage"
    capsys.readouterr()
    assert main(["stats", str(sample), "--out", str(tmp_path / "b"), "--cache", ROOT]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and entry in err[0] and "--force" in err[0], err
