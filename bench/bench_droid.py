"""Benchmark of `stepnorm stats` on a DROID-sized numeric LeRobot dataset, against its peers (not a test).

The dataset (generated on first use, in its own process, into --data; reused when its parameters
match): --steps steps (default 30M) of a 7-D action (xyz, rpy, gripper) and an 8-D state, no
images, as a LeRobot v3.0 parquet dataset (meta/info.json, meta/episodes/chunk-000/file-000.parquet,
meta/tasks.parquet, data/chunk-000/file-NNN.parquet of ~1M rows (~66 MB; LeRobot closes a file at
100 MB) holding many whole episodes each; fixed-size float32 list columns as LeRobot writes them).
Episode lengths: --episodes-style droid (default) uniform 150-450 steps (~100k episodes at 30M,
about DROID's 76k successful + failed episodes of ~300 steps), or long, uniform 3000-9000 (5000
episodes at 30M). Actions are per-episode random walks with heavy-tailed (Student-t, 3 dof) steps
from a random start; the gripper is a sigmoid of such a walk (continuous in (0, 1)); the state is
the previous action plus small noise (dims 0-6) and one more walk (dim 7), so `a_{t+k} - s_t` on
the first 6 dims (the delta_mask) is a real displacement whose spread grows with k.

Every method runs in its own subprocess, wall time and that process's peak RSS (os.wait4; the
parent imports no numpy and generates nothing, so no child's ru_maxrss starts from a large parent):
  (a)   `stepnorm stats`, H=50, delta_mask on the first 6 action dims, exact quantiles (the
        default), default in-process runner, a fresh --cache dir: reads every file
  (a')  the same config again with that cache warm: no data file read, only stage 2 (statistics
        from the values cache)
  (a'') as (a'), with `--stage2 beam` on 2 `multi_processing` worker processes (the dataset's
        parts spread over them); its artifact must be the same bytes as (a')'s (printed)
  (a0)  as (a) without the delta_mask (fresh cache), and (a0') its warm rerun
  (b)   Octo's in-RAM method: every file's action and state columns into RAM with pyarrow, numpy
        mean/std/min/max and np.quantile q01/q99 (numpy's default rule, as Octo/OpenVLA) over all
        steps: global statistics only, no chunks
  (c)   the naive per-timestep method: every chunk [N, H, D] materialized in one float64 array
        (padded by repeating the last action), numpy mean/std/min/max/q01/q99 per position. Needs
        N*H*7*8 bytes (84 GB at 30M), so it runs on the largest whole-episode prefix of at most
        --naive-max-steps steps (default 2M: 5.6 GB) and the full size is a linear extrapolation,
        labeled as such
  (d)   reading the data files' bytes (the I/O floor)
  (ref) the interpreter importing numpy and pyarrow (what every Python method starts from)
Then a check in a child process: stepnorm's per-timestep q01/q99 (and count) at positions 0 and
H-1 for action dim 6 (the gripper, not a delta dim), in both artifacts' dataset and combined
blocks, against numpy's np.quantile(..., method="inverted_cdf") of the valid entries (a[k:] of
every episode), read column by column; prints the number of mismatches.

Data files are read once, untimed, before the timed runs (warm page cache for every method);
(c) runs last, since its GBs of chunks may push data pages out of the page cache.

Usage: python bench/bench_droid.py [--data /tmp/bench_droid] [--steps 30000000]
           [--episodes-style droid|long] [--naive-max-steps 2000000] [--rows-per-file 1000000]
           [--methods a,a',a'',a0,a0',b,c,d,ref] [--seed 0]
Development / smoke run: python bench/bench_droid.py --steps 1000000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from subproc import run_output as run  # noqa: E402

HERE = Path(__file__).resolve()
PY = sys.executable
HORIZON = 50
QUANTILES = (0.01, 0.99)
ACTION_DIM, STATE_DIM = 7, 8
DELTA_MASK = [True] * 6 + [False]
PLAIN_DIM = 6  # the 7th action dim (gripper): no delta
STYLES = {"droid": (150, 450), "long": (3000, 9000)}
GENERATOR_VERSION = 1
MARKER = "bench_droid.json"
NAME = "droid_bench"
ACTION_NAMES = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
STATE_NAMES = ["x", "y", "z", "roll", "pitch", "yaw", "gripper", "joint_7"]
A_WARM, A0_WARM, A_BEAM = "a'", "a0'", "a''"
METHODS = ("a", A_WARM, A_BEAM, "a0", A0_WARM, "b", "c", "d", "ref")
# (a''): stage 2 on Beam, the dataset's parts spread over this many worker processes
BEAM_WORKERS = ("--stage2", "beam", "--direct_running_mode", "multi_processing", "--direct_num_workers", "2")


# --------------------------------------------------------------------------------------------
# Children: `python bench_droid.py --child NAME ARGS...`. Each imports numpy/pyarrow itself.
# --------------------------------------------------------------------------------------------

def _episode_lengths(steps: int, style: str, rng):
    """Uniform lengths in the style's range summing to exactly ``steps`` (a short remainder is
    added to the last episode, so no episode is shorter than the range)."""
    import numpy as np

    lo, hi = STYLES[style]
    n = steps // lo + 2
    lengths = rng.integers(lo, hi + 1, size=n)
    ends = np.cumsum(lengths)
    k = int(np.searchsorted(ends, steps))  # first episode that reaches ``steps``
    lengths = lengths[: k + 1].copy()
    lengths[k] -= int(ends[k] - steps)
    if len(lengths) > 1 and lengths[-1] < lo:
        lengths[-2] += lengths[-1]
        lengths = lengths[:-1]
    assert int(lengths.sum()) == steps
    return lengths


def _walk(rng, lengths, scale, dims):
    """Per-episode random walks (cumulative sums of Student-t steps, restarted at each episode)."""
    import numpy as np

    steps = rng.standard_t(3, size=(int(lengths.sum()), dims)) * scale
    total = np.cumsum(steps, axis=0)
    ends = np.cumsum(lengths)
    before = np.zeros((len(lengths), dims))
    before[1:] = total[ends[:-1] - 1]
    return total - np.repeat(before, lengths, axis=0)


def child_generate(path: str, steps: int, style: str, seed: int, rows_per_file: int) -> None:
    """Write the dataset into ``path`` (which must not exist); the marker file is written last."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(path)
    rng = np.random.default_rng(seed)
    lengths = _episode_lengths(steps, style, rng)
    # Whole episodes per file, a file closed once it holds >= rows_per_file rows (as LeRobot v3
    # starts a new file when the current one reaches data_files_size_in_mb).
    ends = np.cumsum(lengths)
    file_of = np.zeros(len(lengths), np.int64)
    current, rows = 0, 0
    for i, n in enumerate(lengths.tolist()):
        file_of[i] = current
        rows += n
        if rows >= rows_per_file:
            current, rows = current + 1, 0
    n_files = int(file_of[-1]) + 1
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    episode_rows = {k: [] for k in ("episode_index", "length", "data/chunk_index", "data/file_index",
                                    "dataset_from_index", "dataset_to_index")}
    tasks = ["pick up the object and put it in the bin"]
    for f in range(n_files):
        eps = np.flatnonzero(file_of == f)
        lens = lengths[eps]
        n = int(lens.sum())
        first_row = int(ends[eps[0]] - lengths[eps[0]])
        # Action: xyz (m), rpy (rad), gripper; each episode from a random start.
        start = np.concatenate([rng.uniform([0.3, -0.3, 0.1], [0.7, 0.3, 0.5], size=(len(eps), 3)),
                                rng.uniform(-np.pi, np.pi, size=(len(eps), 3)),
                                rng.normal(-2.0, 1.0, size=(len(eps), 1))], axis=1)
        raw = np.concatenate([_walk(rng, lens, 0.004, 3), _walk(rng, lens, 0.01, 3), _walk(rng, lens, 0.15, 1)],
                             axis=1) + np.repeat(start, lens, axis=0)
        action = raw.copy()
        action[:, 6] = 1.0 / (1.0 + np.exp(-raw[:, 6]))
        # State: the previous action (the arm lags its command) plus sensor noise, and one more joint.
        ep_start = np.repeat(np.cumsum(lens) - lens, lens)
        prev = np.arange(n) - 1
        prev[np.arange(n) == ep_start] += 1  # at an episode's first step: that step's own action
        state = np.empty((n, STATE_DIM))
        state[:, :7] = action[prev] + rng.normal(0, 0.002, size=(n, 7))
        state[:, 6] = np.clip(state[:, 6], 0.0, 1.0)
        state[:, 7] = _walk(rng, lens, 0.01, 1)[:, 0] + np.repeat(rng.uniform(-1, 1, len(eps)), lens)
        frame = np.arange(n) - ep_start
        table = pa.table({
            "action": pa.FixedSizeListArray.from_arrays(pa.array(action.astype(np.float32).ravel()), ACTION_DIM),
            "observation.state": pa.FixedSizeListArray.from_arrays(pa.array(state.astype(np.float32).ravel()),
                                                                   STATE_DIM),
            "timestamp": pa.array((frame / 15.0).astype(np.float32)),
            "frame_index": pa.array(frame.astype(np.int64)),
            "episode_index": pa.array(np.repeat(eps, lens).astype(np.int64)),
            "index": pa.array(np.arange(first_row, first_row + n, dtype=np.int64)),
            "task_index": pa.array(np.zeros(n, np.int64)),
        })
        target = root / "data" / f"chunk-{f // 1000:03d}" / f"file-{f % 1000:03d}.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, target)
        episode_rows["episode_index"] += eps.tolist()
        episode_rows["length"] += lens.tolist()
        episode_rows["data/chunk_index"] += [f // 1000] * len(eps)
        episode_rows["data/file_index"] += [f % 1000] * len(eps)
        episode_rows["dataset_from_index"] += (ends[eps] - lens).tolist()
        episode_rows["dataset_to_index"] += ends[eps].tolist()
    n_eps = len(lengths)
    meta = {k: pa.array(v, pa.int64()) for k, v in episode_rows.items()}
    meta["tasks"] = pa.array([tasks] * n_eps, pa.list_(pa.string()))
    meta["meta/episodes/chunk_index"] = pa.array(np.zeros(n_eps, np.int64))
    meta["meta/episodes/file_index"] = pa.array(np.zeros(n_eps, np.int64))
    pq.write_table(pa.table(meta), root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    pq.write_table(pa.table({"task_index": pa.array([0], pa.int64()), "task": pa.array(tasks)}),
                   root / "meta" / "tasks.parquet")
    scalar = lambda dtype: {"dtype": dtype, "shape": [1], "names": None}  # noqa: E731
    info = {
        "codebase_version": "v3.0", "robot_type": "franka", "total_episodes": n_eps, "total_frames": steps,
        "total_tasks": 1, "chunks_size": 1000, "data_files_size_in_mb": 100, "video_files_size_in_mb": 500,
        "fps": 15, "splits": {"train": f"0:{n_eps}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet", "video_path": None,
        "features": {
            "action": {"dtype": "float32", "shape": [ACTION_DIM], "names": ACTION_NAMES},
            "observation.state": {"dtype": "float32", "shape": [STATE_DIM], "names": STATE_NAMES},
            "timestamp": scalar("float32"), "frame_index": scalar("int64"), "episode_index": scalar("int64"),
            "index": scalar("int64"), "task_index": scalar("int64"),
        },
    }
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    marker = _marker(steps, style, seed, rows_per_file)
    marker.update(episodes=n_eps, files=n_files, min_length=int(lengths.min()), max_length=int(lengths.max()))
    (root / MARKER).write_text(json.dumps(marker, indent=1))


def _data_files(path: str) -> list[Path]:
    return sorted((Path(path) / "data").rglob("*.parquet"), key=lambda f: f.relative_to(path).as_posix())


def _matrix(table, name):
    return table.column(name).combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1)


def child_octo(path: str) -> None:
    """Octo's dataset statistics (octo/data/utils/data_utils.py get_dataset_statistics, with
    OpenVLA's q01/q99): every action and state in RAM, numpy over all steps, global only."""
    import numpy as np
    import pyarrow.parquet as pq

    actions, states, n_eps = [], [], 0
    for file in _data_files(path):
        table = pq.read_table(file, columns=["action", "observation.state", "episode_index"])
        actions.append(_matrix(table, "action"))
        states.append(_matrix(table, "observation.state"))
        n_eps += len(np.unique(table.column("episode_index").to_numpy()))
    a, s = np.concatenate(actions), np.concatenate(states)
    del actions, states
    out = {k: {f: getattr(np, f)(x, axis=0) for f in ("mean", "std", "max", "min")} for k, x in (("a", a), ("s", s))}
    out["a"]["q01"], out["a"]["q99"] = (np.quantile(a, q, axis=0) for q in QUANTILES)
    out["s"]["q01"], out["s"]["q99"] = (np.quantile(s, q, axis=0) for q in QUANTILES)
    print(json.dumps({"steps": len(a), "episodes": n_eps}))


def child_naive(path: str, horizon: int, max_steps: int) -> None:
    """Seed 000's method on the largest whole-episode prefix of at most ``max_steps`` steps: every
    chunk a[t:t+H] (padded by repeating the last action) in one float64 [N, H, D] array, numpy per
    position. Padded entries are included, as in that method. Also reports the seconds and the
    peak RSS growth after its imports (the part that grows with the data, for extrapolating)."""
    import resource

    import numpy as np
    import pyarrow.parquet as pq

    t0, base = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    episodes, total, full = [], 0, True
    for file in _data_files(path):
        table = pq.read_table(file, columns=["action", "episode_index"])
        a, idx = _matrix(table, "action"), table.column("episode_index").to_numpy()
        cut = np.flatnonzero(np.diff(idx)) + 1
        for ep in np.split(a, cut):
            if total + len(ep) > max_steps:
                full = False
                break
            episodes.append(ep)
            total += len(ep)
        if not full:
            break
    n, d = total, episodes[0].shape[1]
    chunks = np.empty((n, horizon, d), np.float64)
    row = 0
    for ep in episodes:
        t_len = len(ep)
        take = np.minimum(np.arange(t_len)[:, None] + np.arange(horizon)[None, :], t_len - 1)
        chunks[row:row + t_len] = ep[take]
        row += t_len
    out = {f: np.zeros((horizon, d)) for f in ("mean", "std", "min", "max", "q01", "q99")}
    for t in range(horizon):
        col = chunks[:, t]
        out["mean"][t], out["std"][t] = col.mean(0), col.std(0)
        out["min"][t], out["max"][t] = col.min(0), col.max(0)
        out["q01"][t], out["q99"][t] = np.quantile(col, QUANTILES, axis=0)
    print(json.dumps({"steps": n, "episodes": len(episodes), "full": full, "bytes": chunks.nbytes,
                      "work_s": time.perf_counter() - t0, "base_mib": base}))


def child_check(path: str, horizon: int, *artifacts: str) -> None:
    """stepnorm's per-timestep q01/q99/count at positions 0 and H-1 of the plain dim, against the
    exact order statistics (numpy inverted_cdf) of the valid entries. One column of the action is
    held (4 bytes/step) plus the in-episode positions (4 bytes/step)."""
    import numpy as np
    import pyarrow.parquet as pq

    cols, pos = [], []
    for file in _data_files(path):
        table = pq.read_table(file, columns=["action", "episode_index"])
        flat = table.column("action").combine_chunks().flatten().to_numpy()
        cols.append(flat[PLAIN_DIM::ACTION_DIM].copy())
        idx = table.column("episode_index").to_numpy()
        starts = np.concatenate(([0], np.flatnonzero(np.diff(idx)) + 1))
        lens = np.diff(np.append(starts, len(idx)))
        pos.append((np.arange(len(idx)) - np.repeat(starts, lens)).astype(np.int32))
        del table, flat
    col, pos = np.concatenate(cols), np.concatenate(pos)
    ref = {}
    for k in (0, horizon - 1):
        values = col[pos >= k].astype(np.float64)
        ref[k] = {"count": len(values), **{f"q{round(q * 100):02d}": float(np.quantile(values, q, method="inverted_cdf"))
                                           for q in QUANTILES}}
    checked, bad, details = 0, 0, []
    for art in artifacts:
        doc = json.loads(Path(art).read_text())
        blocks = {f"datasets.{n}": b for n, b in doc["datasets"].items()} | {"combined": doc["combined"]}
        for label, block in blocks.items():
            pt = block["action"]["per_timestep"]
            for k, want in ref.items():
                for field, value in want.items():
                    got = pt[field][k] if field == "count" else pt[field][k][PLAIN_DIM]
                    checked += 1
                    if got != value:
                        bad += 1
                        details.append(f"{Path(art).parent.name} {label} {field}[{k}][{PLAIN_DIM}]: stepnorm {got!r}, "
                                       f"numpy {value!r}")
    print(json.dumps({"checked": checked, "mismatches": bad, "details": details[:10],
                      "reference": {str(k): v for k, v in ref.items()}}))


def child_ref() -> None:
    import numpy  # noqa: F401
    import pyarrow.parquet  # noqa: F401


def child_read_bytes(path: str) -> None:
    n = 0
    for file in _data_files(path):
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 24):
                n += len(chunk)
    print(json.dumps({"bytes": n}))


CHILDREN = {"generate": child_generate, "octo": child_octo, "naive": child_naive, "check": child_check,
            "ref": child_ref, "read-bytes": child_read_bytes}


# --------------------------------------------------------------------------------------------
# Parent: no numpy, no data in RAM.
# --------------------------------------------------------------------------------------------

def child(name: str, *args) -> tuple[float, float, str]:
    return run([PY, str(HERE), "--child", name, *map(str, args)])


def _marker(steps: int, style: str, seed: int, rows_per_file: int) -> dict:
    return {"generator": GENERATOR_VERSION, "steps": steps, "episodes_style": style, "seed": seed,
            "rows_per_file": rows_per_file, "action_dim": ACTION_DIM, "state_dim": STATE_DIM}


def ensure_dataset(data: Path, steps: int, style: str, seed: int, rows_per_file: int) -> tuple[Path, dict]:
    """The dataset for these parameters under ``data``: reused when its marker matches, else
    generated (in a child process, into a hidden directory renamed into place when complete)."""
    path = data / f"droid_{steps}_{style}_seed{seed}_rows{rows_per_file}"
    want = _marker(steps, style, seed, rows_per_file)
    marker = path / MARKER
    if marker.is_file():
        have = json.loads(marker.read_text())
        if {k: have.get(k) for k in want} == want:
            return path, have
        shutil.rmtree(path)  # ours (it has our marker), from another generator version
    elif path.exists():
        raise SystemExit(f"{path} exists but is not a bench_droid dataset (no {MARKER}); remove it or use --data")
    data.mkdir(parents=True, exist_ok=True)
    for stale in data.glob(f".{path.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    partial = data / f".{path.name}.partial-{os.getpid()}"
    print(f"generating {path} ({steps} steps, {style} episodes) ...", flush=True)
    wall, rss, _ = child("generate", partial, steps, style, seed, rows_per_file)
    partial.rename(path)
    print(f"  generated in {wall:.1f}s (peak {rss:.0f} MiB)", flush=True)
    return path, json.loads(marker.read_text())


def write_config(path: Path, dataset: Path, delta: bool) -> Path:
    lines = [f"horizon: {HORIZON}", f"quantiles: {list(QUANTILES)}", "weighting: samples"]
    if delta:
        lines.append(f"delta_mask: {json.dumps(DELTA_MASK)}")
    lines += ["normalization:", f"  action: {{mode: q01_q99, mask: {json.dumps(DELTA_MASK)}}}",
              "  state: {mode: mean_std}", "datasets:", f"  - name: {NAME}", "    format: lerobot",
              f"    path: {json.dumps(str(dataset))}", "    domain: real", "    action_key: action",
              "    state_key: observation.state", "    gripper_dims: [6]", "    position_dims: [0, 1, 2]"]
    path.write_text("\n".join(lines) + "\n")
    return path


READ_LINE = re.compile(r"reading ([0-9.]+)s, then ([0-9.]+)s to the job's end")


def stepnorm_stats(cfg: Path, out: Path, cache: Path, force: bool, extra: tuple[str, ...] = ()) -> dict:
    wall, rss, stdout = run([PY, "-m", "stepnorm.cli", "stats", str(cfg), "--out", str(out), "--cache", str(cache),
                             *(["--force"] if force else []), *extra])
    inner = re.search(r"stats artifact: .* \(([0-9.]+)s\)", stdout)
    read = READ_LINE.search(stdout)
    status = re.search(rf"{NAME}\s+(reused|computed)", stdout)
    return {"wall": wall, "rss": rss, "inner": float(inner.group(1)) if inner else float("nan"),
            "reading": float(read.group(1)) if read else None, "status": status.group(1) if status else "?",
            "artifact": out / "stats.json"}


def _artifact_digest(out: Path) -> dict[str, str]:
    """Every file of an artifact by relative path -> sha256 (stats.json without ``created``)."""
    digests = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.name == "stats.json":
            doc = json.loads(data)
            doc.pop("created", None)
            data = json.dumps(doc, sort_keys=True).encode()
        digests[str(path.relative_to(out))] = hashlib.sha256(data).hexdigest()
    return digests


def _mem_total() -> int:
    """This machine's RAM in bytes (/proc/meminfo)."""
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def warm(path: Path) -> int:
    """Read every data file once, untimed (16 MiB buffer: the parent stays small)."""
    n = 0
    for file in _data_files(str(path)):
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 24):
                n += len(chunk)
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.add_argument("--data", default="/tmp/bench_droid", help="directory holding the generated dataset(s)")
    parser.add_argument("--steps", type=int, default=30_000_000)
    parser.add_argument("--episodes-style", choices=sorted(STYLES), default="droid",
                        help="episode lengths: droid = uniform 150-450 steps, long = uniform 3000-9000")
    parser.add_argument("--rows-per-file", type=int, default=1_000_000,
                        help="rows after which a data file is closed (whole episodes per file; ~66 MB at 1M rows)")
    parser.add_argument("--naive-max-steps", type=int, default=2_000_000,
                        help="(c) runs on the largest whole-episode prefix of at most this many steps "
                             "(its float64 chunks take 2800 bytes per step)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.child is not None:
        name, *rest = args.child
        fn = CHILDREN[name]
        conv = {"generate": (str, int, str, int, int), "naive": (str, int, int), "check": (str, int)}.get(name, ())
        rest = [c(v) for c, v in zip(conv, rest)] + rest[len(conv):]
        fn(*rest)
        return
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {','.join(METHODS)}")
    if (A_WARM in methods or A_BEAM in methods) and "a" not in methods or A0_WARM in methods and "a0" not in methods:
        parser.error("a' and a'' need a, and a0' needs a0 (the warm run reuses their cache)")

    dataset, info = ensure_dataset(Path(args.data), args.steps, args.episodes_style, args.seed, args.rows_per_file)
    size = warm(dataset)
    steps, episodes = info["steps"], info["episodes"]
    print(f"\n== {dataset}: LeRobot v3.0, {steps} steps, {episodes} episodes "
          f"({info['min_length']}-{info['max_length']} steps), {info['files']} data files, {size / 1e6:.0f} MB; "
          f"H={HORIZON}, action 7-D, state 8-D; {os.cpu_count()} cores\n", flush=True)

    work = Path(tempfile.mkdtemp(prefix="stepnorm-bench-droid-"))
    rows: dict[str, dict] = {}  # label -> {wall, rss, steps, note}
    sn: dict[str, dict] = {}
    try:
        cfg_delta = write_config(work / "delta.yaml", dataset, True)
        cfg_plain = write_config(work / "plain.yaml", dataset, False)
        if "ref" in methods:
            wall, rss, _ = child("ref")
            rows["(ref) python + import numpy, pyarrow"] = {"wall": wall, "rss": rss, "steps": None}
        if "d" in methods:
            wall, rss, _ = child("read-bytes", dataset)
            rows["(d) read the data files' bytes"] = {"wall": wall, "rss": rss, "steps": steps}
        plan = [("a", cfg_delta, "cache-delta", True, "(a) stepnorm stats, H=50, delta_mask 6 dims, every file read"),
                (A_WARM, cfg_delta, "cache-delta", False, "(a') same, values cache warm (stage 2 only)"),
                (A_BEAM, cfg_delta, "cache-delta", False, "(a'') as (a'), --stage2 beam on 2 worker processes"),
                ("a0", cfg_plain, "cache-plain", True, "(a0) stepnorm stats, H=50, no delta_mask, every file read"),
                (A0_WARM, cfg_plain, "cache-plain", False, "(a0') same, values cache warm (stage 2 only)")]
        for key, cfg, cache, force, label in plan:
            if key in methods:
                print(f"running {label} ...", flush=True)
                r = sn[key] = stepnorm_stats(cfg, work / f"out-{key.replace(A_WARM[-1], '-warm')}", work / cache, force,
                                             BEAM_WORKERS if key == A_BEAM else ())
                expect = "computed" if force else "reused"
                if r["status"] == "?":
                    print(f"  warning: no '{NAME} computed|reused' line in the CLI's output; cannot confirm "
                          f"that the run {'read every file' if force else 'read no data file'}", flush=True)
                elif r["status"] != expect:
                    raise SystemExit(f"{label}: the CLI says the dataset was {r['status']}, expected {expect}")
                rows[label] = {"wall": r["wall"], "rss": r["rss"], "steps": steps}
        if "b" in methods:
            print("running (b) octo ...", flush=True)
            wall, rss, out = child("octo", dataset)
            got = json.loads(out.strip().splitlines()[-1])
            rows["(b) octo: actions+states in RAM, numpy (global only)"] = {"wall": wall, "rss": rss,
                                                                           "steps": got["steps"]}
        naive = None
        if "c" in methods:
            print(f"running (c) naive per-timestep (at most {args.naive_max_steps} steps) ...", flush=True)
            wall, rss, out = child("naive", dataset, HORIZON, args.naive_max_steps)
            naive = json.loads(out.strip().splitlines()[-1])
            naive.update(wall=wall, rss=rss)
            if naive["full"]:
                rows["(c) naive per-timestep: [N,H,D] float64 chunks, numpy"] = {
                    "wall": wall, "rss": rss, "steps": naive["steps"]}
            else:
                # Linear in steps: the part after the imports (reading, chunks, numpy) scales with the
                # data; the interpreter start-up and imports, and the RSS they take, do not.
                scale = steps / naive["steps"]
                naive["wall_full"] = wall - naive["work_s"] + naive["work_s"] * scale
                naive["rss_full"] = naive["base_mib"] + (rss - naive["base_mib"]) * scale
                rows[f"(c) naive per-timestep, MEASURED on a {naive['steps'] / 1e6:.2f}M-step prefix"] = {
                    "wall": wall, "rss": rss, "steps": naive["steps"], "partial": True}
                rows[f"(c) naive per-timestep, EXTRAPOLATED x{scale:.1f} (linear, NOT run)"] = {
                    "wall": naive["wall_full"], "rss": naive["rss_full"], "steps": steps, "extrapolated": True}
        same_bytes = None
        if A_WARM in sn and A_BEAM in sn:
            same_bytes = _artifact_digest(sn[A_WARM]["artifact"].parent) == _artifact_digest(sn[A_BEAM]["artifact"].parent)
        check = None
        artifacts = [str(sn[k]["artifact"]) for k in ("a", "a0") if k in sn]
        if artifacts:
            print("checking q01/q99 against numpy inverted_cdf ...", flush=True)
            _, check_rss, out = child("check", dataset, HORIZON, *artifacts)
            check = json.loads(out.strip().splitlines()[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    base = sn["a"]["wall"] if "a" in sn else None
    print(f"\n{'method':66s} {'steps':>10s} {'wall s':>9s} {'vs (a)':>8s} {'peak MiB':>10s}")
    for label, r in rows.items():
        vs = "-" if base is None or r.get("partial") or r["steps"] is None else f"{r['wall'] / base:7.2f}x"
        n = "-" if r["steps"] is None else str(r["steps"])
        mark = "*" if r.get("extrapolated") else " "
        print(f"{label:66s} {n:>10s} {r['wall']:8.1f}{mark} {vs:>8s} {r['rss']:9.0f}{mark}")
    if naive is not None and not naive["full"]:
        full_bytes = steps * HORIZON * ACTION_DIM * 8
        fits = "which would fit in" if full_bytes < _mem_total() else "more than"
        print(f"* extrapolated, not measured: (c) ran on the first {naive['steps']} steps ({naive['episodes']} episodes, "
              f"chunks {naive['bytes'] / 2**30:.2f} GiB; {naive['wall']:.1f}s, {naive['rss']:.0f} MiB), scaled linearly "
              f"to {steps} steps (x{steps / naive['steps']:.2f} on the {naive['work_s']:.1f}s and "
              f"{naive['rss'] - naive['base_mib']:.0f} MiB after its imports). At full size its chunks alone take "
              f"{full_bytes / 2**30:.1f} GiB, {fits} this machine's {_mem_total() / 2**30:.0f} GiB of RAM.")

    if sn:
        print("\nstepnorm, in-process seconds (as the CLI reports them; wall includes Python start-up and imports):")
    for key in ("a", A_WARM, A_BEAM, "a0", A0_WARM):
        if key in sn:
            r = sn[key]
            read = f", of it reading into the values cache {r['reading']:.1f}s" if r["reading"] is not None else ""
            print(f"  ({key}) {r['inner']:.1f}s in-process, dataset {r['status']}{read}")

    print()
    wall = {k: v["wall"] for k, v in sn.items()}
    inner = {k: v["inner"] for k, v in sn.items()}
    rss = {k: v["rss"] for k, v in sn.items()}
    for text, x, y in [("delta / no-delta, full runs", "a", "a0"), ("delta / no-delta, stage 2 only", A_WARM, A0_WARM),
                       ("warm cache vs full run", A_WARM, "a"), ("warm cache vs full run", A0_WARM, "a0"),
                       ("stage 2 on Beam vs in-process", A_BEAM, A_WARM)]:
        if x in wall and y in wall:
            print(f"{text + ':':34s} {'(' + x + ')/(' + y + ')':12s} = {wall[x] / wall[y]:6.2f}  "
                  f"(in-process {inner[x] / inner[y]:.2f}; peak memory {rss[x] / rss[y]:.2f}x)")
    octo = next((r for k, r in rows.items() if k.startswith("(b)")), None)
    for key in ("a", "a0"):
        if octo is not None and key in wall:
            print(f"{'stepnorm vs Octo in-RAM:':34s} {'(' + key + ')/(b)':12s} = {wall[key] / octo['wall']:6.2f}  "
                  f"(peak memory {rss[key] / octo['rss']:.2f}x)")
    for key in ("a", "a0"):
        if naive is not None and key in wall:
            label = "measured at full size" if naive["full"] else "EXTRAPOLATED"
            n_wall, n_rss = (naive["wall"], naive["rss"]) if naive["full"] else (naive["wall_full"], naive["rss_full"])
            print(f"{'naive per-timestep vs stepnorm:':34s} {'(c)/(' + key + ')':12s} = {n_wall / wall[key]:6.2f}  "
                  f"({label}; peak memory {n_rss / rss[key]:.1f}x)")
    if same_bytes is not None:
        print(f"(a'') artifact (stats.json but 'created', blobs) the same bytes as (a'): {same_bytes}")
    if check is not None:
        print(f"\nper-timestep q01/q99/count of action dim {PLAIN_DIM} (not a delta dim) at positions 0 and {HORIZON - 1}, "
              f"artifacts {', '.join('(' + k + ')' for k in ('a', 'a0') if k in sn)}, dataset + combined blocks, "
              f"vs numpy inverted_cdf of the valid entries: {check['mismatches']} mismatches of {check['checked']}")
        for line in check["details"]:
            print(f"  {line}")
    import resource

    print(f"\nthis parent process's peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB "
          f"(what every child's ru_maxrss starts from)")


if __name__ == "__main__":
    main()
