"""The stats artifact (``stats.json``, format ``stepnorm.stats``, version 1): assemble it from
accumulators (``artifact_from_accumulators``), build, write, read, and tell how it differs from a
config and its datasets (``staleness``).

Layout of an artifact directory::

    DIR/stats.json                 the statistics (SPEC section 3), written last
    DIR/accumulators/<key>.acc     each dataset's mergeable accumulator (incremental regeneration)
    DIR/samples/<key>.sample       each dataset's bottom-k step/image sample (for validators)

The directory is assembled under a temporary name beside ``DIR`` and renamed into place, so a
reader sees the old artifact or the new one, never a half-written one.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
from pathlib import Path
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np

from stepnorm import __version__, outputs, schemas
from stepnorm.errors import ArtifactError, InputDataError, StaleArtifactError
from stepnorm.stats import ChunkStatsAccumulator, combine
from stepnorm.stats.combine import FinalStats, quantile_key, resolve_all

if TYPE_CHECKING:
    from stepnorm.config import Config
    from stepnorm.sources.base import Episode

FORMAT = "stepnorm.stats"
VERSION = 1
STATS_FILE = "stats.json"
ACCUMULATOR_DIR = "accumulators"
SAMPLE_DIR = "samples"
BASE_FIELDS = ("count", "mean", "std", "min", "max")


# -- fingerprints -------------------------------------------------------------------------------
def canonical_json(obj: Any) -> str:
    """Key-sorted, whitespace-free JSON: the same object always gives the same text."""
    return json.dumps(jsonable(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


def fingerprint(obj: Any) -> str:
    """sha256 hex of ``canonical_json(obj)``."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


# Config sections that only steer the gate: editing a threshold must not make statistics stale.
GATE_ONLY_KEYS = ("validators", "model")


def artifact_fingerprint(config: Mapping, dataset_fingerprints: Mapping[str, str]) -> str:
    """The artifact's fingerprint: the resolved config (less its gate-only sections) plus every
    dataset's fingerprint."""
    relevant = {k: v for k, v in config.items() if k not in GATE_ONLY_KEYS}
    return fingerprint({"config": relevant, "datasets": dict(dataset_fingerprints)})


# -- JSON conversion ------------------------------------------------------------------------------
def jsonable(obj: Any) -> Any:
    """Plain JSON data from numpy values: arrays -> lists, NaN/Inf -> None (strict JSON has no NaN)."""
    # Leaves first, by exact type: artifacts hold ~10^4 floats and the ABC checks below are slow.
    kind = type(obj)
    if kind is float:
        return obj if math.isfinite(obj) else None
    if kind is bool or kind is int or kind is str or obj is None:
        return obj
    if kind is dict or isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if kind is list or isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    return obj


def _stats_block(final: FinalStats, quantiles) -> dict:
    return jsonable(final.to_dict(quantiles))


def build_artifact(
    *,
    config: Mapping,
    horizon: int,
    quantiles,
    weighting: str,
    datasets: Mapping[str, tuple[FinalStats, Mapping[str, Any]]],
    combined: FinalStats,
) -> dict:
    """The ``stats.json`` document.

    Args:
        config: the resolved config (recorded and fingerprinted).
        datasets: per name, ``(FinalStats, {"fingerprint", "domain", "weight"})``.
        combined: the mixture statistics.
    """
    fingerprints = {name: meta["fingerprint"] for name, (_, meta) in datasets.items()}
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "fingerprint": artifact_fingerprint(config, fingerprints),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tool_version": __version__,
        "config": jsonable(config),
        "horizon": int(horizon),
        "quantiles": [float(q) for q in quantiles],
        "datasets": {},
        "action_statistics": _decision_record(config),
        "combined": {"weighting": weighting, **_stats_block(combined, quantiles)},
    }
    for name, (final, meta) in datasets.items():
        doc["datasets"][name] = {
            "fingerprint": meta["fingerprint"],
            "domain": meta.get("domain", "real"),
            "weight": float(meta.get("weight", 1.0)),
            **_stats_block(final, quantiles),
        }
    validate_artifact(doc, "<new artifact>")
    return doc


