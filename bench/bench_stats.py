"""Benchmark of `stepnorm stats` against its peers on an OXE-like RLDS dataset (not a test).

Every method runs in its own subprocess (wall time and that process's peak RSS), in one run:
  (a) stepnorm        `stepnorm stats` with H=50 per-timestep statistics (local FnApiRunner, 1 worker)
  (b) octo            Octo's method: TFDS with images left encoded (SkipDecoding), all actions and
                      states in RAM, numpy mean/std/min/max/quantile; global statistics only
  (c) naive-per-t     seed 000's method: stack every chunk [N, H, D] (padded by repeating the last
                      action), numpy per timestep
  (d) read-bytes      read every shard's bytes (the I/O floor)
and the scenario checks of issues 3 and 15: peak memory when the dataset doubles, the incremental
second run after adding a dataset of ~5% of the mixture, reruns after changing H, the delta_mask
or a transform's arguments (served from the values cache), and 2 workers vs 1; and the runners
(issue 12): the default FnApiRunner vs a local Dask cluster (scheduler + 1 and 2 worker
processes), with how the tasks were spread and where the time goes (start-up, read, merge, shutdown).

Usage: python bench/bench_stats.py [--data /tmp/bench] [--scale-gb 20] [--only-runners | --only-reruns]
Datasets come from bench/oxe_like.py (generated on first use: 1.3 GB, 2.6 GB and 0.06 GB, and with
--scale-gb a dataset of that size plus a 5% addition). Start-up costs (Python and Beam imports,
Beam's worker processes) are seconds, so the incremental and worker targets are also measured at
--scale-gb, where they are a smaller share; there the incremental run is also measured with a cold
page cache (data read from disk; needs root). Results and their reading: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from subproc import run_output  # noqa: E402

HERE = Path(__file__).resolve().parent
PY = sys.executable
HORIZON = 50

OCTO = textwrap.dedent("""
    import sys, numpy as np, tensorflow_datasets as tfds
    b = tfds.builder_from_directory(sys.argv[1])
    ds = b.as_dataset("train", decoders={"steps": tfds.decode.SkipDecoding()})
    actions, states = [], []
    for ep in ds.as_numpy_iterator():
        actions.append(ep["steps"]["action"]); states.append(ep["steps"]["observation"]["state"])
    a, s = np.concatenate(actions), np.concatenate(states)
    out = {k: [getattr(np, f)(x, axis=0) for f in ("mean", "std", "max", "min")] for k, x in (("a", a), ("s", s))}
    q = [np.quantile(a, q, axis=0) for q in (0.01, 0.99)]
    print(len(actions), len(a))
""")

NAIVE = textwrap.dedent("""
    import sys, numpy as np, tensorflow_datasets as tfds
    H = int(sys.argv[2])
    b = tfds.builder_from_directory(sys.argv[1])
    ds = b.as_dataset("train", decoders={"steps": tfds.decode.SkipDecoding()})
    chunks = []
    for ep in ds.as_numpy_iterator():
        a = ep["steps"]["action"]
        idx = np.minimum(np.arange(len(a))[:, None] + np.arange(H)[None, :], len(a) - 1)
        chunks.append(a[idx])
    c = np.concatenate(chunks).astype(np.float64)
    mean = np.zeros((H, c.shape[-1])); std = np.zeros_like(mean); q = np.zeros((2, H, c.shape[-1]))
    for t in range(H):
        mean[t] = c[:, t].mean(0); std[t] = c[:, t].std(0); q[:, t] = np.quantile(c[:, t], [0.01, 0.99], axis=0)
    print(len(chunks), c.shape)
""")

READ_BYTES = textwrap.dedent("""
    import sys, glob
    n = 0
    for f in sorted(glob.glob(sys.argv[1] + "/*.tfrecord*")):
        with open(f, "rb") as h:
            while chunk := h.read(1 << 24):
                n += len(chunk)
    print(n)
""")


def run(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one subprocess."""
    wall, rss, _ = run_output(cmd)
    return wall, rss


