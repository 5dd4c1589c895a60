"""The validator interface, the registry, and the gate that runs every registered validator.

A validator is a function ``(ValidationContext) -> list[Finding]`` registered with ``@validator``.
It reads the statistics artifact, the config and the samples the stats pipeline collected; it
never reads dataset files itself.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from stepnorm.artifact import Artifact
from stepnorm.config import Config

SEVERITIES = ("error", "warning", "info")


@dataclass
class Finding:
    """One result of a validator (SPEC section 6)."""

    id: str
    severity: str
    datasets: list[str]
    key: str
    dims: list[int]
    value: Any
    threshold: Any
    message: str
    hint: str = ""

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")


@dataclass
class ValidationContext:
    """What validators may look at."""

    cfg: Config
    artifact: Artifact
    thresholds: dict[str, dict[str, Any]] = field(default_factory=dict)

    def sample(self, dataset: str):
        return self.artifact.sample(dataset)

    def threshold(self, validator: str, name: str, default: Any) -> Any:
        return self.thresholds.get(validator, {}).get(name, default)


ValidatorFn = Callable[[ValidationContext], list[Finding]]
REGISTRY: dict[str, ValidatorFn] = {}


def validator(name: str) -> Callable[[ValidatorFn], ValidatorFn]:
    """Register a validator under ``name`` (the gate runs every registered one)."""

    def register(fn: ValidatorFn) -> ValidatorFn:
        REGISTRY[name] = fn
        return fn

    return register


@dataclass
class GateResult:
    findings: list[Finding]
    report_dir: Path
    validators_run: list[str]

    @property
    def passed(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1


def run_gate(cfg: Config, artifact: Artifact, report_dir: str | os.PathLike) -> GateResult:
    """Run every registered validator and write ``report.json`` into ``report_dir``."""
    ctx = ValidationContext(cfg, artifact, dict(cfg.validators))
    findings: list[Finding] = []
    for name, fn in REGISTRY.items():
        findings.extend(fn(ctx))
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = GateResult(findings, out, list(REGISTRY))
    doc = {"passed": result.passed, "artifact": str(artifact.path), "fingerprint": artifact.fingerprint,
           "validators": result.validators_run, "findings": [asdict(f) for f in findings]}
    tmp = out / ".report.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    os.replace(tmp, out / "report.json")
    return result
