"""``stale_stats``: the artifact no longer matches the config and the datasets.

The artifact's fingerprint covers the resolved config and every dataset's fingerprint (file
identities, metadata, transforms, statistics config); ``expected_fingerprint`` recomputes it from
the current config without reading data. On a mismatch, the findings name what changed: which
datasets, and which top-level config keys.
"""

from __future__ import annotations

from stepnorm.artifact import canonical_json
from stepnorm.compute import expected_fingerprint
from stepnorm.sources import dataset_fingerprint
from stepnorm.validators.base import Finding, ValidationContext, validator


def _row(what: str, datasets: list[str], changed: bool, detail: str) -> dict:
    return {"datasets": datasets, "key": "", "dims": [], "what": what, "changed": int(changed), "detail": detail,
            "label": what}


@validator("stale_stats")
def stale_stats(ctx: ValidationContext) -> list[Finding]:
    """One row per dataset (and the config): changed since the statistics were computed?"""
    cfg, art = ctx.cfg, ctx.artifact
    stale = expected_fingerprint(cfg) != art.fingerprint
    rows = []
    for ds in cfg.datasets:
        now = dataset_fingerprint(cfg, ds)
        old = art.doc["datasets"].get(ds.name, {}).get("fingerprint")
        if old is None:
            rows.append(_row(f"dataset {ds.name}", [ds.name], True, "not in the artifact: added to the config"))
        else:
            rows.append(_row(f"dataset {ds.name}", [ds.name], old != now,
                             f"fingerprint {old[:12]} -> {now[:12]}" if old != now else "unchanged"))
    for name in art.dataset_names:
        if name not in {ds.name for ds in cfg.datasets}:
            rows.append(_row(f"dataset {name}", [name], True, "in the artifact but no longer in the config"))
    current = cfg.resolved()
    recorded = art.doc.get("config", {})
    keys = sorted(k for k in set(current) | set(recorded)
                  if canonical_json(current.get(k)) != canonical_json(recorded.get(k)))
    rows.append(_row("the config", [], bool(keys), f"keys {', '.join(keys)}" if keys else "unchanged"))
    if stale and not any(r["changed"] for r in rows):
        rows.append(_row("the artifact fingerprint", [], True, f"{art.fingerprint[:12]} is not what this config "
                                                               f"and these datasets give"))
    return ctx.expect("stale_stats", "fingerprints", rows)
