"""From per-dataset accumulators to the stats artifact (the plain-function core of `stepnorm stats`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from stepnorm.artifact import build_artifact
from stepnorm.config import Config
from stepnorm.errors import InputDataError
from stepnorm.sources.base import Episode
from stepnorm.stats import AccumulatorSpec, ChunkStatsAccumulator, combine
from stepnorm.stats.combine import resolve_all


def accumulator_spec(cfg: Config) -> AccumulatorSpec:
    """The accumulator spec a config asks for."""
    return AccumulatorSpec(cfg.horizon, None if cfg.delta_mask is None else tuple(cfg.delta_mask), cfg.sketch_k)


def accumulate(cfg: Config, name: str, episodes: Iterable[Episode]) -> ChunkStatsAccumulator:
    """One dataset's accumulator from its episodes (in-process; kept as ``acc.data`` so the exact
    quantiles can read them again)."""
    acc = ChunkStatsAccumulator(accumulator_spec(cfg), name)
    episodes = list(episodes)
    for ep in episodes:
        acc.add_episode(ep.action, ep.state, source=ep.source)
    acc.data = episodes
    return acc


def artifact_from_accumulators(cfg: Config, accumulators: Mapping[str, ChunkStatsAccumulator],
                               fingerprints: Mapping[str, str]) -> dict:
    """Per-dataset and combined statistics as a ``stats.json`` document.

    Raises InputDataError for an empty dataset or action/state dims that differ across datasets.
    """
    finals, dims = {}, {}
    for ds in cfg.datasets:
        acc = accumulators[ds.name]
        if acc.num_steps == 0:
            raise InputDataError(f"{ds.path}", f"dataset {ds.name!r} has no steps (split {ds.split!r})")
        dims[ds.name] = (acc.action_dim, acc.state_dim)
        mask = cfg.normalization.get("action").mask if "action" in cfg.normalization else None
        if mask is not None and len(mask) != acc.action_dim:
            raise InputDataError(ds.path, f"normalization.action.mask has {len(mask)} entries but dataset "
                                          f"{ds.name!r} has {acc.action_dim} action dims")
        state_spec = cfg.normalization.get("state")
        if state_spec is not None and state_spec.mask is not None and len(state_spec.mask) != (acc.state_dim or 0):
            raise InputDataError(ds.path, f"normalization.state.mask has {len(state_spec.mask)} entries but dataset "
                                          f"{ds.name!r} has {acc.state_dim or 0} state dims")
        for label, indices, width in (("gripper_dims", ds.gripper_dims, acc.action_dim),
                                      ("position_dims", ds.position_dims, acc.state_dim or 0)):
            if any(d >= width for d in indices):
                raise InputDataError(ds.path, f"datasets.{ds.name}.{label} {indices} out of range for {width} dims")
        finals[ds.name] = acc.finalize()
    if len(set(dims.values())) > 1:
        listing = ", ".join(f"{n}: action {a}, state {s}" for n, (a, s) in dims.items())
        raise InputDataError(cfg.path, f"action/state dims differ across datasets ({listing}); "
                                       f"standardize them with transforms (select_dims)")
    combined = combine([(finals[ds.name], ds.weight) for ds in cfg.datasets], cfg.weighting)
    # All exact quantiles in one set of passes over each dataset's data.
    resolve_all([c for f in [*finals.values(), combined] for c in f.blocks], cfg.quantiles)
    return build_artifact(
        config=cfg.resolved(), horizon=cfg.horizon, quantiles=cfg.quantiles, weighting=cfg.weighting,
        datasets={ds.name: (finals[ds.name], {"fingerprint": fingerprints[ds.name], "domain": ds.domain,
                                              "weight": ds.weight}) for ds in cfg.datasets},
        combined=combined,
    )


@dataclass
class Staleness:
    """How an artifact differs from what ``cfg`` and its datasets would give now."""

    stale: bool
    config_keys: list[str]          # top-level config keys that changed (gate-only keys ignored)
    datasets: dict[str, str]        # dataset -> "changed" | "added" | "removed"

    def describe(self) -> str:
        parts = [f"config keys {', '.join(self.config_keys)}"] if self.config_keys else []
        parts += [f"dataset {name} {how}" for name, how in self.datasets.items()]
        return "; ".join(parts) or "its fingerprint does not match this config and these datasets"


def staleness(cfg: Config, doc: Mapping) -> Staleness:
    """Compare an artifact document with the current config and datasets (reads no data)."""
    from stepnorm.artifact import GATE_ONLY_KEYS, artifact_fingerprint, canonical_json
    from stepnorm.sources import dataset_fingerprint

    current, recorded = cfg.resolved(), doc.get("config", {})
    keys = sorted(k for k in (set(current) | set(recorded)) - set(GATE_ONLY_KEYS)
                  if canonical_json(current.get(k)) != canonical_json(recorded.get(k)))
    now = {ds.name: dataset_fingerprint(cfg, ds) for ds in cfg.datasets}
    changes = {}
    for name, fp in now.items():
        old = doc["datasets"].get(name, {}).get("fingerprint")
        if old is None:
            changes[name] = "added"
        elif old != fp:
            changes[name] = "changed"
    for name in doc["datasets"]:
        if name not in now:
            changes[name] = "removed"
    return Staleness(artifact_fingerprint(current, now) != doc["fingerprint"], keys, changes)
