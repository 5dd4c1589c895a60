"""Octo / OpenVLA: ``dataset_statistics.json``.

One dataset (``--dataset NAME``, or an artifact with a single dataset) gives Octo's flat layout::

    {"action":  {"mean", "std", "max", "min", "p01", "p99", "q01", "q99", "mask"?},   [D]
     "proprio": {... [Ds]},
     "num_transitions": N, "num_trajectories": E}

The combined statistics of a mixture are nested per dataset name, as Octo's interleaved datasets
and OpenVLA's ``norm_stats[unnorm_key]`` expect: ``{"<name>": {flat layout}, ...}``. Each entry
holds the statistics that dataset was normalized with: the mixture's (``normalize_with:
combined``, the default) or its own (``normalize_with: per_dataset``); counts are always the
dataset's own. Quantiles appear under both names: Octo's bounds mode reads ``p01``/``p99``,
OpenVLA's ``bounds_q99`` reads ``q01``/``q99``. ``mask`` is ``normalization.<key>.mask`` from the
config (False passes a dim through, e.g. the gripper). Octo normalizes each step before chunking,
so there are no per-timestep statistics in this format.
"""

from __future__ import annotations

from pathlib import Path

from stepnorm.exporters._common import ExportError, ExportSource, as_list, write_all

FILE = "dataset_statistics.json"
SUPPORTS_PER_TIMESTEP = False


def _stats(src: ExportSource, key: str, stats_from: str | None) -> dict:
    stats = src.stats(key, "global", stats_from)
    if "q01" not in stats or "q99" not in stats:
        raise ExportError(src.where, "Octo/OpenVLA bounds need quantiles 0.01 and 0.99; add them to the config's "
                                     "quantiles and recompute the statistics")
    out = {"mean": stats["mean"], "std": stats["std"], "max": stats["max"], "min": stats["min"],
           "p99": stats["q99"], "p01": stats["q01"], "q99": stats["q99"], "q01": stats["q01"]}
    out = {k: as_list(v) for k, v in out.items()}
    mask = src.norm_spec(key)[1]
    if mask is not None:
        out["mask"] = [bool(m) for m in mask]
    return out


def _entry(src: ExportSource, stats_from: str | None, counts_from: str | None) -> dict:
    entry = {"action": _stats(src, "action", stats_from)}
    if src.has("state", stats_from):
        entry["proprio"] = _stats(src, "state", stats_from)
    counts = src.block(counts_from)
    entry["num_transitions"] = int(counts["num_steps"])
    entry["num_trajectories"] = int(counts["num_episodes"])
    return entry


def export(src: ExportSource, out: Path) -> list[Path]:
    """Write ``dataset_statistics.json`` (flat for one dataset, nested per name for a mixture)."""
    if src.per_timestep and src.explicit:
        raise ExportError(src.where, "Octo/OpenVLA normalize each step before chunking and have no per-timestep "
                                     "statistics; export with --per-timestep off (or auto), or use openpi/lerobot")
    if src.action_block != "global":
        src.warn(f"Octo/OpenVLA normalize each stored step with one [D] vector: exporting the 'global' action "
                 f"statistics, not the artifact's {src.action_block!r} ones")
    names = src.artifact.dataset_names
    if src.dataset is not None or len(names) == 1:
        doc = _entry(src, src.dataset, src.dataset)
    else:
        per_dataset = src.config.get("normalize_with") == "per_dataset"
        # ExportSource.dataset is None here, which selects the combined block for the statistics.
        doc = {name: _entry(src, name if per_dataset else None, name) for name in names}
    return write_all(out, {FILE: doc})
