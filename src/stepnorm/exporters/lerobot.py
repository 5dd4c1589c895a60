"""LeRobot: ``stats.json`` in the layout of a dataset's ``meta/stats.json``.

::

    {"action":            {"min", "max", "mean", "std": [D] or [H, D], "count": [N], "q01", ..., "q99"},
     "observation.state": {"min", "max", "mean", "std": [Ds], "count": [N], ...}}

Feature names are LeRobot's policy keys ``action`` and ``observation.state``. ``count`` is
``[num_steps]`` (LeRobot's shape ``[1]``). Of LeRobot's quantile keys (q01, q10, q50, q90, q99) only
those the artifact computed are written: add 0.1/0.5/0.9 to the config's ``quantiles`` for
QUANTILE10. The action statistics are the artifact's decision: ``[H, D]`` per-timestep ones (LeRobot's
normalizer broadcasts them over ``[B, H, D]`` chunks in training; inference needs
``stepnorm.integrations.lerobot``, which unnormalizes each chunk position with its own row), or the
``[D]`` ``pooled`` (decision off with a delta_mask) or ``global`` ones. State is ``global``.
"""

from __future__ import annotations

from pathlib import Path

from stepnorm.exporters._common import ExportSource, as_list, write_all

FILE = "stats.json"
QUANTILE_KEYS = ("q01", "q10", "q50", "q90", "q99")


def _feature(stats, num_steps: int) -> dict:
    out = {f: as_list(stats[f]) for f in ("min", "max", "mean", "std")}
    out["count"] = [int(num_steps)]
    out.update({q: as_list(stats[q]) for q in QUANTILE_KEYS if q in stats})
    return out


def export(src: ExportSource, out: Path) -> list[Path]:
    """Write ``stats.json`` for the action and state features."""
    num_steps = src.block()["num_steps"]
    doc = {"action": _feature(src.stats("action", src.action_block), num_steps)}
    if src.has("state"):
        doc["observation.state"] = _feature(src.stats("state", "global"), num_steps)
    return write_all(out, {FILE: doc})
