"""The values cache: each read task's numeric values, read once, shared by every config and output.

Statistics need only the numeric step fields (actions, states) and episode boundaries, a small
part of an image dataset's bytes. The Beam stage writes them once per read task (an RLDS shard
read; a LeRobot data file, ``data/chunk-*/*.parquet``); everything else (transforms, accumulators,
exact quantiles, mixtures, the validators' sample) is computed from these entries, so changing the
horizon, the ``delta_mask``, the quantiles, the weights or the weighting, a transform or its
arguments, adding back a dataset or building another mixture of known datasets opens no data
file, and a new or changed data file is the only one read.

A LeRobot entry holds every row of its file, as the episode parts ``iter_lerobot_file_episodes``
yields (a v3.0 episode may continue in the next file; ``max_frames`` is not applied to entries).
``stepnorm.sources.cached_episodes`` assembles a dataset's entries into its episodes as reading the
whole dataset does (``lerobot.assemble_lerobot_episodes``: the parts of an episode merged, its
source naming both files, ``max_frames`` applied) and makes the checks across files (an episode in
non-adjacent files, widths that change between episodes, the episode metadata's episodes and
lengths) on every run, also when every entry is reused.

Layout (``ROOT`` from ``--cache``, else ``$STEPNORM_CACHE``, else ``$XDG_CACHE_HOME/stepnorm``,
else ``~/.cache/stepnorm``; a local directory or any filesystem URL Apache Beam's ``FileSystems``
knows, such as ``gs://bucket/dir``, where a cluster's workers write the entries the launcher
reads)::

    ROOT/values/<kk>/<key>.npz    one read task (RLDS shard read, LeRobot data file): actions and
                                  states as read (before transforms), episode (part) lengths/
                                  indices/sources, one image frame per episode and camera (for the
                                  validators' sample); then a sha256 trailer
    ROOT/values/<kk>/<key>.json   what the entry holds (dataset, file, episodes, steps) for
                                  ``stepnorm cache ls``; its mtime is the entry's last use
    ROOT/plans/<kk>/<key>.json    an RLDS split's shard reads or declared widths as TFDS resolved
                                  them from the metadata files (local roots; see
                                  ``stepnorm.sources.rlds.plans_in``); pruned by age with the entries

``<key>`` is ``stepnorm.sources.task_values_keys`` (the file's identity, the part read, the
metadata the reading consults, keys, name, format version); ``<kk>`` its first two characters. An
entry is written under a temporary name and renamed into place, so it is complete or absent; a
checksum that disagrees is reported as a corrupt entry. Nothing is evicted except by ``stepnorm cache rm`` / ``stepnorm cache prune``.
On a URL the same holds (a temporary name, then ``FileSystems.rename``); with no mtime to set there,
a reuse rewrites the entry's small ``.json``, whose update time is its last use.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

from stepnorm import blobs
from stepnorm.errors import CacheError
from stepnorm.outputs import write_atomic
from stepnorm.paths import is_remote
from stepnorm.samples import _frame_bytes
from stepnorm.sources.base import Episode

FORMAT_VERSION = 2  # 2: each field of a task's episodes in one array where they stack
TRAILER = b"stepnorm.values.sha256:"


def default_cache_root() -> Path:
    """``$STEPNORM_CACHE``, else ``$XDG_CACHE_HOME/stepnorm``, else ``~/.cache/stepnorm``."""
    if os.environ.get("STEPNORM_CACHE"):
        return Path(os.environ["STEPNORM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "stepnorm"


class TaskValues:
    """One read task's episodes as read (before transforms), in file order: actions, states,
    indices, sources, and per image key the one frame the validators' sample may use."""

    def __init__(self):
        self.episodes: list = []

    def add(self, episode) -> None:
        self.episodes.append(episode)

    def to_bytes(self) -> bytes:
        eps = self.episodes
        image_keys = sorted({k for ep in eps for k in ep.images})
        arrays = {
            "lengths": np.asarray([ep.length for ep in eps], np.int64),
            "indices": np.asarray([ep.index for ep in eps], np.int64),
            "sources": np.asarray([str(ep.source) for ep in eps], dtype=str),
            "image_keys": np.asarray(image_keys, dtype=str),
        }
        actions = [np.asarray(ep.action) for ep in eps]
        states = [None if ep.state is None else np.asarray(ep.state) for ep in eps]
        if _stackable(actions) and (all(s is None for s in states) or _stackable(states)):
            # One array per field, split by the lengths when read (one member to open per field,
            # not one per episode).
            arrays["action"] = np.concatenate(actions) if actions else np.zeros((0, 0), np.float32)
            if eps and states[0] is not None:
                arrays["state"] = np.concatenate(states)
        else:
            # Each episode keeps its own arrays: widths may differ between episodes (an error the
            # accumulator reports naming the episode's source), and dtypes stay as read.
            for i, (action, state) in enumerate(zip(actions, states)):
                arrays[f"a{i}"] = action
                if state is not None:
                    arrays[f"s{i}"] = state
        for j, key in enumerate(image_keys):
            frames = [_frame_bytes(ep.images[key][0]) if ep.images.get(key) else b"" for ep in eps]
            arrays.update(blobs.ragged_bytes(f"img{j}", frames))
        return blobs.pack(arrays, FORMAT_VERSION)


