"""``stale_stats``: the artifact no longer matches the config and the datasets.

The artifact's fingerprint covers the resolved config (less its gate-only sections) and every
dataset's fingerprint (file identities, metadata, transforms, statistics config);
``stepnorm.artifact.staleness`` recomputes it from the current config without reading data. On a mismatch, the findings name what changed: which
datasets, and which top-level config keys.
"""

from __future__ import annotations

from stepnorm.artifact import staleness
from stepnorm.validators.base import Finding, ValidationContext, validator


def _row(what: str, datasets: list[str], changed: bool, detail: str) -> dict:
    return {"datasets": datasets, "key": "", "dims": [], "what": what, "changed": int(changed), "detail": detail,
            "label": what}


@validator("stale_stats")
def stale_stats(ctx: ValidationContext) -> list[Finding]:
    """One row per dataset (and the config): changed since the statistics were computed?"""
    cfg, art = ctx.cfg, ctx.artifact
    found = staleness(cfg, art.doc)
    how = {"added": "not in the artifact: added to the config",
           "removed": "in the artifact but no longer in the config", "changed": "files, transforms or keys changed"}
    names = [ds.name for ds in cfg.datasets] + [n for n in art.dataset_names if n not in {d.name for d in cfg.datasets}]
    rows = [_row(f"dataset {name}", [name], name in found.datasets, how.get(found.datasets.get(name), "unchanged"))
            for name in names]
    keys = found.config_keys
    rows.append(_row("the config", [], bool(keys), f"keys {', '.join(keys)}" if keys else "unchanged"))
    if found.stale and not any(r["changed"] for r in rows):
        rows.append(_row("the artifact fingerprint", [], True, f"{art.fingerprint[:12]} is not what this config "
                                                               f"and these datasets give"))
    return ctx.expect("stale_stats", "fingerprints", rows)
