"""Sim-to-real validators and the training gate (installed as ``stepnorm.validators``).

Importing the package registers every validator: image_scale, gripper, workspace, stats_health,
stale_stats, drift. ``run_gate`` runs them and writes ``report.json`` and ``report.html``;
``check_image_batch`` is the runtime guard for live observation batches.
"""

from stepnorm.validators.base import REGISTRY, Finding, GateResult, ValidationContext, run_gate, validator
from stepnorm.validators import drift, gripper, image_scale, stale_stats, stats_health, workspace  # noqa: F401  (register)
from stepnorm.validators.image_scale import check_image_batch, classify_ranges

__all__ = ["REGISTRY", "Finding", "GateResult", "ValidationContext", "check_image_batch", "classify_ranges",
           "run_gate", "validator"]