def _stackable(arrays: list) -> bool:
    """Whether per-episode arrays can be stored as one: all ``[T, D]`` with one ``D`` and dtype."""
    return all(a is not None and a.ndim == 2 for a in arrays) and len({(a.shape[1], a.dtype.str) for a in arrays}) <= 1


class ValuesCache:
    """The values entries under ``root`` (see the module docstring): a local directory, or any
    filesystem URL Apache Beam's ``FileSystems`` knows (``gs://``, ``s3://``, ``hdfs://``, ...),
    so that Beam workers on a cluster write the entries the launcher reads."""

    def __init__(self, root: str | os.PathLike | None = None):
        root = default_cache_root() if root is None else root
        self.files = _BeamFiles() if is_remote(root) else _LocalFiles()
        self.root = os.fspath(root) if is_remote(root) else Path(root)
        self.values_dir = self.files.join(self.root, "values")
        # RLDS splits' shard plans and declared widths (stepnorm.sources.rlds.plans_in; local roots)
        self.plans_dir = self.files.join(self.root, "plans")

    def plans(self) -> list[tuple[str, int, float]]:
        """The remembered RLDS plans: (path, bytes, last use)."""
        return self.files.listing(self.files.join(self.plans_dir, "*", "*.json"))

    def path(self, key: str) -> str:
        return self.files.join(self.values_dir, key[:2], f"{key}.npz")

    def _info(self, key: str) -> str:
        return self.path(key)[: -len(".npz")] + ".json"

    def has(self, key: str) -> bool:
        return self.files.exists(self.path(key))

    def write(self, key: str, values: TaskValues, dataset: str, locator: str) -> None:
        """Store one task's values (atomically, with a checksum trailer); Beam workers call this."""
        payload = values.to_bytes()
        self.files.write(self.path(key), blobs.seal(payload, TRAILER))
        info = {"dataset": dataset, "file": locator, "episodes": len(values.episodes),
                "steps": int(sum(ep.length for ep in values.episodes)), "bytes": len(payload)}
        self.files.write(self._info(key), json.dumps(info).encode())

    def read(self, key: str) -> bytes:
        """An entry's payload, checksum verified; marks the entry as used."""
        path = self.path(key)
        try:
            blob = self.files.read(path)
        except OSError as exc:
            raise _corrupt(path, f"cannot read ({exc.strerror or exc})") from None
        try:
            payload = blobs.unseal(blob, TRAILER)
        except ValueError as exc:
            raise _corrupt(path, str(exc)) from None
        self.files.touch(self._info(key))
        return payload

    def counts(self, key: str, dataset: str) -> tuple[int, int]:
        """(episodes, steps) the entry ``key`` holds (read from its episode lengths only)."""
        try:
            with blobs.unpack(self.read(key), FORMAT_VERSION, "values", views=True) as z:
                lengths = z["lengths"]
                return int(len(lengths)), int(lengths.sum())
        except (ValueError, KeyError, OSError, zipfile.BadZipFile) as exc:
            raise _corrupt(self.path(key), f"unreadable ({exc})") from None

    def episodes(self, keys: list[str], dataset: str) -> Iterator[Episode]:
        """Every episode of the entries ``keys`` in order, as read (before transforms), episodes in
        file order; images hold the one frame per key the validators' sample may use."""
        for key in keys:
            try:
                # views of the entry's bytes; the numeric arrays are copied (so an episode kept in
                # memory does not keep the entry's frames alive), frames become bytes
                with blobs.unpack(self.read(key), FORMAT_VERSION, "values", views=True) as z:
                    sources, indices, lengths = z["sources"], z["indices"], z["lengths"]
                    frames = {}
                    for j, image_key in enumerate(z["image_keys"]):
                        frames[str(image_key)] = blobs.split_ragged_bytes(z, f"img{j}")
                    names = set(z.files)
                    if "action" in names:
                        cuts = np.cumsum(lengths)[:-1]
                        actions = np.split(z["action"].copy(), cuts) if len(lengths) else []
                        states = np.split(z["state"].copy(), cuts) if "state" in names else [None] * len(lengths)
                    else:
                        actions = [z[f"a{e}"].copy() for e in range(len(lengths))]
                        states = [z[f"s{e}"].copy() if f"s{e}" in names else None for e in range(len(lengths))]
                    for e in range(len(lengths)):
                        images = {k: [f[e]] for k, f in frames.items() if f[e]}
                        yield Episode(dataset, str(sources[e]), int(indices[e]), actions[e], states[e], images)
            except (ValueError, KeyError, OSError, zipfile.BadZipFile) as exc:
                raise _corrupt(self.path(key), f"unreadable ({exc})") from None

    # -- inspection and eviction (``stepnorm cache``) ----------------------------------------------
    def entries(self) -> list[dict]:
        """Every entry: key, dataset, file, episodes, steps, bytes on disk, last use (epoch s)."""
        infos = {path: when for path, _, when in self.files.listing(self.files.join(self.values_dir, "*", "*.json"))}
        out = []
        for data, size, written in sorted(self.files.listing(self.files.join(self.values_dir, "*", "*.npz"))):
            info_path = data[: -len(".npz")] + ".json"
            try:
                info = json.loads(self.files.read(info_path))
                last = infos.get(info_path, written)
            except (OSError, ValueError):
                info, last = {}, written
            key = os.path.basename(data)[: -len(".npz")]
            out.append({"key": key, "dataset": info.get("dataset", "?"), "file": info.get("file", "?"),
                        "episodes": info.get("episodes"), "steps": info.get("steps"),
                        "bytes": size, "last_used": last})
        return out

    def remove(self, key: str) -> None:
        for path in (self.path(key), self._info(key)):
            self.files.delete(path)


