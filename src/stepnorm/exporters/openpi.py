"""openpi: ``norm_stats.json`` and ``norm_stats_actions_per_timestep.json``.

Schema (openpi ``shared/normalize.py``: ``NormStats(mean, std, q01=None, q99=None)`` serialized as
``{"norm_stats": {name: NormStats}}``)::

    norm_stats.json                          {"norm_stats": {"state":   {"mean", "std", "q01", "q99"},   [Ds]
                                                             "actions": {"mean", "std", "q01", "q99"}}}  [D]
    norm_stats_actions_per_timestep.json     {"norm_stats": {"actions": {... each [H, D]}}}

``actions`` in ``norm_stats.json`` are the ``[D]`` statistics of the artifact's decision: openpi
normalizes whole action chunks with one vector, so with the decision off that is the decision's
block (``pooled`` with a delta_mask, ``global`` without) and every path agrees. With the decision
on, ``norm_stats.json`` holds the *pooled* statistics (every valid entry of every chunk position,
openpi's own definition without its padded repeats) for stock openpi, and the per-timestep file
holds ``[H, D]``; ``stepnorm.integrations.openpi`` loads both and applies the per-timestep ones.
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
    one_vector = "pooled" if src.per_timestep else src.action_block
    global_stats = {"actions": _norm_stats(src.stats("action", one_vector))}
    if src.has("state"):
        global_stats = {"state": _norm_stats(src.stats("state", "global")), **global_stats}
    files = {GLOBAL_FILE: {"norm_stats": global_stats}}
    if src.per_timestep:
        files[PER_TIMESTEP_FILE] = {"norm_stats": {"actions": _norm_stats(src.stats("action", "per_timestep"))}}
    return write_all(out, files, stale=(PER_TIMESTEP_FILE,))
