"""Sim-to-real validators and the training gate (installed as ``stepnorm.validators``)."""

from stepnorm.validators.base import REGISTRY, Finding, GateResult, ValidationContext, run_gate, validator

__all__ = ["REGISTRY", "Finding", "GateResult", "ValidationContext", "run_gate", "validator"]