class _LocalFiles:
    """The cache's file operations on a local directory."""

    join = staticmethod(os.path.join)

    @staticmethod
    def exists(path: str) -> bool:
        return os.path.isfile(path)

    @staticmethod
    def read(path: str) -> bytes:
        return Path(path).read_bytes()

    @staticmethod
    def write(path: str, data: bytes) -> None:
        write_atomic(Path(path), data)

    @staticmethod
    def touch(path: str) -> None:
        """Mark as used now (the info file's mtime is the entry's last use)."""
        try:
            os.utime(path)
        except FileNotFoundError:
            pass

    @staticmethod
    def listing(pattern: str) -> list[tuple[str, int, float]]:
        """``(path, bytes, mtime)`` of every file matching the glob ``pattern``."""
        import glob

        out = []
        for path in glob.glob(pattern, include_hidden=True):
            try:
                st = os.stat(path)
            except OSError:
                continue
            out.append((path, st.st_size, st.st_mtime))
        return out

    @staticmethod
    def delete(path: str) -> None:
        Path(path).unlink(missing_ok=True)

    @staticmethod
    def delete_tree(path: str) -> None:
        import shutil

        shutil.rmtree(path, ignore_errors=True)


class _BeamFiles:
    """The cache's file operations on a Beam filesystem URL (``apache_beam.io.filesystems``).

    A file is written under a temporary name in its directory and renamed into place, so it is
    complete or absent on every filesystem (object stores publish an object only when its upload
    is complete anyway). With no mtime to set, marking an entry used rewrites its small info file."""

    def __init__(self):
        from apache_beam.io.filesystems import FileSystems

        self.fs = FileSystems

    def join(self, base: str, *parts: str) -> str:
        return self.fs.join(base, *parts)

    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    def read(self, path: str) -> bytes:
        from apache_beam.io.filesystem import CompressionTypes

        try:
            with self.fs.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
                return handle.read()
        except OSError:
            raise
        except Exception as exc:  # BeamIOError and the filesystems' own errors
            raise OSError(str(exc)) from None

    def write(self, path: str, data: bytes) -> None:
        import uuid

        from apache_beam.io.filesystem import CompressionTypes

        directory, name = self.fs.split(path)
        tmp = self.fs.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")
        try:
            with self.fs.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
                handle.write(data)
            if self.fs.exists(path):
                self.fs.delete([path])  # rename does not replace on every filesystem
            self.fs.rename([tmp], [path])
        except BaseException:
            self.delete(tmp)
            raise

    def touch(self, path: str) -> None:
        try:
            self.write(path, self.read(path))
        except OSError:
            pass

    def listing(self, pattern: str) -> list[tuple[str, int, float]]:
        try:
            (result,) = self.fs.match([pattern])
        except Exception:  # nothing matches: some filesystems raise
            return []
        return [(m.path, m.size_in_bytes, m.last_updated_in_seconds) for m in result.metadata_list]

    def delete(self, path: str) -> None:
        try:
            if self.fs.exists(path):
                self.fs.delete([path])
        except Exception:
            pass

    def delete_tree(self, path: str) -> None:
        self.delete(path)  # Beam's delete removes a directory (a prefix) with what it holds