def config(paths: dict[str, Path], out: Path) -> Path:
    cfg = {
        "horizon": HORIZON,
        "normalization": {"action": {"mode": "q01_q99", "mask": [True] * 6 + [False]}},
        "datasets": [{"name": n, "format": "rlds", "path": str(p), "action_key": "action",
                      "state_key": "observation/state", "image_keys": ["observation/image", "observation/wrist_image"],
                      "gripper_dims": [6], "position_dims": [0, 1, 2]} for n, p in paths.items()],
    }
    out.write_text(yaml.safe_dump(cfg))
    return out


def stepnorm_stats(cfg: Path, out: Path, *extra: str) -> tuple[float, float]:
    """Wall seconds (whole process) and peak RSS; prints the in-process seconds the CLI reports.

    Every run uses the benchmark's own values cache (``CACHE``); ``--force`` reads every file."""
    wall, rss, stdout = run_output([PY, "-m", "stepnorm.cli", "stats", str(cfg), "--out", str(out),
                                    "--cache", str(CACHE[0]), *extra])
    inner = re.search(r"\(([0-9.]+)s\)", stdout)
    IN_PROCESS[str(out)] = float(inner.group(1)) if inner else float("nan")
    return wall, rss


IN_PROCESS: dict[str, float] = {}
CACHE: list[Path] = []


def warm(paths: list[Path]) -> None:
    """Read every shard once, untimed, so each method starts from the same (warm) page cache."""
    for path in paths:
        for shard in sorted(path.glob("*.tfrecord*")):
            with open(shard, "rb") as handle:
                while handle.read(1 << 24):
                    pass


def table(label: str, big: Path, size: float, work: Path) -> tuple[Path, dict[str, tuple[float, float]]]:
    """(a)-(d) on one dataset; prints the table and the two ratio targets.

    (c) runs last: at the scale size its stacked chunks take GBs of RAM and push dataset pages out
    of the page cache, which would slow whichever method ran after it.
    """
    info = json.loads((big / "dataset_info.json").read_text())
    episodes = sum(int(x) for s in info["splits"] for x in s["shardLengths"])
    cfg = config({big.parent.name: big}, work / f"{label}.yaml")
    names = ["(a) stepnorm stats, H=50 per-timestep", "(b) octo: TFDS, actions in RAM, numpy (global only)",
             "(c) naive per-timestep: stack chunks, numpy", "(d) read the shards' bytes"]
    rows = {}
    rows[names[3]] = run([PY, "-c", READ_BYTES, str(big)])
    rows[names[0]] = stepnorm_stats(cfg, work / f"a-{label}", "--force")
    rows[names[1]] = run([PY, "-c", OCTO, str(big)])
    rows[names[2]] = run([PY, "-c", NAIVE, str(big), str(HORIZON)])
    rows = {name: rows[name] for name in names}
    print(f"\n== {label}: {big} ({size / 1e9:.2f} GB, {len(list(big.glob('*.tfrecord*')))} shards, "
          f"{episodes} episodes)\n")
    base = rows[names[0]][0]
    print(f"{'method':56s} {'wall s':>8s} {'vs (a)':>8s} {'peak MiB':>9s}")
    for name, (wall, rss) in rows.items():
        print(f"{name:56s} {wall:8.1f} {wall / base:7.2f}x {rss:9.0f}")
    a, b, c = (rows[k][0] for k in names[:3])
    print(f"\n(a)/(b) = {a / b:.2f}   target <= 1.5 (while computing {HORIZON}x more statistics)")
    print(f"(c)/(a) = {c / a:.2f}   target >= 5")
    return cfg, rows


