"""Tables and plots from the runs' JSON results: hierarchical bootstrap CIs, paired differences.

CIs resample seeds, then evaluation episodes within each drawn seed (the two sources of variance:
training runs and tasks). Differences between conditions are paired: the same seed (demos,
initialization, batches) and the same evaluation task on both sides.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

import pointmass as pm

N_BOOT = 2000
BOOT_SEED = 7
LEVEL = 0.95


def hierarchical_bootstrap(matrix: np.ndarray, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> tuple[float, float, float]:
    """``(mean, lo, hi)`` of ``matrix [seeds, episodes]``: resample seeds, then episodes within each."""
    matrix = np.asarray(matrix, np.float64)
    n_s, n_e = matrix.shape
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, n_s, (n_boot, n_s))
    episodes = rng.integers(0, n_e, (n_boot, n_s, n_e))
    means = matrix[seeds[..., None], episodes].mean(axis=(1, 2))
    alpha = (1 - LEVEL) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(matrix.mean()), float(lo), float(hi)


def family(cond: dict) -> tuple:
    """Everything but the normalization choice: conditions of one family are compared with each other."""
    return tuple((k, v) for k, v in cond.items() if k not in ("norm", "mode", "seed"))


def summarize(results: list[dict]) -> list[dict]:
    """One row per condition (pooled over seeds), with CIs and the paired difference to its baseline.

    The baseline of a condition is ``global`` in the same mode, except for ``reweight``, whose
    baseline is ``global`` in mean_std (it reweights that one's loss).
    """
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        groups[r["group"]].append(r)
    rows = {}
    for name, runs in groups.items():
        runs.sort(key=lambda r: r["condition"]["seed"])
        cond = dict(runs[0]["condition"])
        cond.pop("seed")
        row = {"group": name, "condition": cond, "seeds": [r["condition"]["seed"] for r in runs],
               "seconds_per_run": float(np.mean([r["total_seconds"] for r in runs])),
               "collided": float(np.mean([r["collided"] for r in runs])),
               "chunk_error": np.mean([r["chunk_error"] for r in runs], axis=0).tolist(),
               "spread_per_timestep": np.mean([r["spread_per_timestep"] for r in runs], axis=0).tolist(),
               "spread_global": np.mean([r["spread_global"] for r in runs], axis=0).tolist(),
               "_success": {tol: np.array([r["success"][f"success@{tol}"] for r in runs]) for tol in pm.TOLERANCES}}
        spread = np.asarray(row["spread_per_timestep"])
        # What global normalization does to the loss: position k weighs (sigma_k / sigma_g)^2, so
        # position H-1 against position 0 weighs (sigma_{H-1} / sigma_0)^2 (mean over dims).
        row["loss_weight_ratio"] = float(np.mean((spread[-1] / spread[0]) ** 2))
        row["global_to_first_ratio"] = float(np.mean(np.asarray(row["spread_global"]) / spread[0]))
        for tol, m in row["_success"].items():
            row[f"success@{tol}"] = hierarchical_bootstrap(m)
        rows[name] = row
    for row in rows.values():
        cond = row["condition"]
        if cond["norm"] == "global":
            continue
        base_mode = "mean_std" if cond["norm"] == "reweight" else cond["mode"]
        base = next((b for b in rows.values() if family(b["condition"]) == family(cond)
                     and b["condition"]["norm"] == "global" and b["condition"]["mode"] == base_mode), None)
        if base is None:
            continue
        common = sorted(set(row["seeds"]) & set(base["seeds"]))
        if not common:
            continue
        mine = row["_success"][pm.MAIN_TOLERANCE][[row["seeds"].index(s) for s in common]]
        theirs = base["_success"][pm.MAIN_TOLERANCE][[base["seeds"].index(s) for s in common]]
        row["baseline"] = base["group"]
        row["difference"] = hierarchical_bootstrap(mine.astype(float) - theirs)
        row["paired_seeds"] = common
    out = sorted(rows.values(), key=_order)
    for row in out:
        row.pop("_success")
    return out


def _order(row: dict) -> tuple:
    c = row["condition"]
    return (c["action"] != "delta", c["horizon"], c["steps"], c["width"], c["demos"], c["mode"] != "mean_std",
            ("global", "per_timestep", "reweight").index(c["norm"]))


def label(cond: dict, with_norm: bool = True) -> str:
    """A short human label, e.g. ``delta H=50`` plus non-default training settings."""
    parts = [f"{cond['action']} H={cond['horizon']}"]
    for key, default in (("steps", 4000), ("width", 256), ("demos", 500)):
        if cond[key] != default:
            parts.append(f"{key}={cond[key]}")
    if with_norm:
        parts.append(cond["norm"].replace("_", "-") + ("" if cond["mode"] == "mean_std" else " q01/q99"))
    return " ".join(parts)


def _pct(triple) -> str:
    mean, lo, hi = triple
    return f"{100 * mean:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def _diff(triple) -> str:
    mean, lo, hi = triple
    return f"{100 * mean:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def markdown_table(rows: list[dict]) -> str:
    """The results table (success in %, 95% CIs; differences paired against the baseline)."""
    tol = pm.MAIN_TOLERANCE
    head = (f"| actions, H | normalization | success@{tol} % [95% CI] | vs global, points [95% CI] | "
            f"success@0.01 % | success@0.05 % | collisions % | (σ_H-1/σ_0)² | σ_global/σ_0 | seeds | s/run |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        c = r["condition"]
        norm = c["norm"].replace("_", "-") + ("" if c["mode"] == "mean_std" else " (q01/q99)")
        diff = _diff(r["difference"]) if "difference" in r else ""
        lines.append(f"| {label(c, with_norm=False)} | {norm} | {_pct(r[f'success@{tol}'])} | {diff} | "
                     f"{100 * r['success@0.01'][0]:.1f} | {100 * r['success@0.05'][0]:.1f} | {100 * r['collided']:.1f} | "
                     f"{r['loss_weight_ratio']:.0f} | {r['global_to_first_ratio']:.1f} | {len(r['seeds'])} | "
                     f"{r['seconds_per_run']:.0f} |")
    return "\n".join(lines) + "\n"


def plot_success(rows: list[dict], path) -> None:
    """Success per condition with CIs, one panel per family of conditions."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tol = pm.MAIN_TOLERANCE
    families: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        families[family(r["condition"])].append(r)
    n = len(families)
    bars = sum(len(v) for v in families.values())
    fig = Figure(figsize=(min(18.0, max(6.0, 0.6 * bars + 2)), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colors = {"global": "#777777", "per_timestep": "#1b9e77", "reweight": "#7570b3"}
    x, ticks, names = 0.0, [], []
    for fam_rows in families.values():
        for r in fam_rows:
            mean, lo, hi = r[f"success@{tol}"]
            c = r["condition"]
            ax.bar(x, 100 * mean, color=colors[c["norm"]], alpha=1.0 if c["mode"] == "mean_std" else 0.55,
                   hatch="" if c["mode"] == "mean_std" else "//", edgecolor="white")
            ax.errorbar(x, 100 * mean, yerr=[[100 * (mean - lo)], [100 * (hi - mean)]], color="black", capsize=3, lw=1)
            ticks.append(x)
            names.append(c["norm"].replace("per_timestep", "per-t").replace("reweight", "rewt")
                         + ("" if c["mode"] == "mean_std" else "\nq01/99"))
            x += 1
        ax.text(x - len(fam_rows) / 2 - 0.5, 103, label(fam_rows[0]["condition"], with_norm=False).replace(" ", "\n", 2),
                ha="center", va="bottom", fontsize=7)
        x += 0.8
    ax.set_xticks(ticks, names, fontsize=7)
    ax.set_ylim(0, 118)
    ax.set_ylabel(f"success @ {tol} (%), 95% CI")
    ax.set_title(f"Closed-loop success per normalization ({n} task/horizon settings)", fontsize=10)
    fig.savefig(path, dpi=110)


def plot_chunk_error(rows: list[dict], path) -> None:
    """Raw-unit prediction error per chunk position on held-out demos, one panel per family."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    families: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        families[family(r["condition"])].append(r)
    n = len(families)
    cols = min(4, n)
    rows_n = -(-n // cols)
    fig = Figure(figsize=(3.6 * cols, 2.8 * rows_n), layout="constrained")
    FigureCanvasAgg(fig)
    styles = {"global": ("#777777", "-"), "per_timestep": ("#1b9e77", "-"), "reweight": ("#7570b3", "--")}
    for i, fam_rows in enumerate(families.values()):
        ax = fig.add_subplot(rows_n, cols, i + 1)
        for r in fam_rows:
            c = r["condition"]
            color, ls = styles[c["norm"]]
            ax.plot(r["chunk_error"], color=color, ls=ls if c["mode"] == "mean_std" else ":",
                    label=c["norm"].replace("_", "-") + ("" if c["mode"] == "mean_std" else " q01/q99"))
        ax.set_yscale("log")
        ax.set_title(label(fam_rows[0]["condition"], with_norm=False), fontsize=9)
        ax.set_xlabel("chunk position k", fontsize=8)
        ax.set_ylabel("mean |error| (raw units)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    fig.savefig(path, dpi=110)