def _corrupt(path: str, problem: str) -> CacheError:
    return CacheError(str(path), f"corrupt values cache entry: {problem}; rerun with --force to rebuild it")


def format_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def parse_size(text: str) -> int:
    """``"500M"``, ``"20G"``, ``"1.5T"`` or plain bytes -> bytes (binary units)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B")
    unit = t[-1:] if t[-1:] in units and t[-1:] else ""
    try:
        value = float(t[: len(t) - len(unit)])
    except ValueError:
        raise CacheError(None, f"--max-size {text!r} is not a size (e.g. 500M, 20G)") from None
    if not value >= 0:
        raise CacheError(None, f"--max-size {text!r} must not be negative")
    return int(value * units[unit])


def list_entries(cache: ValuesCache) -> list[str]:
    """``stepnorm cache ls``: one line per entry, then the total."""
    import datetime as dt

    entries = cache.entries()
    lines = []
    for e in sorted(entries, key=lambda e: (e["dataset"], e["file"], e["key"])):
        used = dt.datetime.fromtimestamp(e["last_used"], dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
        lines.append(f"{e['key'][:16]}  {e['dataset']:24s} {_file_label(str(e['file'])):40s} "
                     f"{e['episodes'] if e['episodes'] is not None else '?':>7} episodes "
                     f"{format_size(e['bytes']):>9}  used {used}")
    lines.append(f"{len(entries)} entries, {format_size(sum(e['bytes'] for e in entries))} in {cache.values_dir}")
    plans = cache.plans()
    if plans:
        lines.append(f"{len(plans)} RLDS split plans, {format_size(sum(size for _, size, _ in plans))} in {cache.plans_dir}")
    return lines


def _file_label(path: str) -> str:
    """An entry's file as ``cache ls`` shows it: its name, with its chunk directory for a LeRobot
    data file (v3.0 names files ``file-000.parquet`` in every ``chunk-XXX``)."""
    parent, name = os.path.split(path)
    chunk = os.path.basename(parent)
    return f"{chunk}/{name}" if chunk.startswith("chunk-") and name.endswith(".parquet") else name


def remove_entries(cache: ValuesCache, keys: list[str] = (), dataset: str | None = None) -> tuple[int, int]:
    """``stepnorm cache rm``: entries whose key starts with one of ``keys`` or of ``dataset``.

    Returns (entries removed, bytes freed)."""
    if not keys and dataset is None:
        raise CacheError(None, "cache rm needs KEY... or --dataset NAME (see `stepnorm cache ls`)")
    gone = [e for e in cache.entries()
            if (dataset is not None and e["dataset"] == dataset) or any(e["key"].startswith(k) for k in keys)]
    for e in gone:
        cache.remove(e["key"])
    return len(gone), sum(e["bytes"] for e in gone)


def prune_entries(cache: ValuesCache, older_than_days: float | None = None, max_bytes: int | None = None,
                  now: float | None = None) -> tuple[int, int]:
    """``stepnorm cache prune``: entries not used for ``older_than_days``, then the least recently
    used ones until the cache holds at most ``max_bytes``; also temporary files that killed runs
    left (older than an hour). Returns (entries removed, bytes freed)."""
    import time

    if older_than_days is None and max_bytes is None:
        raise CacheError(None, "cache prune needs --older-than DAYS and/or --max-size SIZE")
    now = time.time() if now is None else now
    entries = sorted(cache.entries(), key=lambda e: (e["last_used"], e["key"]))
    gone = []
    if older_than_days is not None:
        gone = [e for e in entries if now - e["last_used"] > older_than_days * 86400]
    if max_bytes is not None:
        kept = [e for e in entries if e not in gone]
        total = sum(e["bytes"] for e in kept)
        for e in kept:  # least recently used first
            if total <= max_bytes:
                break
            gone.append(e)
            total -= e["bytes"]
    for e in gone:
        cache.remove(e["key"])
    freed = sum(e["bytes"] for e in gone)
    if older_than_days is not None:  # RLDS plans unused as long (a few KB; recomputed when needed)
        for plan, size, used in cache.plans():
            if now - used > older_than_days * 86400:
                freed += size
                cache.files.delete(plan)
    # Half-written files of killed runs (never read: entries are renamed into place when complete;
    # both writers name them .<name>.<random>.tmp).
    for tmp, size, written in [*cache.files.listing(cache.files.join(cache.values_dir, "*", ".*.tmp")),
                               *cache.files.listing(cache.files.join(cache.plans_dir, "*", ".*.tmp"))]:
        if now - written > 3600:
            freed += size
            cache.files.delete(tmp)
    # Scratch directories of killed runs (stage 1's receipts, stage 2 on Beam's results: a run
    # removes its own when it ends), once nothing in them changed for an hour.
    for scratch, size, changed in scratch_dirs(cache):
        if now - changed > 3600:
            freed += size
            cache.files.delete_tree(scratch)
    return len(gone), freed


SCRATCH_PATTERNS = (".receipts-*", ".stage2-*")


def scratch_dirs(cache: ValuesCache) -> list[tuple[str, int, float]]:
    """``(directory, bytes, last change)`` of the runs' scratch directories in the cache root
    (``SCRATCH_PATTERNS``; at most two levels of files below each)."""
    out = []
    for pattern in SCRATCH_PATTERNS:
        for directory, _, changed in cache.files.listing(cache.files.join(cache.root, pattern)):
            files = [*cache.files.listing(cache.files.join(directory, "*")),
                     *cache.files.listing(cache.files.join(directory, "*", "*"))]
            out.append((directory, sum(size for _, size, _ in files),
                        max([changed, *(when for _, _, when in files)])))
    return out
