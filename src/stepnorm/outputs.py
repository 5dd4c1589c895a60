"""Output directories that never destroy what stepnorm did not write.

Every directory stepnorm produces (a stats artifact, a normalized output, a run, a report, the sample
mixture) carries a marker file naming its kind. Before anything is written, ``claim_output`` checks
that ``--out`` is absent, an empty directory, or an earlier stepnorm output of the same kind, and that
it is neither inside an input nor holding one; anything else is an ``OutputError`` (exit 2) and
nothing is touched.

A writer holds a lock beside ``--out`` (``.<name>.lock``), so two writers to one output are serialized:
the second one fails at once with a clear line. Under the lock, leftovers of killed writers (staging
directories of processes that are gone) are removed. The new output is assembled in a staging
directory beside ``--out`` and published with one atomic exchange (Linux ``renameat2`` with
``RENAME_EXCHANGE``): at every moment ``--out`` is the complete old output or the complete new one.
Where the filesystem cannot exchange, two renames are used and a killed swap is repaired by the next
writer (the old output is renamed back).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path
from typing import Iterable, Iterator

from stepnorm import __version__
from stepnorm.errors import OutputError
from stepnorm.paths import is_remote

MARKER = ".stepnorm-output.json"
KINDS = ("stats", "normalized", "run", "report", "sample")

# Outputs written before markers existed are recognized by their own files, and only when they hold
# nothing else: (the file that identifies the kind, its JSON "format" or None, every name allowed).
_LEGACY = {
    "stats": ("stats.json", "stepnorm.stats", {"stats.json", "accumulators", "samples"}),
    "normalized": ("MANIFEST.json", None, None),
    "run": (None, None, {"stats", "report", "normalized"}),
    "report": ("report.json", None, {"report.json", "report.html", "stats"}),
    "sample": ("config.yaml", None, {"config.yaml", "sim_pick", "real_pick", "downloads"}),
}


def write_marker(directory: Path, kind: str) -> None:
    """Mark ``directory`` as a stepnorm output of ``kind``."""
    write_atomic(directory / MARKER, json.dumps({"kind": kind, "tool_version": __version__}) + "\n")


def output_kind(directory: Path) -> str | None:
    """The kind of stepnorm output ``directory`` is (by its marker, or a pre-marker layout), else None."""
    marker = directory / MARKER
    if marker.is_file():
        try:
            kind = json.loads(marker.read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            return None
        return kind if kind in KINDS else None
    names = set(foreign_entries(directory))
    for kind, (key_file, fmt, allowed) in _LEGACY.items():
        if allowed is not None and not names <= allowed:
            continue
        if key_file is None:
            if names and all(output_kind(directory / n) for n in names if (directory / n).is_dir()):
                return kind
            continue
        if key_file not in names:
            continue
        if fmt is None:
            return kind
        try:
            if json.loads((directory / key_file).read_text()).get("format") == fmt:
                return kind
        except (OSError, ValueError, AttributeError):
            continue
    return None


def _is_own_leftover(path: Path) -> bool:
    """A lock file or staging directory of stepnorm's own (of an output inside ``path.parent``)."""
    name = path.name
    if name.startswith(".") and ".stepnorm-" in name and path.is_dir():
        return True
    if name.startswith(".") and name.endswith(".lock") and path.is_file() and path.stat().st_size < 512:
        text = path.read_bytes()
        return not text or text.startswith(b"pid ")
    return False


def foreign_entries(directory: Path) -> list[str]:
    """The names in ``directory`` other than stepnorm's own lock files and staging directories."""
    return sorted(p.name for p in directory.iterdir() if not _is_own_leftover(p))


