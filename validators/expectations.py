"""The gate's expectation suite: thresholds as data, evaluated with Great Expectations 1.x.

``validators.yaml`` (package data; ``configs/validators.yaml`` links to it) holds, per validator,
``params`` (thresholds) and ``expectations`` over the validator's metric tables. A config's
``validators:`` section overrides params and finding severities. ``ExpectationRunner`` turns a
metric table into a pandas DataFrame, validates it against the table's expectations in an
ephemeral GE context, and maps every failed expectation to findings.

Great Expectations takes seconds to import, so it is imported on first evaluation only.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from stepnorm.errors import ConfigError

DEFAULT_SUITE = Path(__file__).with_name("validators.yaml")
SEVERITY_RANK = {"error": 0, "warning": 1, "info": 2}
_GE_SEVERITY = {"error": "critical", "warning": "warning", "info": "info"}
_THRESHOLD_KWARGS = ("max_value", "min_value", "value_set")


@dataclass
class ExpectationSpec:
    """One expectation of the suite and the finding it produces when it fails."""

    id: str
    validator: str
    table: str
    expect: str
    kwargs: dict
    severity: str
    message: str
    hint: str
    value: str | None  # column whose value the finding reports (default: kwargs["column"])


@dataclass
class Suite:
    """Per-validator params (defaults merged with config overrides) and the expectations."""

    params: dict[str, dict[str, Any]]
    expectations: list[ExpectationSpec]

    def for_table(self, validator: str, table: str) -> list[ExpectationSpec]:
        return [e for e in self.expectations if e.validator == validator and e.table == table]

    def threshold_of(self, spec: ExpectationSpec) -> Any:
        """The resolved threshold an expectation compares against (a param or a literal)."""
        for name in _THRESHOLD_KWARGS:
            if name in spec.kwargs:
                value = spec.kwargs[name]
                if isinstance(value, dict) and "$PARAMETER" in value:
                    return self.params[spec.validator][value["$PARAMETER"]]
                return value
        return None


def load_suite(overrides: Mapping[str, Any] | None = None, where: str = "<config>",
               path: str | os.PathLike = DEFAULT_SUITE) -> Suite:
    """Read the suite and apply ``overrides`` (a config's ``validators:`` section).

    Raises ConfigError for an unknown validator, param, finding id or severity in ``overrides``,
    so a misspelled threshold is never silently ignored.
    """
    raw = yaml.safe_load(Path(path).read_text())
    params = {name: copy.deepcopy(section.get("params") or {}) for name, section in raw.items()}
    severity_overrides: dict[str, str] = {}
    for name, values in (overrides or {}).items():
        if name not in raw:
            raise ConfigError(where, f"validators.{name}: no such validator (known: {', '.join(raw)})")
        if not isinstance(values, dict):
            raise ConfigError(where, f"validators.{name} must be a mapping of threshold -> value")
        ids = {e["id"] for e in raw[name].get("expectations", [])}
        for key, value in values.items():
            if key == "severity":
                if not isinstance(value, dict):
                    raise ConfigError(where, f"validators.{name}.severity must map finding ids to error|warning|info")
                for fid, sev in value.items():
                    if fid not in ids:
                        raise ConfigError(where, f"validators.{name}.severity: unknown finding {fid!r} "
                                                 f"(known: {', '.join(sorted(ids))})")
                    if sev not in SEVERITY_RANK:
                        raise ConfigError(where, f"validators.{name}.severity.{fid} must be error, warning or info, got {sev!r}")
                    severity_overrides[fid] = sev
            elif key not in params[name]:
                raise ConfigError(where, f"validators.{name}.{key}: unknown threshold "
                                         f"(known: {', '.join(sorted(params[name])) or 'none'}, severity)")
            else:
                params[name][key] = value
    expectations = [
        ExpectationSpec(id=e["id"], validator=name, table=e["table"], expect=e["expect"], kwargs=dict(e["kwargs"]),
                        severity=severity_overrides.get(e["id"], e["severity"]), message=e["message"],
                        hint=e.get("hint", ""), value=e.get("value"))
        for name, section in raw.items() for e in section.get("expectations", [])
    ]
    return Suite(params, expectations)


class _Row(dict):
    """Row values for message templates; a missing column reads as '?' rather than failing."""

    def __missing__(self, key):
        return "?"


def _format(template: str, values: Mapping[str, Any]) -> str:
    try:
        return template.format_map(_Row(values))
    except (ValueError, TypeError):  # a format spec that does not fit the value (None, a string)
        return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", template).format_map(_Row(values))


class ExpectationRunner:
    """Evaluates metric tables against a suite with one ephemeral Great Expectations context."""

    def __init__(self, suite: Suite):
        self.suite = suite
        self.results: list[dict] = []  # per evaluated expectation: id, table, success (for the report)
        self._context = None
        self._source = None

    def _gx(self):
        if self._context is None:
            os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
            import great_expectations as gx
            from great_expectations.data_context.types.base import (DataContextConfig, InMemoryStoreBackendDefaults,
                                                                     ProgressBarsConfig)

            # In memory only: no docs site in a temporary directory, no progress bars on stderr.
            config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
                                       progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False))
            self._context = gx.get_context(mode="ephemeral", project_config=config)
            self._source = self._context.data_sources.add_pandas("stepnorm")
        return self._source

    def evaluate(self, validator: str, table: str, rows: list[dict]):
        """Findings (``stepnorm.validators.base.Finding``) for the table's failed expectations.

        Every row must carry ``datasets`` (list), ``key`` and ``dims`` (list) and a ``label``.
        """
        from stepnorm.validators.base import Finding

        specs = self.suite.for_table(validator, table)
        if not rows or not specs:
            return []
        import great_expectations as gx
        import pandas as pd
        from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

        source = self._gx()
        asset = source.add_dataframe_asset(f"{validator}.{table}.{len(self.results)}")
        batch = asset.add_batch_definition_whole_dataframe("all").get_batch(
            batch_parameters={"dataframe": pd.DataFrame(rows)})
        # A GE suite keeps one expectation per (type, column): two severity tiers of one
        # threshold go into separate suites.
        layers: list[list[int]] = []
        for i, spec in enumerate(specs):
            domain = (spec.expect, spec.kwargs.get("column"))
            layer = next((l for l in layers if all((specs[j].expect, specs[j].kwargs.get("column")) != domain
                                                   for j in l)), None)
            if layer is None:
                layers.append([i])
            else:
                layer.append(i)
        results = []
        for n, layer in enumerate(layers):
            suite = gx.ExpectationSuite(name=f"stepnorm.{validator}.{table}.{n}")
            for i in layer:
                suite.add_expectation_configuration(ExpectationConfiguration(
                    type=specs[i].expect, kwargs=specs[i].kwargs, meta={"index": i, "finding": specs[i].id},
                    severity=_GE_SEVERITY[specs[i].severity]))
            outcome = batch.validate(suite, expectation_parameters=self.suite.params[validator],
                                     result_format="COMPLETE")
            results.extend(outcome.results)
        findings = []
        for res in results:
            spec = specs[res.expectation_config.meta["index"]]
            if res.exception_info and res.exception_info.get("raised_exception"):
                raise RuntimeError(f"expectation {spec.id} on {validator}.{table} could not run: "
                                   f"{res.exception_info.get('exception_message')}")
            self.results.append({"id": spec.id, "validator": validator, "table": table, "severity": spec.severity,
                                 "expectation": spec.expect, "threshold": self.suite.threshold_of(spec),
                                 "success": bool(res.success)})
            if res.success:
                continue
            threshold = self.suite.threshold_of(spec)
            column = spec.value or spec.kwargs.get("column")
            failed = res.result.get("unexpected_index_list")
            if failed is None:  # a table-level expectation: one finding for the whole table
                observed = res.result.get("observed_value")
                listing = "; ".join(str(r["label"]) for r in rows)
                datasets = sorted({d for r in rows for d in r["datasets"]})
                keys = {r["key"] for r in rows}
                values = {"observed": observed, "listing": listing, "threshold": threshold}
                findings.append(Finding(spec.id, spec.severity, datasets, keys.pop() if len(keys) == 1 else "", [],
                                        observed, threshold, _format(spec.message, values),
                                        _format(spec.hint, values)))
                continue
            for index in failed:
                row = rows[int(index)]
                values = {**row, "threshold": threshold}
                findings.append(Finding(spec.id, spec.severity, list(row["datasets"]), row["key"], list(row["dims"]),
                                        row.get(column), threshold, _format(spec.message, values),
                                        _format(spec.hint, values)))
        return dedupe(findings)


def dedupe(findings: list) -> list:
    """One finding per (id, datasets, key, dims): the most severe (two tiers of one threshold)."""
    best: dict[tuple, Any] = {}
    for f in findings:
        k = (f.id, tuple(f.datasets), f.key, tuple(f.dims))
        if k not in best or SEVERITY_RANK[f.severity] < SEVERITY_RANK[best[k].severity]:
            best[k] = f
    return list(best.values())
