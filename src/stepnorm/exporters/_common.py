"""What every exporter shares: the checked view of an artifact, and atomic JSON writes."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from stepnorm.artifact import Artifact
from stepnorm.errors import StepnormError
from stepnorm.normalize import DecisionWarning
from stepnorm.outputs import write_atomic


class ExportError(StepnormError):
    """The statistics cannot be exported as asked (empty chunk positions, unsupported option)."""


@dataclass
class ExportSource:
    """The statistics one export reads: the combined ones, or one dataset's.

    Attributes:
        artifact: the validated, self-consistent artifact.
        dataset: a dataset name, or None for the combined (mixture) statistics.
        action_block: the action statistics asked for: ``per_timestep``, ``pooled`` or ``global``
            (the artifact's decision, unless the export asked for another).
        explicit: whether the caller asked for it (``--per-timestep on|off``) rather than the
            decision giving it.
    """

    artifact: Artifact
    dataset: str | None
    action_block: str
    explicit: bool = False

    @property
    def per_timestep(self) -> bool:
        """Whether ``[H, D]`` action statistics are asked for."""
        return self.action_block == "per_timestep"

    def warn(self, message: str) -> None:
        """A ``DecisionWarning``: the export gives other statistics than those asked for."""
        warnings.warn(message, DecisionWarning, stacklevel=3)

    @property
    def where(self) -> str:
        """The artifact file, for error messages."""
        return str(self.artifact.path) if self.artifact.path else "<artifact>"

    @property
    def config(self) -> dict:
        return self.artifact.doc["config"]

    def block(self, dataset: str | None = None) -> dict:
        """The artifact block for ``dataset`` (default: this export's selection)."""
        return self.artifact.block(self.dataset if dataset is None else dataset)

    def has(self, key: str, dataset: str | None = None) -> bool:
        """Whether the block has statistics for ``key`` (``state`` is absent without a state key)."""
        return key in self.block(dataset)

    def stats(self, key: str, kind: str, dataset: str | None = None) -> dict[str, np.ndarray]:
        """One STATS block as float64 arrays, refusing null entries (see ``require_finite``)."""
        ds = self.dataset if dataset is None else dataset
        stats = self.artifact.stats(key, kind, ds)
        require_finite(stats, f"{key}.{kind} of " + (f"dataset {ds!r}" if ds else "combined statistics"),
                       self.where, self.artifact.horizon, per_timestep=(kind == "per_timestep"))
        return stats

    def norm_spec(self, key: str) -> tuple[str, list[bool] | None, bool | None]:
        """``(mode, mask, clip)`` for ``key`` from the recorded config (mean_std when unconfigured)."""
        spec = (self.config.get("normalization") or {}).get(key) or {}
        return spec.get("mode", "mean_std"), spec.get("mask"), spec.get("clip")


def require_finite(stats: Mapping[str, np.ndarray], what: str, where: str, horizon: int, per_timestep: bool) -> None:
    """Raise ExportError when a statistic is null (NaN); consumers would load it as garbage.

    Per-timestep nulls are chunk positions no episode reaches (every episode is shorter than
    ``k + 1`` steps), so the message names the horizon that would have data everywhere.
    """
    bad = np.zeros(np.shape(stats["mean"])[:-1], bool)
    for field, values in stats.items():
        if field == "count":
            continue
        bad |= ~np.isfinite(values).all(axis=-1)
    if not bad.any():
        return
    if per_timestep:
        positions = np.flatnonzero(bad).tolist()
        raise ExportError(
            where, f"{what} has no data at chunk positions {positions} of {horizon} (no episode is that long); "
                   f"recompute the statistics with horizon <= {positions[0]}, or export with --per-timestep off")
    raise ExportError(where, f"{what} has null entries; recompute the statistics")


def as_list(values: np.ndarray) -> list:
    """A numpy array as nested JSON lists (float64 values kept exactly)."""
    return np.asarray(values).tolist()


def write_json_atomic(path: Path, obj: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (``stepnorm.outputs.write_atomic``).

    A reader (or a training job started meanwhile) sees the old file or the new one, never half.
    """
    return write_atomic(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def write_all(out: Path, files: Mapping[str, Any], stale: tuple[str, ...] = ()) -> list[Path]:
    """Write every ``name -> JSON object`` into ``out``; remove our own files listed in ``stale``.

    Everything is built before anything is written, so an error leaves ``out`` untouched. A
    leftover per-timestep file from an earlier export would be picked up by the consumer next to
    fresh global statistics, so exporting without it removes it.
    """
    written = [write_json_atomic(out / name, obj) for name, obj in files.items()]
    for name in stale:
        if name not in files:
            (out / name).unlink(missing_ok=True)
    return written