def drop_page_cache() -> bool:
    """Empty the page cache (root only), so the next run reads from disk as on a fresh machine."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as handle:
            handle.write("3\n")
        return True
    except OSError:
        return False


def incremental(label: str, big: Path, small: Path, size: dict[Path, float], work: Path, cold: bool = False) -> None:
    """A full run of big+small vs a second run that adds small to a cached big.

    ``cold``: the page cache is emptied before each timed run (data read from disk; root only).
    """
    mix = config({big.parent.name: big, small.parent.name: small}, work / f"mix-{label}.yaml")
    one = config({big.parent.name: big}, work / f"one-{label}.yaml")
    if cold and not drop_page_cache():
        print(f"incremental ({label}, cold): skipped, emptying the page cache needs root")
        return
    full, _ = stepnorm_stats(mix, work / f"full-{label}", "--force")
    stepnorm_stats(one, work / f"inc-{label}", "--force")
    if cold:
        drop_page_cache()
    inc, _ = stepnorm_stats(mix, work / f"inc-{label}")
    share = size[small] / (size[big] + size[small])
    full_in, inc_in = IN_PROCESS[str(work / f"full-{label}")], IN_PROCESS[str(work / f"inc-{label}")]
    print(f"incremental ({label}{', cold page cache' if cold else ''}): full run {full:.1f}s ({full_in:.1f}s "
          f"in-process), after adding a {100 * share:.1f}% dataset {inc:.1f}s ({inc_in:.1f}s in-process): "
          f"{100 * inc / full:.0f}% of full ({100 * inc_in / full_in:.0f}% in-process)   target <= 15%")


def reruns(label: str, big: Path, work: Path) -> None:
    """A full run (every file read) vs reruns that change only what is computed from the values
    cache: H 50 -> 16, a 6-dim delta_mask, a transform's arguments. Target: each <= 10% of full."""
    base = yaml.safe_load(config({big.parent.name: big}, work / f"re-{label}.yaml").read_text())
    full, _ = stepnorm_stats(work / f"re-{label}.yaml", work / f"re-{label}", "--force")
    variants = {
        "H 50 -> 16": dict(base, horizon=16),
        "delta_mask on 6 dims": dict(base, delta_mask=[True] * 6 + [False]),
        "a transform's arguments": dict(base, datasets=[dict(base["datasets"][0], transforms=[
            {"name": "clip", "args": {"key": "action", "dims": [0], "low": -0.5, "high": 0.5}}])]),
    }
    for name, cfg in variants.items():
        path = work / f"re-{label}-{len(name)}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        wall, rss = stepnorm_stats(path, work / f"re-{label}")
        print(f"rerun ({label}) after changing {name}: {wall:.1f}s vs full run {full:.1f}s = "
              f"{100 * wall / full:.0f}% (peak {rss:.0f} MiB)   target <= 10%")


def workers(label: str, cfg: Path, work: Path) -> None:
    """1 worker (the default in-process runner, and multi_processing with 1 worker) vs 2 workers."""
    mp = ("--direct_running_mode", "multi_processing", "--direct_num_workers")
    one, _ = stepnorm_stats(cfg, work / "w1", "--force")
    mp1, _ = stepnorm_stats(cfg, work / "w1mp", "--force", *mp, "1")
    two, _ = stepnorm_stats(cfg, work / "w2", "--force", *mp, "2")
    print(f"workers ({label}): 1 in-process {one:.1f}s, 1 multi_processing {mp1:.1f}s, 2 multi_processing "
          f"{two:.1f}s: speed-up {one / two:.2f}x over the default run, {mp1 / two:.2f}x over 1 multi_processing "
          f"worker   target >= 1.6x ({os.cpu_count()} cores)")


@contextmanager
def dask_cluster(n_workers: int, log_dir: Path):
    """A local Dask cluster (scheduler + ``n_workers`` single-thread worker processes); yields
    (address, seconds it took to start). Every process is ended on exit."""
    from distributed import Client

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address, procs, t0 = f"tcp://127.0.0.1:{port}", [], time.perf_counter()
    try:
        procs.append(subprocess.Popen([PY, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port",
                                       str(port), "--no-dashboard"], stdout=subprocess.DEVNULL,
                                      stderr=open(log_dir / "scheduler.log", "wb"), start_new_session=True))
        for i in range(n_workers):
            procs.append(subprocess.Popen([PY, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                                           "--no-nanny", "--no-dashboard", "--local-directory", str(log_dir / f"w{i}")],
                                          stdout=subprocess.DEVNULL, stderr=open(log_dir / f"worker{i}.log", "wb"),
                                          start_new_session=True))
        with Client(address, timeout=120) as client:
            client.wait_for_workers(n_workers, timeout=120)
        yield address, time.perf_counter() - t0
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


