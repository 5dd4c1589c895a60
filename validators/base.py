"""The validator interface, the registry, and the gate that runs every registered validator.

A validator is a function ``(ValidationContext) -> list[Finding]`` registered with ``@validator``.
It reads the statistics artifact, the config and the samples the stats pipeline collected; it
never reads dataset files itself (dataset metadata at most, e.g. a LeRobot ``info.json``). It
computes metric tables and hands them to ``ctx.expect``: the findings are the table's failed
expectations in the suite (``validators.yaml``), so thresholds are data.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from stepnorm import outputs, registry
from stepnorm.artifact import Artifact, jsonable
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
    """What validators may look at: the config, the artifact, its samples and the thresholds.

    ``thresholds`` are per-validator params (the suite's defaults merged with the config's
    ``validators:`` section). ``expect`` evaluates a metric table against the suite and records
    it in ``tables`` for the report.
    """

    cfg: Config
    artifact: Artifact
    thresholds: dict[str, dict[str, Any]] = field(default_factory=dict)
    suite: Any = None  # stepnorm.validators.expectations.Suite; loaded on first use
    tables: dict[str, dict[str, list[dict]]] = field(default_factory=dict)
    _samples: dict = field(default_factory=dict, repr=False)
    _runner: Any = field(default=None, repr=False)

    def sample(self, dataset: str):
        """The dataset's ``DatasetSample`` (cached), or None when the artifact has none."""
        if dataset not in self._samples:
            self._samples[dataset] = self.artifact.sample(dataset)
        return self._samples[dataset]

    @property
    def runner(self):
        """The ``ExpectationRunner`` over the suite (built on first use)."""
        if self._runner is None:
            from stepnorm.validators.expectations import ExpectationRunner, load_suite

            if self.suite is None:
                self.suite = load_suite(self.cfg.validators, self.cfg.path or "<config>")
                self.thresholds = self.suite.params
            self._runner = ExpectationRunner(self.suite)
        return self._runner

    def params(self, validator: str) -> dict[str, Any]:
        """The validator's thresholds (suite defaults merged with the config's overrides)."""
        return self.runner.suite.params[validator]

    def expect(self, validator: str, table: str, rows: list[dict]) -> list[Finding]:
        """Record ``rows`` as the validator's metric table and return its failed expectations."""
        self.tables.setdefault(validator, {})[table] = rows
        return self.runner.evaluate(validator, table, rows)

    def pairs(self) -> list[tuple[str, str]]:
        """Every (sim, real) pair of datasets, in config order."""
        sims = [d.name for d in self.cfg.datasets if d.domain == "sim"]
        reals = [d.name for d in self.cfg.datasets if d.domain == "real"]
        return [(s, r) for s in sims for r in reals]

    def dataset(self, name: str):
        """The dataset's config entry."""
        return next(d for d in self.cfg.datasets if d.name == name)


ValidatorFn = Callable[[ValidationContext], list[Finding]]
REGISTRY: dict[str, ValidatorFn] = {}


def validator(name: str) -> Callable[[ValidatorFn], ValidatorFn]:
    """Register a validator under ``name`` (the gate runs every registered one).

    A name already taken by another function is refused: overwriting it would silently drop a
    check from every gate (and its thresholds in validators.yaml would apply to the newcomer).
    Registering the same definition again (same module and function name, e.g. a reloaded
    module) replaces it.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"a validator needs a non-empty name, got {name!r}")

    def register(fn: ValidatorFn) -> ValidatorFn:
        return registry.add(REGISTRY, name, fn, "validator")

    return register


@dataclass
class GateResult:
    """The gate's outcome: findings, where the report went, which validators ran."""

    findings: list[Finding]
    report_dir: Path
    validators_run: list[str]

    @property
    def passed(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1


def run_gate(cfg: Config, artifact: Artifact, report_dir: str | os.PathLike, *,
             only: list[str] | None = None, html: bool = True) -> GateResult:
    """Run every registered validator (or ``only`` those) and write ``report.json`` and ``report.html``.

    Thresholds are the suite's defaults (``validators.yaml``) with the config's ``validators:``
    overrides; a bad override raises ConfigError before anything runs.
    """
    from stepnorm.validators.expectations import load_suite

    suite = load_suite(cfg.validators, cfg.path or "<config>")
    ctx = ValidationContext(cfg, artifact, suite.params, suite)
    names = list(REGISTRY) if only is None else list(only)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown validators {unknown} (registered: {list(REGISTRY)})")
    findings: list[Finding] = []
    for name in names:
        findings.extend(REGISTRY[name](ctx))
    findings.sort(key=lambda f: (SEVERITIES.index(f.severity), f.id))
    out = outputs.check_output(report_dir, "report", [cfg.path] if cfg.path and Path(cfg.path).exists() else [])
    result = GateResult(findings, out, names)
    counts = {s: sum(f.severity == s for f in findings) for s in SEVERITIES}
    doc = {"passed": result.passed, "artifact": str(artifact.path), "fingerprint": artifact.fingerprint,
           "validators": result.validators_run, "counts": counts, "findings": [asdict(f) for f in findings],
           "thresholds": {n: suite.params[n] for n in names if n in suite.params},
           "expectations": ctx.runner.results, "tables": ctx.tables}
    report_json = json.dumps(jsonable(doc), indent=1, allow_nan=False) + "\n"
    if html:
        from stepnorm.validators.report import render_html

        report_html = render_html(ctx, result, doc)
    with outputs.output_lock(out):
        out.mkdir(parents=True, exist_ok=True)
        outputs.write_marker(out, "report")
        outputs.write_atomic(out / "report.json", report_json)
        if html:
            outputs.write_atomic(out / "report.html", report_html)
    return result


def validate(config: str | os.PathLike, report_dir: str | os.PathLike, stats_dir: str | os.PathLike | None = None,
             beam_args=(), log=print) -> GateResult:
    """``stepnorm validate``: load the config, read (or compute into ``REPORT/stats``) the artifact, run the gate."""
    from stepnorm.artifact import read_artifact
    from stepnorm.config import load_config

    cfg = load_config(config)
    report = outputs.check_output(report_dir, "report", [config])
    report.mkdir(parents=True, exist_ok=True)
    outputs.write_marker(report, "report")
    if stats_dir is None:
        from stepnorm.pipelines.stats import run_stats

        stats_dir = Path(report_dir) / "stats"
        log(f"no --stats given: computing statistics into {stats_dir}")
        run_stats(cfg, stats_dir, beam_args, log=log)
    result = run_gate(cfg, read_artifact(stats_dir), report_dir)
    for f in result.findings:
        log(f"  {f.severity:7s} {f.id}: {f.message}")
    counts = {s: sum(f.severity == s for f in result.findings) for s in SEVERITIES}
    log(f"gate {'passed' if result.passed else 'FAILED'}: {counts['error']} errors, {counts['warning']} warnings, "
        f"{counts['info']} notes; report: {Path(report_dir) / 'report.html'}")
    return result