def check_output(out: str | os.PathLike, kind: str, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Resolve ``out`` and refuse it unless stepnorm may replace it with a new output of ``kind``.

    Raises OutputError when ``out`` is a file, a directory holding anything but an earlier stepnorm
    output of the same kind, equal to or inside one of ``inputs``, or holding one of them.
    """
    path = Path(out).expanduser()
    try:
        resolved = path.resolve(strict=False)
    except (OSError, RuntimeError) as exc:  # e.g. a symlink loop
        raise OutputError(str(path), f"cannot resolve the output path ({exc})") from None
    for item in inputs:
        if item is None or is_remote(item):
            continue
        source = Path(item).resolve()
        if resolved == source or source in resolved.parents:
            raise OutputError(str(path), f"the output would be written inside the input {source}; choose a "
                                         f"directory outside it")
        if resolved in source.parents:
            raise OutputError(str(path), f"the output directory holds the input {source}; replacing it would "
                                         f"delete the input; choose another directory")
    if resolved.exists() and not resolved.is_dir():
        raise OutputError(str(path), "exists and is not a directory; stepnorm writes a directory here and "
                                     "does not replace files it did not write")
    if resolved.is_dir():
        try:
            entries = foreign_entries(resolved)
        except OSError as exc:
            raise OutputError(str(path), f"cannot list the directory ({exc.strerror})") from None
        if entries:
            found = output_kind(resolved)
            if found is None:
                shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
                raise OutputError(str(path), f"is not empty and not a stepnorm output (it holds {shown}); "
                                             f"stepnorm never replaces files it did not write: choose a new or "
                                             f"empty directory")
            if found != kind:
                raise OutputError(str(path), f"is a stepnorm {found} output, not a {kind} output; choose another "
                                             f"directory")
    return resolved


# -- locking and staging --------------------------------------------------------------------------
@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold the writer lock of ``out`` (a file beside it, removed on release); fail at once if another
    process holds it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out.parent / f".{out.name}.lock"
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise OutputError(str(out), f"another stepnorm process ({holder}) is writing this output; wait for "
                                        f"it to finish or choose another directory") from None
        try:  # the holder before us may have removed the file after we opened it: lock the current one
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        _clean_leftovers(out)
        yield
    finally:
        os.unlink(lock_path)  # while still holding it, so no one can lock this file afterwards
        os.close(fd)


def _staging_prefix(out: Path) -> str:
    return f".{out.name}.stepnorm-"


def new_staging(out: Path, purpose: str = "tmp") -> Path:
    """A fresh staging directory beside ``out`` (removed by ``_clean_leftovers`` if this process dies)."""
    name = f"{_staging_prefix(out)}{purpose}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path = out.parent / name
    path.mkdir(parents=True)
    return path


def _clean_leftovers(out: Path) -> None:
    """Remove staging directories of dead writers of ``out``; restore an old output a killed
    two-rename swap left aside (only on filesystems without an atomic exchange)."""
    host = socket.gethostname()
    prefix = _staging_prefix(out)
    for path in sorted(out.parent.glob(f"{prefix}*")):
        try:
            purpose, rest = path.name[len(prefix):].split("-", 1)
        except ValueError:
            continue
        if not rest.startswith(f"{host}-"):
            continue  # another machine's writer (shared filesystem): not ours to judge
        pid = rest[len(host) + 1:].split("-")[0]
        if not pid.isdigit() or (int(pid) != os.getpid() and _alive(int(pid))):
            continue
        if purpose == "old" and not out.exists():
            os.rename(path, out)
            continue
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


# -- publishing -----------------------------------------------------------------------------------
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the system or filesystem cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def publish(staging: Path, out: Path, kind: str) -> None:
    """Mark ``staging`` as a ``kind`` output and make it ``out``: one atomic step where possible.

    The caller holds ``output_lock(out)`` and has checked ``out`` with ``check_output``.
    """
    write_marker(staging, kind)
    if not out.exists():
        os.rename(staging, out)
        return
    if _exchange(staging, out):
        shutil.rmtree(staging, ignore_errors=True)  # now the old output
        return
    old = out.parent / f"{_staging_prefix(out)}old-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.rename(out, old)
    os.rename(staging, out)
    shutil.rmtree(old, ignore_errors=True)


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Write one file via a temporary file beside it and ``os.replace``: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a published file gets the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def writing(out: str | os.PathLike, kind: str, inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Check ``out``, hold its lock, and yield a staging directory published as ``out`` on success.

    On any error the staging directory is removed and ``out`` is left exactly as it was.
    """
    target = check_output(out, kind, inputs)
    with output_lock(target):
        target = check_output(target, kind, inputs)  # re-check under the lock
        staging = new_staging(target)
        try:
            yield staging
            publish(staging, target, kind)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