READ_LINE = re.compile(r"read (\d+) tasks in (\d+) worker processes \((.*)\); job start ([0-9.]+)s, reading "
                       r"([0-9.]+)s, then ([0-9.]+)s to the job's end")


def phased_stats(cfg: Path, out: Path, *extra: str) -> dict:
    """One `stepnorm stats` subprocess, split into start-up, read, merge and shutdown.

    From the times its output lines arrive and the phases its read line reports: start-up is
    process start to the first read (interpreter, imports, config, planning, the runner's job
    start), read is first read started to last read done, merge is from there to the artifact
    written (combining, staging, the launcher's mixture and artifact), shutdown is from there to
    the process's exit (closing the runner's client, interpreter exit).
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen([PY, "-m", "stepnorm.cli", "stats", str(cfg), "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    read_at = artifact_at = None
    found = None
    for line in proc.stdout:
        now, text = time.perf_counter() - t0, line.decode(errors="replace")
        if READ_LINE.search(text):
            found, read_at = READ_LINE.search(text), now
        elif text.startswith("stats artifact:"):
            artifact_at = now
    err = proc.stderr.read().decode(errors="replace")
    if proc.wait() != 0 or found is None or artifact_at is None:
        raise SystemExit(f"failed: stepnorm stats {cfg} {' '.join(extra)}\n{err[-3000:]}")
    wall = time.perf_counter() - t0
    reading, after = float(found.group(5)), float(found.group(6))
    return {"wall": wall, "startup": read_at - reading - after, "read": reading,
            "merge": after + (artifact_at - read_at), "shutdown": wall - artifact_at,
            "spread": f"{found.group(1)} tasks / {found.group(2)} processes ({found.group(3)})"}


def runners(label: str, cfg: Path, work: Path) -> None:
    """FnApiRunner (the default) vs a local Dask cluster with 1 and 2 workers, on one dataset."""
    rows = {"FnApiRunner (default, in-process)": phased_stats(cfg, work / "r-fn", "--force")}
    started = {}
    for n in (1, 2):
        with dask_cluster(n, Path(tempfile.mkdtemp(prefix="dask-", dir=work))) as (address, seconds):
            started[n] = seconds
            rows[f"Dask, {n} worker{'s' if n > 1 else ''}"] = phased_stats(
                cfg, work / f"r-dask{n}", "--force", "--runner", "DaskRunner", "--dask_client_address", address)
    base = rows["FnApiRunner (default, in-process)"]["wall"]
    print(f"\n== runners ({label}; Dask cluster start-up, not counted: "
          f"{', '.join(f'{n} worker(s) {s:.1f}s' for n, s in started.items())})\n")
    phases = ("startup", "read", "merge", "shutdown")
    print(f"{'runner':34s} {'wall s':>7s} {'vs default':>10s}" + "".join(f"{p:>14s}" for p in phases)
          + "   tasks spread")
    for name, r in rows.items():
        shares = "".join(f"{r[k]:7.1f}s {100 * r[k] / r['wall']:4.0f}%" for k in phases)
        print(f"{name:34s} {r['wall']:7.1f} {r['wall'] / base:9.2f}x{shares}   {r['spread']}")
    one, two = rows["Dask, 1 worker"], rows["Dask, 2 workers"]
    print(f"\nDask 2 workers vs 1: wall {one['wall'] / two['wall']:.2f}x faster, read phase "
          f"{one['read'] / max(two['read'], 1e-9):.2f}x faster; Dask 2 workers vs default: "
          f"{base / two['wall']:.2f}x ({os.cpu_count()} cores)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="/tmp/bench")
    parser.add_argument("--scale-gb", type=float, default=0.0,
                        help="also measure on a dataset of about this many GB (plus a 5%% addition), where fixed "
                             "start-up costs matter less; it must fit in the page cache to measure the CPU side")
    parser.add_argument("--only-runners", action="store_true",
                        help="only the runner comparison (default runner vs a local Dask cluster with 1 and 2 "
                             "workers), at --scale-gb if given, else on the 1.3 GB set")
    parser.add_argument("--only-reruns", action="store_true",
                        help="only the issue-15 checks: the (a)-(d) table and the reruns after changing H, the "
                             "delta_mask and a transform's arguments, on the 1.3 GB set and at --scale-gb if given")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from oxe_like import write_oxe_like

    data = Path(args.data)
    if args.only_reruns:
        sets = [(write_oxe_like(data, 1.3, "oxe_like", 0), "1x")]
        if args.scale_gb:
            sets.append((write_oxe_like(data, args.scale_gb, f"oxe_like_{args.scale_gb:g}g", 3), "scale"))
        work = Path(tempfile.mkdtemp(prefix="stepnorm-bench-"))
        CACHE.append(work / "cache")
        try:
            for path, label in sets:
                warm([path])
                table(label, path, sum(f.stat().st_size for f in path.glob("*.tfrecord*")), work)
                reruns(label, path, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    if args.only_runners:
        path = (write_oxe_like(data, args.scale_gb, f"oxe_like_{args.scale_gb:g}g", 3) if args.scale_gb
                else write_oxe_like(data, 1.3, "oxe_like", 0))
        size = sum(f.stat().st_size for f in path.glob("*.tfrecord*"))
        work = Path(tempfile.mkdtemp(prefix="stepnorm-bench-"))
        try:
            warm([path])
            runners(f"{size / 1e9:.2f} GB, {len(list(path.glob('*.tfrecord*')))} shards",
                    config({path.parent.name: path}, work / "runners.yaml"), work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    big = write_oxe_like(data, 1.3, "oxe_like", 0)
    double = write_oxe_like(data, 2.6, "oxe_like_2x", 1)
    small = write_oxe_like(data, 0.05, "oxe_like_small", 2)
    sets = [big, double, small]
    if args.scale_gb:
        scale = write_oxe_like(data, args.scale_gb, f"oxe_like_{args.scale_gb:g}g", 3)
        scale_add = write_oxe_like(data, args.scale_gb * 0.056, f"oxe_like_{args.scale_gb:g}g_add", 4)
        sets += [scale, scale_add]
    size = {p: sum(f.stat().st_size for f in p.glob("*.tfrecord*")) for p in sets}
    work = Path(tempfile.mkdtemp(prefix="stepnorm-bench-"))
    CACHE.append(work / "cache")
    try:
        warm([big, double, small])
        cfg1, rows = table("1x", big, size[big], work)
        cfg2 = config({double.parent.name: double}, work / "two.yaml")
        wall2, rss2 = stepnorm_stats(cfg2, work / "a2", "--force")
        rss1 = rows["(a) stepnorm stats, H=50 per-timestep"][1]
        print(f"\npeak memory, dataset doubled ({size[double] / 1e9:.2f} GB): {rss1:.0f} -> {rss2:.0f} MiB "
              f"(+{100 * (rss2 / rss1 - 1):.1f}%)   target <= +10%")
        incremental("1x", big, small, size, work)
        reruns("1x", big, work)
        workers(f"{size[big] / 1e9:.1f} GB", cfg1, work)
        workers(f"{size[double] / 1e9:.1f} GB", cfg2, work)
        runners(f"{size[big] / 1e9:.2f} GB", cfg1, work)
        if args.scale_gb:
            warm([scale, scale_add])
            print(f"\n== scale: {scale} ({size[scale] / 1e9:.2f} GB)\n")
            incremental("scale", scale, scale_add, size, work)
            reruns("scale", scale, work)
            workers(f"{size[scale] / 1e9:.1f} GB", work / "one-scale.yaml", work)
            runners(f"{size[scale] / 1e9:.1f} GB", work / "one-scale.yaml", work)
            incremental("scale-cold", scale, scale_add, size, work, cold=True)
            warm([scale])
            _, rows_s = table("scale", scale, size[scale], work)
            rss_s = rows_s["(a) stepnorm stats, H=50 per-timestep"][1]
            print(f"\npeak memory at {size[scale] / 1e9:.1f} GB vs {size[big] / 1e9:.1f} GB: {rss1:.0f} -> "
                  f"{rss_s:.0f} MiB (+{100 * (rss_s / rss1 - 1):.1f}%)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
