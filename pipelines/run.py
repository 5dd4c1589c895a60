"""`stepnorm run`: statistics (cache reused), the gate, then normalize; stops at a failed gate.

Layout of ``OUT``::

    OUT/stats/        the stats artifact (and the accumulator cache a rerun reuses)
    OUT/report/       the gate's report (report.json, and whatever the validators render)
    OUT/normalized/   the pre-normalized TFDS datasets, a copy of the artifact, MANIFEST.json

The gate is ``stepnorm.validators.run_gate``: every registered validator runs, so new validators
plug in without touching this module.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from stepnorm import outputs
from stepnorm.artifact import read_artifact
from stepnorm.config import Config
from stepnorm.pipelines.normalize import MANIFEST_FILE, run_normalize
from stepnorm.pipelines.stats import run_stats

STATS_DIR, REPORT_DIR, NORMALIZED_DIR = "stats", "report", "normalized"


@dataclass
class RunResult:
    exit_code: int  # 0 done, 1 gate failed (nothing normalized)
    stats_dir: Path
    report_dir: Path
    normalized_dir: Path | None  # None when the gate stopped the run


def run_all(cfg: Config, out_dir: str | os.PathLike, beam_args: Sequence[str] = (), force: bool = False,
            log=print) -> RunResult:
    """Statistics into ``OUT/stats``, the gate into ``OUT/report``, then ``OUT/normalized``.

    With a failed gate nothing is normalized and the exit code is 1, unless ``force`` (which
    prints a warning to stderr and normalizes anyway).
    """
    from stepnorm.config import check_output_names
    from stepnorm.validators import run_gate

    from stepnorm.pipelines.stats import config_inputs

    check_output_names(cfg)  # before any work: the last step writes TFDS datasets under these names
    out = outputs.check_output(out_dir, "run", config_inputs(cfg))
    with outputs.output_lock(out):
        out.mkdir(parents=True, exist_ok=True)
        outputs.write_marker(out, "run")
        return _run_all(cfg, out, beam_args, force, log, run_gate)


def _run_all(cfg: Config, out: Path, beam_args: Sequence[str], force: bool, log, run_gate) -> RunResult:
    stats_dir, report_dir, normalized_dir = out / STATS_DIR, out / REPORT_DIR, out / NORMALIZED_DIR
    log(f"[1/3] statistics -> {stats_dir}")
    run_stats(cfg, stats_dir, beam_args, log=log)
    artifact = read_artifact(stats_dir)
    log(f"[2/3] gate -> {report_dir}")
    gate = run_gate(cfg, artifact, report_dir)
    errors = [f for f in gate.findings if f.severity == "error"]
    log(f"  validators: {', '.join(gate.validators_run) or '(none registered)'}; "
        f"{len(errors)} errors, {len(gate.findings) - len(errors)} warnings/info")
    for finding in errors:
        log(f"  error {finding.id}: {finding.message}")
    if not gate.passed:
        if not force:
            log(f"gate failed: nothing normalized (report: {report_dir / 'report.json'})")
            _warn_if_earlier_output(normalized_dir, artifact.fingerprint)
            return RunResult(1, stats_dir, report_dir, None)
        print(f"stepnorm: WARNING: gate failed with {len(errors)} errors; --force given, normalizing anyway "
              f"(report: {report_dir / 'report.json'})", file=sys.stderr)
    log(f"[3/3] normalize -> {normalized_dir}")
    run_normalize(cfg, stats_dir, normalized_dir, beam_args, log=log)
    return RunResult(0, stats_dir, report_dir, normalized_dir)


def _warn_if_earlier_output(normalized_dir: Path, fingerprint: str) -> None:
    """An earlier run's output stays in place; say that it does not belong to these statistics."""
    manifest = normalized_dir / MANIFEST_FILE
    if manifest.exists() and json.loads(manifest.read_text()).get("stats_fingerprint") != fingerprint:
        print(f"stepnorm: WARNING: {normalized_dir} is from an earlier run with other statistics; "
              f"do not train on it", file=sys.stderr)
