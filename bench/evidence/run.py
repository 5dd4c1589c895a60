"""The evidence experiment: when does per-timestep action normalization change closed-loop success?

Trains MLP policies on scripted demos of a 2-D point-mass task (bench/evidence/pointmass.py) with
stepnorm's statistics and torch normalizers (bench/evidence/experiment.py), under global,
per-timestep and loss-reweighted normalization, and writes into ``--out``:

  runs/<condition>-seed<k>.json   every run's result (per-task success, errors, timings)
  summary.json                    per condition: success with CIs, paired differences, spreads
  table.md                        the results table
  success.png, chunk_error.png    success per condition (95% CIs), raw-unit error per chunk position

A run whose JSON already exists for exactly the same condition is reused, so an interrupted grid
resumes where it stopped. Seeds are fixed; the results do not depend on ``--jobs``.

Usage:
  python bench/evidence/run.py [--out evidence_out] [--grid main|fit|all] [--jobs 2] [--seeds 5]
  python bench/evidence/run.py --quick --out /tmp/evidence_quick     # smoke test, ~30 s
  python bench/evidence/run.py --grid all --no-train --out DIR       # summarize what has finished
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MARKER = ".stepnorm-evidence"  # marks a directory this command wrote (never write into others)


FIT_SEEDS = 3  # the fit ablations change one setting at a time and use fewer seeds


def grid(name: str, seeds: int) -> list:
    """The conditions of a grid, seed-major within each part, cheapest and most central parts
    first: an interrupted grid (summarized with --no-train) has whole conditions for the first seeds.

    main = mean_std conditions (delta/absolute, H=16/50, global/per-timestep/reweight), then the
    q01/q99 variants (delta); fit = delta H=50 (and H=16) with less or more fit than the main
    grid's 4000 steps of a 3x256 MLP on 500 demos; all = main mean_std, short fit ablations,
    q01/q99, then the expensive ablations.
    """
    from experiment import Condition

    def seeded(conds, n):
        return [replace(c, seed=s) for s in range(n) for c in conds]

    def pair(base, **change):
        return [replace(base, norm=n, **change) for n in ("global", "per_timestep")]

    if name == "quick":
        base = Condition(action="delta", horizon=16, steps=150, demos=40, n_eval=40)
        return seeded([replace(base, norm=n) for n in ("global", "per_timestep", "reweight")], seeds)
    core = [Condition(action=a, horizon=h, norm=n) for a in ("delta", "absolute") for h in (16, 50)
            for n in ("global", "per_timestep", "reweight")]
    quantile = [c for h in (16, 50) for c in pair(Condition(action="delta", horizon=h, mode="q01_q99"))]
    delta50 = Condition(action="delta", horizon=50)
    fit_short = pair(delta50, steps=1000) + pair(delta50, width=64) + pair(delta50, horizon=16, steps=1000)
    fit_long = pair(delta50, demos=100) + pair(delta50, steps=12000)
    parts = {
        "main": [(core, seeds), (quantile, seeds)],
        "fit": [(fit_short, FIT_SEEDS), (fit_long, FIT_SEEDS)],
        "all": [(core, seeds), (fit_short, FIT_SEEDS), (quantile, seeds), (fit_long, FIT_SEEDS)],
    }
    if name not in parts:
        raise ValueError(f"unknown grid {name!r}")
    return [c for conds, n in parts[name] for c in seeded(conds, n)]


def _run_file(out: Path, cond) -> Path:
    return out / "runs" / f"{cond.group}-seed{cond.seed}.json"


def _worker(cond_and_out):
    import torch

    # One thread per process: --jobs processes share the cores without oversubscribing them.
    torch.set_num_threads(1)
    from experiment import run

    cond, out = cond_and_out
    result = run(cond)
    path = _run_file(out, cond)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result) + "\n")
    os.replace(tmp, path)
    return cond, result


def _load(path: Path, cond) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if doc.get("key") == cond.key else None


def _prepare_out(out: Path) -> None:
    """Use ``out`` only if it is new, empty, or written by this command before."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ValueError(f"{out} exists and was not written by bench/evidence/run.py; choose another --out")
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by bench/evidence/run.py\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="evidence_out", help="results directory (default: evidence_out)")
    parser.add_argument("--grid", default="main", choices=["main", "fit", "all"])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2, one torch thread each)")
    parser.add_argument("--quick", action="store_true", help="a small grid for a smoke test (2 seeds, short training)")
    parser.add_argument("--no-train", action="store_true",
                        help="only summarize the grid's finished runs (missing ones are listed in summary.json)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        if args.seeds < 1 or args.jobs < 1:
            raise ValueError("--seeds and --jobs must be >= 1")
        _prepare_out(out)
    except (OSError, ValueError) as exc:
        print(f"stepnorm: error: {out}: {exc}", file=sys.stderr)
        return 2
    conds = grid("quick", 2) if args.quick else grid(args.grid, args.seeds)
    results, todo = {}, []
    for cond in conds:
        done = _load(_run_file(out, cond), cond)
        if done is not None:
            results[cond] = done
        else:
            todo.append(cond)
    missing = []
    if args.no_train:
        missing, todo = [f"{c.group} seed {c.seed}" for c in todo], []
    print(f"{len(conds)} runs: {len(results)} reused, {len(todo)} to train with {args.jobs} process(es)"
          + (f", {len(missing)} missing" if missing else ""), flush=True)
    t0 = time.perf_counter()
    if todo:
        jobs = min(args.jobs, len(todo))
        items = [(c, out) for c in todo]
        if jobs == 1:
            finished = map(_worker, items)
        else:
            pool = mp.get_context("spawn").Pool(jobs)
            finished = pool.imap(_worker, items)
        for i, (cond, result) in enumerate(finished, 1):
            results[cond] = result
            ok = sum(result["success"]["success@0.02"]) / len(result["success"]["success@0.02"])
            print(f"[{i}/{len(todo)}] {cond.group} seed {cond.seed}: success@0.02 {100 * ok:.1f}% "
                  f"({result['total_seconds']:.0f} s)", flush=True)
        if jobs > 1:
            pool.close()
            pool.join()
    wall = time.perf_counter() - t0
    if not results:
        print(f"stepnorm: error: {out}: no finished runs of this grid to summarize", file=sys.stderr)
        return 2
    write_outputs(out, [results[c] for c in conds if c in results], wall, todo, args, missing)
    print(f"wrote {out / 'table.md'}, {out / 'summary.json'}, {out / 'success.png'}, {out / 'chunk_error.png'} "
          f"({wall:.0f} s wall for {len(todo)} runs)")
    return 0


def write_outputs(out: Path, results: list[dict], wall: float, trained: list, args, missing: list) -> None:
    """summary.json, table.md and the plots for ``results``."""
    import analysis

    rows = analysis.summarize(results)
    run_seconds = [r["total_seconds"] for r in results]
    timing = {"wall_seconds_this_invocation": wall, "runs_trained": len(trained), "jobs": args.jobs,
              "sum_run_seconds": sum(run_seconds), "load_average": list(os.getloadavg()),
              # CPU seconds (runs from before this field existed have none): / jobs = free-machine wall time.
              "sum_cpu_seconds": sum(r.get("cpu_seconds", 0.0) for r in results),
              "runs_with_cpu_seconds": sum("cpu_seconds" in r for r in results),
              "cpu_count": os.cpu_count()}
    doc = {"grid": "quick" if args.quick else args.grid, "timing": timing, "missing_runs": missing, "conditions": rows}
    (out / "summary.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "table.md").write_text(analysis.markdown_table(rows))
    analysis.plot_success(rows, out / "success.png")
    analysis.plot_chunk_error(rows, out / "chunk_error.png")


if __name__ == "__main__":
    sys.exit(main())
