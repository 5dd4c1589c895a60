"""The YAML config (SPEC section 7): parsing and validation with one-line errors.

Relative dataset paths are relative to the config file. Every problem raises ConfigError naming
the config file and the key at fault.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stepnorm import schemas
from stepnorm.errors import ConfigError
from stepnorm.normalize import Decision, resolve_decision
from stepnorm.paths import is_remote
from stepnorm.stats.accumulator import AccumulatorSpec
from stepnorm.stats.combine import quantile_key
from stepnorm.stats.exact import DEFAULT_SAMPLE_K as DEFAULT_SKETCH_K

# The choices and limits are stated once, in the schema (resource limits are checked before any
# work: chunk lengths of real policies are <= a few hundred; sketch_k values are kept per cell,
# 16 bytes each, as its bracketing sample).
_SCHEMA = schemas.schema("config")
_DATASET = _SCHEMA["$defs"]["dataset"]["properties"]
IMAGE_INPUTS = tuple(_SCHEMA["properties"]["model"]["properties"]["image_input"]["enum"])
FORMATS = tuple(_DATASET["format"]["enum"])
DOMAINS = tuple(_DATASET["domain"]["enum"])
NORMALIZE_WITH = tuple(_SCHEMA["properties"]["normalize_with"]["enum"])
MAX_HORIZON = _SCHEMA["properties"]["horizon"]["maximum"]
MAX_SKETCH_K = _SCHEMA["properties"]["sketch_k"]["maximum"]
# Dataset names become TFDS dataset and file names.
_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass
class NormSpec:
    """How one key is normalized.

    ``per_timestep`` (actions only): ``auto`` (on with a delta_mask), True or False; see
    ``stepnorm.normalize.resolve_decision``.
    """

    mode: str = "mean_std"
    mask: list[bool] | None = None
    clip: bool | None = None
    per_timestep: str | bool = "auto"


@dataclass
class DatasetConfig:
    name: str
    format: str
    path: str
    split: str = "train"  # the split the statistics are computed from
    # Every split `stepnorm normalize` writes into the one output TFDS dataset (default: [split]).
    splits: list[str] = field(default_factory=list)
    weight: float = 1.0
    domain: str = "real"
    action_key: str | list[str] = "action"  # a list (rlds): step keys concatenated in order
    state_key: str | list[str] | None = None
    image_keys: list[str] = field(default_factory=list)
    gripper_dims: list[int] = field(default_factory=list)
    position_dims: list[int] = field(default_factory=list)
    transforms: list[dict] = field(default_factory=list)
    max_frames: int | None = None

    @property
    def is_remote(self) -> bool:
        """Whether the dataset is read from a URL (``gs://...``) rather than a local directory."""
        return is_remote(self.path)

    @property
    def output_splits(self) -> list[str]:
        """The splits written by ``stepnorm normalize``, in order (the statistics' split first
        unless listed otherwise)."""
        return list(self.splits) or [self.split]


def output_split_name(split: str) -> str:
    """The output name of a TFDS split string: ``train[:90%]`` -> ``train``."""
    return split.split("[")[0]


def check_output_names(cfg: "Config") -> None:
    """ConfigError when an output dataset name is a TFDS catalog name (e.g. ``bridge``).

    Octo's and dlimp's loaders call ``tfds.builder(name, data_dir=...)``: a registered name picks
    the catalog's builder, which tries to download the catalog dataset instead of reading ours.
    Needs TensorFlow Datasets, so it runs for the commands that write TFDS output.
    """
    import tensorflow_datasets as tfds

    catalog = set(tfds.list_builders(with_community_datasets=False))
    for ds in cfg.datasets:
        if ds.name in catalog:
            raise ConfigError(cfg.path, f"datasets.{ds.name}: the output dataset name {ds.name!r} is a TFDS catalog "
                                        f"name, so Octo/dlimp (tfds.builder) would load the catalog dataset; rename it, "
                                        f"e.g. {_free_name(ds.name, catalog)!r}")


def _free_name(name: str, catalog: set) -> str:
    for suffix in ("_stepnorm", "_local", "_own"):
        if name + suffix not in catalog:
            return name + suffix
    return name + "_" + "x" * 8


@dataclass
class Config:
    horizon: int
    datasets: list[DatasetConfig]
    quantiles: list[float] = field(default_factory=lambda: [0.01, 0.99])
    weighting: str = "samples"
    delta_mask: list[bool] | None = None
    normalization: dict[str, NormSpec] = field(default_factory=lambda: {"action": NormSpec("q01_q99")})
    normalize_with: str = "combined"
    model: dict[str, Any] = field(default_factory=lambda: {"image_input": "uint8"})
    validators: dict[str, Any] = field(default_factory=dict)
    sketch_k: int = DEFAULT_SKETCH_K
    path: str | None = None

    def resolved(self) -> dict:
        """The config as plain data, with absolute paths (recorded in the artifact)."""
        out = asdict(self)
        out.pop("path")
        return out

    def action_decision(self) -> Decision:
        """The one per-timestep decision for this config's actions (and which block it uses)."""
        spec = self.normalization.get("action", NormSpec())
        return resolve_decision(spec.per_timestep, self.delta_mask)

    def accumulator_spec(self) -> AccumulatorSpec:
        """What the accumulators compute (horizon, delta_mask, sample size)."""
        return AccumulatorSpec(self.horizon, None if self.delta_mask is None else tuple(self.delta_mask), self.sketch_k)

    def statistics_config(self) -> dict:
        """What the statistics depend on (part of every dataset's fingerprint): the accumulator
        spec's fields and the quantiles, which are selected from the accumulated data."""
        spec = self.accumulator_spec()
        return {"horizon": spec.horizon, "delta_mask": None if spec.delta_mask is None else list(spec.delta_mask),
                "sketch_k": spec.sketch_k, "quantiles": self.quantiles}


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice in one mapping is an error (YAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise ConfigError(None, f"key {key!r} appears twice in one mapping at line {key_node.start_mark.line + 1}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | os.PathLike) -> Config:
    """Read and validate a config file."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(str(p), "config file does not exist") from None
    except IsADirectoryError:
        raise ConfigError(str(p), "is a directory, not a config file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(p), f"is not UTF-8 text (byte {exc.start}); a config is a YAML file") from None
    except OSError as exc:
        raise ConfigError(str(p), f"cannot read the config file ({exc.strerror})") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except ConfigError as exc:
        raise ConfigError(str(p), exc.problem) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(str(p), f"not valid YAML{at}") from None
    return parse_config(raw, where=str(p), base_dir=p.resolve().parent)


def parse_config(raw: Any, where: str = "<config>", base_dir: Path | None = None) -> Config:
    """Validate a config mapping; ``base_dir`` resolves relative dataset paths.

    Structure and types are checked against ``schemas/config.schema.json`` first; what follows
    checks the rules that relate fields to each other (and dataset paths to the filesystem).
    """
    if not isinstance(raw, dict):
        raise ConfigError(where, "config must be a mapping")
    problem = schemas.first_problem(raw, "config")
    if problem is not None:
        raise ConfigError(where, problem)
    horizon = raw["horizon"]
    quantiles = raw.get("quantiles", [0.01, 0.99])
    for q in quantiles:
        try:
            quantile_key(float(q))
        except (TypeError, ValueError) as exc:
            raise ConfigError(where, f"quantiles: {exc}") from None
    quantiles = sorted({float(q) for q in quantiles})
    weighting = raw.get("weighting", "samples")
    delta_mask = raw.get("delta_mask")
    normalization = {}
    for key, spec in raw.get("normalization", {"action": {"mode": "q01_q99"}}).items():
        per_timestep = spec.get("per_timestep", "auto")
        if key != "action" and per_timestep != "auto":
            raise ConfigError(where, f"normalization.{key}.per_timestep: only actions have per-timestep statistics")
        normalization[key] = NormSpec(spec.get("mode", "mean_std"), spec.get("mask"), spec.get("clip"), per_timestep)
    needs_q = any(s.mode == "q01_q99" for s in normalization.values())
    if needs_q and not {0.01, 0.99} <= set(quantiles):
        raise ConfigError(where, "normalization mode q01_q99 needs 0.01 and 0.99 in quantiles")
    action_mask = normalization.get("action", NormSpec()).mask
    if delta_mask is not None and action_mask is not None and len(delta_mask) != len(action_mask):
        raise ConfigError(
            where, f"delta_mask has {len(delta_mask)} entries but normalization.action.mask has {len(action_mask)}"
        )
    model = {"image_input": (raw.get("model") or {}).get("image_input", "uint8")}
    datasets = _datasets(raw["datasets"], where, base_dir)
    # gripper_dims index the action; where the config fixes the action's width, check them now.
    width = len(delta_mask) if delta_mask is not None else (len(action_mask) if action_mask is not None else None)
    for ds in datasets:
        bad = [d for d in ds.gripper_dims if width is not None and d >= width]
        if bad:
            raise ConfigError(where, f"datasets.{ds.name}.gripper_dims {bad} out of range for {width} action dims")
    return Config(horizon=horizon, datasets=datasets, quantiles=quantiles, weighting=weighting,
                  delta_mask=delta_mask, normalization=normalization,
                  normalize_with=raw.get("normalize_with", "combined"), model=model,
                  validators=raw.get("validators") or {}, sketch_k=raw.get("sketch_k", DEFAULT_SKETCH_K), path=where)


def _datasets(raw: list, where: str, base_dir: Path | None) -> list[DatasetConfig]:
    out, names = [], set()
    for i, item in enumerate(raw):
        name = item["name"]
        if not _NAME.fullmatch(name):
            suggestion = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")
            suggestion = f"; e.g. {suggestion!r}" if suggestion and suggestion[0].isalpha() else ""
            raise ConfigError(where, f"datasets[{i}].name {name!r} is not a valid dataset name: use lowercase ASCII "
                                     f"letters, digits and underscores, starting with a letter (TFDS names the "
                                     f"output files after it){suggestion}")
        if name in names:
            raise ConfigError(where, f"dataset name {name!r} appears twice")
        names.add(name)
        label = f"datasets.{name}"
        path = item["path"]
        if not is_remote(path):
            resolved = Path(path) if Path(path).is_absolute() or base_dir is None else base_dir / path
            resolved = resolved.resolve()
            if not resolved.exists():
                raise ConfigError(where, f"{label}.path {path!r} does not exist (resolved to {resolved})")
            path = str(resolved)
        weight = item.get("weight", 1.0)
        if not math.isfinite(weight):  # the schema's "> 0" lets NaN and Inf through
            raise ConfigError(where, f"{label}.weight must be a finite number > 0, got {weight!r}")
        split, splits = _splits(item, where, label)
        action_key = _step_keys(item.get("action_key", "action"), item["format"], where, f"{label}.action_key")
        state_key = item.get("state_key")
        if state_key is not None:
            state_key = _step_keys(state_key, item["format"], where, f"{label}.state_key")
        max_frames = item.get("max_frames")
        if max_frames is not None and item["format"] != "lerobot":
            raise ConfigError(where, f"{label}.max_frames applies to lerobot datasets; for rlds use a split "
                                     f"slice such as 'train[:10%]'")
        out.append(DatasetConfig(
            name=name, format=item["format"], path=path, split=split, splits=splits,
            weight=float(weight), domain=item.get("domain", "real"), action_key=action_key,
            state_key=state_key, image_keys=item.get("image_keys") or [], transforms=item.get("transforms") or [],
            max_frames=max_frames, gripper_dims=item.get("gripper_dims") or [],
            position_dims=item.get("position_dims") or [],
        ))
    return out


def _splits(item: dict, where: str, label: str) -> tuple[str, list[str]]:
    """``(statistics split, output splits)`` from ``split`` or ``splits`` (+ ``stats_split``).

    With ``splits``, the statistics split is ``stats_split`` (or ``split``, as a resolved config
    records it), default the first; an empty ``splits`` means just ``split``.
    """
    if not item.get("splits"):
        if "stats_split" in item:
            raise ConfigError(where, f"{label}.stats_split needs splits: [...] (it picks one of them)")
        return item.get("split", "train"), []
    splits = item["splits"]
    names = [output_split_name(x) for x in splits]
    if len(set(names)) != len(names):
        raise ConfigError(where, f"{label}.splits {splits} write the same output split twice ({names})")
    if item["format"] != "rlds" and len(splits) > 1:
        raise ConfigError(where, f"{label}.splits: {item['format']} datasets have one split; list one")
    chosen = {k: item[k] for k in ("stats_split", "split") if k in item}
    if len(set(chosen.values())) > 1:
        raise ConfigError(where, f"{label}: split {chosen['split']!r} and stats_split {chosen['stats_split']!r} "
                                 f"disagree (with splits, both name the statistics split)")
    stats_split = next(iter(chosen.values()), splits[0])
    if stats_split not in splits:
        raise ConfigError(where, f"{label}.stats_split {stats_split!r} is not one of splits {splits}")
    return stats_split, list(splits)


def _step_keys(value: str | list[str], fmt: str, where: str, label: str) -> str | list[str]:
    """One key, or (RLDS) a list of step keys whose values are concatenated in order."""
    if isinstance(value, str):
        return value
    if len(set(value)) != len(value):
        raise ConfigError(where, f"{label} lists a key twice: {value}")
    if fmt != "rlds":
        raise ConfigError(where, f"{label}: a list of keys is supported for rlds datasets; give one {fmt} column")
    return value[0] if len(value) == 1 else list(value)
