"""robomimic: offset/scale normalization stats, ``normalized = (raw - offset) / scale``.

``robomimic_normalization.json``, laid out like the entries robomimic keeps in a checkpoint, so it
can be merged into ``ckpt_dict`` (robomimic turns the lists back into arrays when it loads)::

    {"action_normalization_stats": {"actions": {"offset": [[D]], "scale": [[D]]}},
     "obs_normalization_stats":    {"state":   {"offset": [[Ds]], "scale": [[Ds]]}},
     "action_config": {"actions": {"normalization": "min_max" | "gaussian"}},
     "obs_normalization": "min_max" | "gaussian"}

Arrays carry robomimic's leading broadcast axis ``[1, D]``: robomimic v0.5's ``normalize_dict``
applies row 0 of an offset/scale to every action, so only ``[1, D]`` is ever exported, from the
artifact's ``[D]`` block (``global``, or ``pooled`` when the decision is off with a delta_mask).
``--per-timestep on`` is an error; when the decision is on, the export holds the ``global``
statistics (chunk position 0, what robomimic applies to each step) with a warning, and a policy
that predicts ``[H, D]`` chunks unnormalizes them per position with
``stepnorm.integrations.robomimic.unnormalize_chunk``. ``state`` is a placeholder key: rename it
to your observation key.

Rules follow robomimic's ``action_stats_to_normalization_stats``:

- ``min_max`` (stepnorm ``min_max``; ``q01_q99`` uses the same rule on ``[q01, q99]``):
  ``scale = (hi - lo) / 1.999998``, ``offset = lo + scale * 0.999999`` (targets +-0.999999);
  a range below 1e-4 gets ``scale = 1, offset = lo``.
- ``gaussian`` (stepnorm ``mean_std``): ``offset = mean``, ``scale = std``, and ``scale = 1`` where
  ``std < 1e-6``. (robomimic's own gaussian branch stores mean and std under swapped keys in some
  versions; these are the values its ``(raw - offset) / scale`` formula needs.)
- dims the config's mask leaves off: ``offset = 0, scale = 1`` (robomimic's "no normalization").

Values are float32, as robomimic computes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stepnorm.exporters._common import ExportError, ExportSource, as_list, write_all

FILE = "robomimic_normalization.json"
ACTION_KEY = "actions"
STATE_KEY = "state"
RANGE_EPS = 1e-4
STD_EPS = 1e-6
OUTPUT_BOUND = 0.999999
METHODS = {"mean_std": "gaussian", "min_max": "min_max", "q01_q99": "min_max"}


def offset_scale(stats, mode: str, mask) -> tuple[np.ndarray, np.ndarray]:
    """robomimic ``(offset, scale)`` float32 arrays (same shape as the statistics) for ``mode``."""
    if mode == "mean_std":
        offset = np.asarray(stats["mean"], np.float32)
        scale = np.asarray(stats["std"], np.float32).copy()
        scale[scale < STD_EPS] = 1.0
    else:
        lo_key, hi_key = ("min", "max") if mode == "min_max" else ("q01", "q99")
        lo = np.asarray(stats[lo_key], np.float32)
        hi = np.asarray(stats[hi_key], np.float32)
        span = hi - lo
        ignore = span < RANGE_EPS
        # With span 2 * OUTPUT_BOUND the scale is exactly 1 and the offset lo, robomimic's rule.
        span = np.where(ignore, np.float32(2 * OUTPUT_BOUND), span)
        scale = span / np.float32(2 * OUTPUT_BOUND)
        offset = np.where(ignore, lo, lo + scale * np.float32(OUTPUT_BOUND))
    if mask is not None:
        on = np.broadcast_to(np.asarray(mask, bool), offset.shape)
        offset = np.where(on, offset, np.float32(0.0))
        scale = np.where(on, scale, np.float32(1.0))
    return offset.astype(np.float32), scale.astype(np.float32)


def _entry(stats, mode: str, mask) -> dict:
    offset, scale = offset_scale(stats, mode, mask)
    if offset.ndim == 1:
        offset, scale = offset[None], scale[None]
    return {"offset": as_list(offset), "scale": as_list(scale)}


def export(src: ExportSource, out: Path) -> list[Path]:
    """Write ``robomimic_normalization.json`` from the config's action (and state) normalization."""
    mode, mask, _ = src.norm_spec("action")
    kind = src.action_block
    if src.per_timestep:
        if src.explicit:
            raise ExportError(src.where, "robomimic applies one [1, D] offset/scale row to every action (its "
                                         "normalize_dict uses row 0 of an [H, D] array), so per-timestep statistics "
                                         "cannot be exported for it; export with --per-timestep off or auto, and "
                                         "unnormalize predicted chunks with stepnorm.integrations.robomimic")
        kind = "global"
        src.warn("robomimic applies one [1, D] row to every action: exporting the 'global' statistics (chunk "
                 "position 0) although the artifact's decision is 'per_timestep'; unnormalize a policy's [H, D] "
                 "chunks per position with stepnorm.integrations.robomimic.unnormalize_chunk")
    doc = {
        "action_normalization_stats": {ACTION_KEY: _entry(src.stats("action", kind), mode, mask)},
        "action_config": {ACTION_KEY: {"normalization": METHODS[mode]}},
    }
    if src.has("state"):
        state_mode, state_mask, _ = src.norm_spec("state")
        doc["obs_normalization_stats"] = {STATE_KEY: _entry(src.stats("state", "global"), state_mode, state_mask)}
        doc["obs_normalization"] = METHODS[state_mode]
    return write_all(out, {FILE: doc})