def _decision_record(config: Mapping) -> dict:
    """The config's per-timestep decision and the block it uses (``stepnorm.normalize``)."""
    from stepnorm.normalize import resolve_decision

    spec = (config.get("normalization") or {}).get("action") or {}
    return resolve_decision(spec.get("per_timestep", "auto"), config.get("delta_mask")).as_dict()


# -- writing --------------------------------------------------------------------------------------
def numbers_checksum(doc: Mapping) -> str:
    """sha256 over the statistics an artifact holds (every dataset block and the combined block).

    Recorded as ``checksum`` in stats.json: a number edited by hand afterwards no longer matches.
    """
    def numbers(block):
        return {k: v for k, v in block.items() if k not in _DESCRIPTIVE} if isinstance(block, Mapping) else block

    datasets = doc.get("datasets")
    datasets = {n: numbers(b) for n, b in datasets.items()} if isinstance(datasets, Mapping) else datasets
    return fingerprint({"datasets": datasets, "combined": numbers(doc.get("combined")),
                        "horizon": doc.get("horizon"), "quantiles": doc.get("quantiles")})


# What a statistics block says about its data rather than measures (checked by the fingerprint).
_DESCRIPTIVE = ("fingerprint", "domain", "weight", "weighting")


def fill_artifact(directory: Path, doc: Mapping, accumulators: Mapping[str, bytes] | None = None,
                  samples: Mapping[str, bytes] | None = None) -> Path:
    """Write ``doc`` (stats.json, last) and the accumulator/sample files into an empty ``directory``."""
    for sub, suffix, blobs in ((ACCUMULATOR_DIR, "acc", accumulators), (SAMPLE_DIR, "sample", samples)):
        if blobs:
            (directory / sub).mkdir()
            for name, blob in blobs.items():
                (directory / sub / f"{name}.{suffix}").write_bytes(blob)
    doc = dict(doc)
    doc["checksum"] = numbers_checksum(doc)
    text = json.dumps(jsonable(doc), indent=1, allow_nan=False)
    (directory / STATS_FILE).write_text(text + "\n")
    return directory / STATS_FILE


def write_artifact(out_dir: str | os.PathLike, doc: Mapping, accumulators: Mapping[str, bytes] | None = None,
                   samples: Mapping[str, bytes] | None = None, inputs=()) -> Path:
    """Write ``doc`` (and accumulators, samples) to ``out_dir`` atomically; returns the stats.json path.

    ``out_dir`` must be absent, empty or an earlier stats artifact (see ``stepnorm.outputs``).
    """
    with outputs.writing(out_dir, "stats", inputs) as staging:
        fill_artifact(staging, doc, accumulators, samples)
    return Path(out_dir).resolve() / STATS_FILE


