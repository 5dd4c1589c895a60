"""openpi: ``norm_stats.json`` and ``norm_stats_actions_per_timestep.json``.

Schema (openpi ``shared/normalize.py``: ``NormStats(mean, std, q01=None, q99=None)`` serialized as
``{"norm_stats": {name: NormStats}}``)::

    norm_stats.json                          {"norm_stats": {"state":   {"mean", "std", "q01", "q99"},   [Ds]
                                                             "actions": {"mean", "std", "q01", "q99"}}}  [D]
    norm_stats_actions_per_timestep.json     {"norm_stats": {"actions": {... each [H, D]}}}

``actions`` in ``norm_stats.json`` are the *pooled* statistics (every valid entry of every chunk
position): openpi normalizes whole action chunks with one vector, and computes its own statistics
over chunk entries, so pooled is the like-for-like replacement (without openpi's padded repeats).
``q01``/``q99`` are written when the artifact has them (openpi's quantile mode, pi0-FAST and pi0.5,
needs them).
"""

from __future__ import annotations

from pathlib import Path

from stepnorm.exporters._common import ExportSource, as_list, write_all

GLOBAL_FILE = "norm_stats.json"
PER_TIMESTEP_FILE = "norm_stats_actions_per_timestep.json"
FIELDS = ("mean", "std", "q01", "q99")


def _norm_stats(stats) -> dict:
    return {f: as_list(stats[f]) for f in FIELDS if f in stats}


def export(src: ExportSource, out: Path) -> list[Path]:
    """Write openpi's global file, plus the per-timestep actions file when ``src.per_timestep``."""
    global_stats = {"actions": _norm_stats(src.stats("action", "pooled"))}
    if src.has("state"):
        global_stats = {"state": _norm_stats(src.stats("state", "global")), **global_stats}
    files = {GLOBAL_FILE: {"norm_stats": global_stats}}
    if src.per_timestep:
        files[PER_TIMESTEP_FILE] = {"norm_stats": {"actions": _norm_stats(src.stats("action", "per_timestep"))}}
    return write_all(out, files, stale=(PER_TIMESTEP_FILE,))
