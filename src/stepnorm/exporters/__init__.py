"""Exporters from the stats artifact to the formats training code loads.

``run_export`` reads and checks an artifact, then hands the selected statistics to one module per
format: ``openpi``, ``lerobot``, ``octo`` (Octo and OpenVLA) and ``robomimic``. Each module's
docstring documents its file layout; docs/exporting.md shows how each consumer loads it.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

from stepnorm.artifact import Artifact, artifact_fingerprint, read_artifact
from stepnorm.artifact import staleness
from stepnorm.config import load_config
from stepnorm.errors import ArtifactError, StaleArtifactError
from stepnorm.exporters import lerobot, octo, openpi, robomimic
from stepnorm.exporters._common import ExportError, ExportSource
from stepnorm.normalize import block_for, warn_if_overridden

FORMATS: dict[str, ModuleType] = {"openpi": openpi, "lerobot": lerobot, "octo": octo, "robomimic": robomimic}

__all__ = ["FORMATS", "ExportError", "check_consistent", "check_config", "run_export"]


def run_export(directory: str | os.PathLike, format: str, out: str | os.PathLike, dataset: str | None = None,
               per_timestep: bool | None = None, config: str | os.PathLike | None = None) -> list[Path]:
    """Export an artifact's statistics for ``format`` into the directory ``out``.

    Args:
        directory: the stats artifact directory (or its stats.json).
        format: ``openpi``, ``lerobot``, ``octo`` or ``robomimic``.
        out: output directory (created if missing); files in it are replaced atomically.
        dataset: one dataset's statistics instead of the combined ones.
        per_timestep: None follows the artifact's decision (``normalization.action.per_timestep``,
            recorded in stats.json): ``per_timestep``, ``pooled`` or ``global`` action statistics.
            True/False ask for another block (off with a delta_mask: ``pooled``) and warn
            (``DecisionWarning``) when it differs from the decision. A format that cannot apply the
            decision's block exports what its consumer applies and warns (see each module).
        config: a config file; refuse to export when the artifact was computed with another config.

    Returns:
        The paths written.

    Raises:
        ArtifactError: missing, malformed or unknown dataset; StaleArtifactError: edited or computed
        for another config; ExportError: null statistics or an option the format cannot honor.
    """
    if format not in FORMATS:
        raise ExportError(None, f"unknown export format {format!r} (choose from {', '.join(FORMATS)})")
    if Path(out).exists() and not Path(out).is_dir():
        raise ExportError(str(out), "exists and is not a directory; --out names the directory the files go into")
    artifact = read_artifact(directory)
    check_consistent(artifact)
    if config is not None:
        check_config(artifact, config)
    if dataset is not None and dataset not in artifact.doc["datasets"]:
        raise ArtifactError(str(artifact.path), f"no dataset {dataset!r} in this artifact "
                                                f"(datasets: {', '.join(artifact.dataset_names)})")
    module = FORMATS[format]
    decision = artifact.decision
    if per_timestep is None:
        block = decision.block
    else:
        block = block_for(per_timestep, artifact.doc["config"].get("delta_mask"))
        warn_if_overridden(decision, block, f"the {format} export")
    return module.export(ExportSource(artifact, dataset, block, explicit=per_timestep is not None), Path(out))


def check_consistent(artifact: Artifact) -> None:
    """The recorded fingerprint must match the recorded config and dataset fingerprints.

    A mismatch means the file was edited by hand (or assembled from parts) after it was computed,
    so nothing in it can be trusted to describe the data.
    """
    doc = artifact.doc
    try:
        fingerprints = {name: ds["fingerprint"] for name, ds in doc["datasets"].items()}
        expected = artifact_fingerprint(doc["config"], fingerprints)
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(str(artifact.path), f"cannot recompute the fingerprint ({exc!r})") from None
    if expected != doc["fingerprint"]:
        raise StaleArtifactError(str(artifact.path), "the artifact was edited after it was computed (its fingerprint "
                                                     "does not match its config and datasets); recompute it with "
                                                     "`stepnorm stats`")


def check_config(artifact: Artifact, config_path: str | os.PathLike) -> None:
    """Raise StaleArtifactError if the artifact is stale for ``config_path`` (its config or its
    datasets' files, transforms or keys changed); reads no data."""
    found = staleness(load_config(config_path), artifact.doc)
    if found.stale:
        raise StaleArtifactError(str(artifact.path), f"stale for {config_path} ({found.describe()}); recompute it "
                                                     f"with `stepnorm stats {config_path} --out DIR`")
