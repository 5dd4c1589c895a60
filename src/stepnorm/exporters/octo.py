"""Octo / OpenVLA: ``dataset_statistics.json``, always nested under the dataset name.

::

    {"<name>": {"action":  {"mean", "std", "max", "min", "p01", "p99", "q01", "q99", "mask"?},   [D]
                "proprio": {... [Ds]},
                "num_transitions": N, "num_trajectories": E},
     ...}

OpenVLA's ``get_action_stats`` looks statistics up as ``norm_stats[unnorm_key]["action"]`` (with
``unnorm_key=None`` only when exactly one name is present), and Octo's mixtures nest per dataset
name, so one dataset (``--dataset NAME``, or an artifact with a single dataset) is nested too:
Octo's ``make_dataset_from_rlds(dataset_statistics=doc[name])`` takes the entry. Each entry holds
the statistics that dataset was normalized with: the mixture's (``normalize_with: combined``, the
default) or its own (``normalize_with: per_dataset``); counts are always the dataset's own.

The action statistics are in the space Octo's loader normalizes: the *stored* actions, one step at
a time (``normalize_action_and_proprio`` before chunking, no delta transform). Without a
``delta_mask`` that is the artifact's ``global`` block. With one, it is the ``raw`` block (each
stored action once, kept by the accumulator beside the delta statistics), and the export warns
that Octo will not apply the delta_mask. A per-timestep decision cannot be honoured (Octo has one
``[D]`` vector): ``--per-timestep on`` is an error and ``auto`` warns.

Quantiles appear under both names: Octo's bounds mode reads ``p01``/``p99``, OpenVLA's
``bounds_q99`` reads ``q01``/``q99``. ``mask`` is ``normalization.<key>.mask`` from the config
(False passes a dim through, e.g. the gripper).
"""

from __future__ import annotations

from pathlib import Path

from stepnorm.exporters._common import ExportError, ExportSource, as_list, write_all

FILE = "dataset_statistics.json"


def _stats(src: ExportSource, key: str, kind: str, stats_from: str | None) -> dict:
    stats = src.stats(key, kind, stats_from)
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


def _entry(src: ExportSource, kind: str, stats_from: str | None, counts_from: str | None) -> dict:
    entry = {"action": _stats(src, "action", kind, stats_from)}
    if src.has("state", stats_from):
        entry["proprio"] = _stats(src, "state", "global", stats_from)
    counts = src.block(counts_from)
    entry["num_transitions"] = int(counts["num_steps"])
    entry["num_trajectories"] = int(counts["num_episodes"])
    return entry


def action_kind(src: ExportSource) -> str:
    """``raw`` (stored actions) with a delta_mask, else ``global``; warns where that differs from
    what was asked for."""
    delta = src.config.get("delta_mask")
    if delta is not None and any(delta):
        if "raw" not in src.block()["action"]:
            raise ExportError(src.where, "the artifact has no raw-action statistics (computed by an older stepnorm); "
                                         "recompute it with `stepnorm stats --force`")
        src.warn(f"Octo/OpenVLA normalize the stored actions, without the config's delta_mask {delta}: exporting "
                 f"statistics of the stored (raw) actions, not the artifact's {src.action_block!r} delta-action "
                 f"ones; a model trained through Octo's loader predicts stored actions")
        return "raw"
    if src.action_block != "global":
        src.warn(f"Octo/OpenVLA normalize each stored step with one [D] vector: exporting the 'global' action "
                 f"statistics, not the artifact's {src.action_block!r} ones")
    return "global"


def export(src: ExportSource, out: Path) -> list[Path]:
    """Write ``dataset_statistics.json``, one entry per dataset name."""
    if src.per_timestep and src.explicit:
        raise ExportError(src.where, "Octo/OpenVLA normalize each step before chunking and have no per-timestep "
                                     "statistics; export with --per-timestep off (or auto), or use openpi/lerobot")
    kind = action_kind(src)
    names = src.artifact.dataset_names
    if src.dataset is not None:
        doc = {src.dataset: _entry(src, kind, src.dataset, src.dataset)}
    else:
        per_dataset = src.config.get("normalize_with") == "per_dataset"
        # ExportSource.dataset is None here, which selects the combined block for the statistics.
        doc = {name: _entry(src, kind, name if per_dataset else None, name) for name in names}
    return write_all(out, {FILE: doc})