# -- reading and validation -----------------------------------------------------------------------
def read_artifact(path: str | os.PathLike) -> "Artifact":
    """Read and validate an artifact (its directory or its stats.json)."""
    p = Path(path)
    file = p / STATS_FILE if p.is_dir() else p
    if not file.exists():
        raise ArtifactError(str(file), "no stats artifact here (run `stepnorm stats CONFIG --out DIR` first)")
    if not file.is_file():
        raise ArtifactError(str(file), "is not a file (a stats artifact's stats.json is a JSON file)")
    try:
        raw = file.read_bytes()
        doc = json.loads(raw)
    except OSError as exc:
        raise ArtifactError(str(file), f"cannot read it ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(str(file), f"not valid JSON ({exc})") from None
    validate_artifact(doc, str(file))
    return Artifact(doc, file, raw)


def validate_artifact(doc: Any, where: str) -> None:
    """Check format and version, then the structure (``schemas/stats.schema.json``), then what a
    schema cannot say: every array's shape, the quantile fields, the decision, values, checksum.
    Raise ArtifactError."""
    if not isinstance(doc, dict):
        raise ArtifactError(where, "artifact is not a JSON object")
    # Before the schema: another format or version may have another structure altogether.
    if doc.get("format") != FORMAT:
        raise ArtifactError(where, f"format is {doc.get('format')!r}, expected {FORMAT!r}")
    if doc.get("version") != VERSION:
        raise ArtifactError(where, f"version {doc.get('version')!r} is not supported (this stepnorm reads {VERSION})")
    problem = schemas.first_problem(doc, "stats")
    if problem is not None:
        raise ArtifactError(where, problem)
    horizon = doc["horizon"]
    try:
        qkeys = [quantile_key(q) for q in doc["quantiles"]]
    except (TypeError, ValueError) as exc:
        raise ArtifactError(where, f"bad quantiles {doc['quantiles']!r}: {exc}") from None
    decision = doc.get("action_statistics")
    if decision is not None and (decision["block"] == "per_timestep") != decision["per_timestep"]:
        raise ArtifactError(where, f"action_statistics: block {decision['block']!r} contradicts per_timestep "
                                   f"{decision['per_timestep']}")
    if decision is not None:
        try:
            implied = _decision_record(doc["config"])
        except (ValueError, AttributeError) as exc:
            raise ArtifactError(where, f"config.normalization.action.per_timestep: {exc}") from None
        if (implied["per_timestep"], implied["block"]) != (decision["per_timestep"], decision["block"]):
            raise StaleArtifactError(where, f"the artifact was edited after it was computed (action_statistics "
                                            f"{decision['block']!r} does not match its config's decision "
                                            f"{implied['block']!r}); recompute it with `stepnorm stats`")
    fields = BASE_FIELDS + tuple(qkeys)
    dims: dict[str, int] = {}
    blocks = {f"datasets.{n}": b for n, b in doc["datasets"].items()}
    blocks["combined"] = doc["combined"]
    for bname, block in blocks.items():
        for key, kinds in (("action", ("global", "per_timestep", "pooled", "raw")), ("state", ("global",))):
            if key not in block:
                continue
            for kind in kinds:
                if kind not in block[key]:
                    continue  # only "raw" may be absent (the schema says): it exists with a delta_mask
                stats = block[key][kind]
                lead = (horizon,) if kind == "per_timestep" else ()
                for field in fields:
                    if field not in stats:
                        raise ArtifactError(where, f"{bname}.{key}.{kind} has no {field!r}")
                    shape = _shape(stats[field], f"{where}: {bname}.{key}.{kind}.{field}")
                    if field == "count":
                        if shape != lead:
                            raise ArtifactError(where, f"{bname}.{key}.{kind}.count has shape {list(shape)}, expected {list(lead)}")
                        continue
                    if len(shape) != len(lead) + 1 or shape[: len(lead)] != lead:
                        raise ArtifactError(
                            where, f"{bname}.{key}.{kind}.{field} has shape {list(shape)}, expected {list(lead) + ['D']}"
                        )
                    if dims.setdefault(key, shape[-1]) != shape[-1]:
                        raise ArtifactError(
                            where, f"{bname}.{key}.{kind}.{field} has {shape[-1]} dims, elsewhere {dims[key]}"
                        )
                _check_values(stats, f"{bname}.{key}.{kind}", where)
    if "checksum" in doc and doc["checksum"] != numbers_checksum(doc):
        raise ArtifactError(where, "its statistics do not match their checksum: the file was edited by hand or is "
                                   "corrupt; recompute it with `stepnorm stats`")


def _check_values(stats: Mapping, label: str, where: str) -> None:
    """Numbers no computation can give (a negative std or count, min above max): a hand-edited file."""
    arrays = {f: np.asarray(_nan(stats[f]), dtype=np.float64) for f in ("count", "std", "min", "max")}
    with np.errstate(invalid="ignore"):
        problems = [(np.any(arrays["count"] < 0), "a negative count"), (np.any(arrays["std"] < 0), "a negative std"),
                    (np.any(arrays["min"] > arrays["max"]), "min above max")]
    for bad, what in problems:
        if bad:
            raise ArtifactError(where, f"{label} has {what}: the file was edited by hand or is corrupt; recompute "
                                       f"it with `stepnorm stats`")


def _shape(value: Any, where: str) -> tuple[int, ...]:
    try:
        arr = np.asarray(_nan(value), dtype=np.float64)
    except (TypeError, ValueError):
        raise ArtifactError(where, "is not a rectangular numeric array") from None
    return arr.shape


def _nan(value: Any) -> Any:
    if value is None:
        return np.nan
    if isinstance(value, list):
        return [_nan(v) for v in value]
    return value


class Artifact:
    """A validated stats artifact."""

    def __init__(self, doc: dict, path: Path | None = None, raw: bytes | None = None):
        self.doc = doc
        self.path = path
        self.raw = raw  # the exact bytes read: a snapshot that a concurrent rewrite cannot change

    @property
    def directory(self) -> Path | None:
        return self.path.parent if self.path else None

    @property
    def horizon(self) -> int:
        return int(self.doc["horizon"])

    @property
    def quantiles(self) -> list[float]:
        return list(self.doc["quantiles"])

    @property
    def fingerprint(self) -> str:
        return self.doc["fingerprint"]

    @property
    def decision(self):
        """The per-timestep decision for actions (``stepnorm.normalize.Decision``)."""
        from stepnorm.normalize import action_decision

        return action_decision(self.doc)

    @property
    def dataset_names(self) -> list[str]:
        return list(self.doc["datasets"])

    def block(self, dataset: str | None = None) -> dict:
        """The ``combined`` block, or one dataset's."""
        if dataset is None:
            return self.doc["combined"]
        if dataset not in self.doc["datasets"]:
            raise ArtifactError(str(self.path), f"no dataset {dataset!r} (have {self.dataset_names})")
        return self.doc["datasets"][dataset]

    def stats(self, key: str = "action", kind: str = "global", dataset: str | None = None) -> dict[str, np.ndarray]:
        """One STATS block as float64 arrays (null -> NaN); ``kind`` in global/per_timestep/pooled."""
        block = self.block(dataset)
        if key not in block or kind not in block[key]:
            raise ArtifactError(str(self.path), f"no {key}.{kind} statistics for {dataset or 'combined'}")
        return {f: np.asarray(_nan(v), dtype=np.float64) for f, v in block[key][kind].items()}

    def _file(self, sub: str, name: str, suffix: str) -> Path | None:
        if self.directory is None or name not in self.doc["datasets"]:
            return None
        path = self.directory / sub / f"{name}-{self.doc['datasets'][name]['fingerprint']}.{suffix}"
        return path if path.exists() else None

    def accumulator_path(self, name: str) -> Path | None:
        """The cached accumulator of dataset ``name``, if the artifact directory has it."""
        return self._file(ACCUMULATOR_DIR, name, "acc")

    def sample(self, name: str):
        """Dataset ``name``'s ``DatasetSample`` (see stepnorm.samples), or None if absent."""
        from stepnorm.samples import DatasetSample

        path = self._file(SAMPLE_DIR, name, "sample")
        return DatasetSample.from_bytes(path.read_bytes()) if path else None


# -- from accumulators to an artifact, and how an artifact differs from a config ------------------
def accumulate(cfg: Config, name: str, episodes: Iterable[Episode]) -> ChunkStatsAccumulator:
    """One dataset's accumulator from its episodes (in-process; kept as ``acc.data`` so the exact
    quantiles can read them again)."""
    acc = ChunkStatsAccumulator(cfg.accumulator_spec(), name)
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
