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

from stepnorm.errors import ConfigError
from stepnorm.normalize import MODES, PER_TIMESTEP_CHOICES, Decision, resolve_decision
from stepnorm.paths import is_remote
from stepnorm.stats.combine import WEIGHTINGS, quantile_key
from stepnorm.stats.exact import DEFAULT_SAMPLE_K as DEFAULT_SKETCH_K

IMAGE_INPUTS = ("uint8", "float01", "float_minus1_1", "float_minus05_05", "imagenet")
FORMATS = ("rlds", "lerobot")
DOMAINS = ("real", "sim")
NORMALIZE_WITH = ("combined", "per_dataset")
# Dataset names become TFDS dataset and file names.
_NAME = re.compile(r"[a-z][a-z0-9_]*")
# Resource limits, checked before any work: chunk lengths of real policies are <= a few hundred;
# sketch_k values are kept per cell (16 bytes each) as its bracketing sample.
MAX_HORIZON = 4096
MAX_SKETCH_K = 65535


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

    def statistics_config(self) -> dict:
        """What the statistics depend on (part of every dataset's cache key)."""
        return {"horizon": self.horizon, "quantiles": self.quantiles, "delta_mask": self.delta_mask,
                "sketch_k": self.sketch_k}


_TOP_KEYS = {"horizon", "quantiles", "weighting", "delta_mask", "normalization", "normalize_with", "model",
             "datasets", "validators", "sketch_k"}
_DATASET_KEYS = {f for f in DatasetConfig.__dataclass_fields__} | {"stats_split"}
_NORM_KEYS = {"mode", "mask", "clip", "per_timestep"}


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
    """Validate a config mapping; ``base_dir`` resolves relative dataset paths."""
    if not isinstance(raw, dict):
        raise ConfigError(where, "config must be a mapping")
    _no_unknown(raw, _TOP_KEYS, where, "")
    if "horizon" not in raw:
        raise ConfigError(where, "missing required key 'horizon'")
    horizon = _int(raw["horizon"], where, "horizon", minimum=1, maximum=MAX_HORIZON)
    quantiles = raw.get("quantiles", [0.01, 0.99])
    if not isinstance(quantiles, list) or not quantiles:
        raise ConfigError(where, f"quantiles must be a non-empty list, got {quantiles!r}")
    for q in quantiles:
        try:
            quantile_key(float(q))
        except (TypeError, ValueError) as exc:
            raise ConfigError(where, f"quantiles: {exc}") from None
    quantiles = sorted({float(q) for q in quantiles})
    weighting = raw.get("weighting", "samples")
    _choice(weighting, WEIGHTINGS, where, "weighting")
    delta_mask = raw.get("delta_mask")
    if delta_mask is not None:
        delta_mask = _bools(delta_mask, where, "delta_mask")
    normalization = {}
    raw_norm = raw.get("normalization", {"action": {"mode": "q01_q99"}})
    if not isinstance(raw_norm, dict):
        raise ConfigError(where, "normalization must be a mapping of key -> {mode, mask, clip}")
    _no_unknown(raw_norm, {"action", "state"}, where, "normalization.")
    for key, spec in raw_norm.items():
        if not isinstance(spec, dict):
            raise ConfigError(where, f"normalization.{key} must be a mapping")
        _no_unknown(spec, _NORM_KEYS, where, f"normalization.{key}.")
        mode = spec.get("mode", "mean_std")
        _choice(mode, MODES, where, f"normalization.{key}.mode")
        mask = _bools(spec["mask"], where, f"normalization.{key}.mask") if spec.get("mask") is not None else None
        clip = spec.get("clip")
        if clip is not None and not isinstance(clip, bool):
            raise ConfigError(where, f"normalization.{key}.clip must be true or false, got {clip!r}")
        per_timestep = spec.get("per_timestep", "auto")
        if per_timestep not in PER_TIMESTEP_CHOICES or (per_timestep != "auto" and not isinstance(per_timestep, bool)):
            raise ConfigError(where, f"normalization.{key}.per_timestep must be auto, true or false, got {per_timestep!r}")
        if key != "action" and per_timestep != "auto":
            raise ConfigError(where, f"normalization.{key}.per_timestep: only actions have per-timestep statistics")
        normalization[key] = NormSpec(mode, mask, clip, per_timestep)
    needs_q = any(s.mode == "q01_q99" for s in normalization.values())
    if needs_q and not {0.01, 0.99} <= set(quantiles):
        raise ConfigError(where, "normalization mode q01_q99 needs 0.01 and 0.99 in quantiles")
    action_mask = normalization.get("action", NormSpec()).mask
    if delta_mask is not None and action_mask is not None and len(delta_mask) != len(action_mask):
        raise ConfigError(
            where, f"delta_mask has {len(delta_mask)} entries but normalization.action.mask has {len(action_mask)}"
        )
    normalize_with = raw.get("normalize_with", "combined")
    _choice(normalize_with, NORMALIZE_WITH, where, "normalize_with")
    model = raw.get("model", {}) or {}
    if not isinstance(model, dict):
        raise ConfigError(where, "model must be a mapping")
    _no_unknown(model, {"image_input"}, where, "model.")
    model = {"image_input": model.get("image_input", "uint8")}
    _choice(model["image_input"], IMAGE_INPUTS, where, "model.image_input")
    validators = raw.get("validators", {}) or {}
    if not isinstance(validators, dict):
        raise ConfigError(where, "validators must be a mapping of validator name -> thresholds")
    sketch_k = _int(raw.get("sketch_k", DEFAULT_SKETCH_K), where, "sketch_k", minimum=8, maximum=MAX_SKETCH_K)
    datasets = _datasets(raw.get("datasets"), where, base_dir)
    # gripper_dims index the action; where the config fixes the action's width, check them now.
    width = len(delta_mask) if delta_mask is not None else (len(action_mask) if action_mask is not None else None)
    for ds in datasets:
        bad = [d for d in ds.gripper_dims if width is not None and d >= width]
        if bad:
            raise ConfigError(where, f"datasets.{ds.name}.gripper_dims {bad} out of range for {width} action dims")
    return Config(horizon=horizon, datasets=datasets, quantiles=quantiles, weighting=weighting,
                  delta_mask=delta_mask, normalization=normalization, normalize_with=normalize_with,
                  model=model, validators=validators, sketch_k=sketch_k, path=where)


def _datasets(raw: Any, where: str, base_dir: Path | None) -> list[DatasetConfig]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(where, "datasets must be a non-empty list")
    out, names = [], set()
    for i, item in enumerate(raw):
        label = f"datasets[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(where, f"{label} must be a mapping")
        _no_unknown(item, _DATASET_KEYS, where, f"{label}.")
        for key in ("name", "format", "path"):
            if key not in item:
                raise ConfigError(where, f"{label} is missing required key {key!r}")
        name = item["name"]
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            suggestion = re.sub(r"[^a-z0-9_]+", "_", str(name).lower()).strip("_")
            suggestion = f"; e.g. {suggestion!r}" if suggestion and suggestion[0].isalpha() else ""
            raise ConfigError(where, f"{label}.name {name!r} is not a valid dataset name: use lowercase ASCII "
                                     f"letters, digits and underscores, starting with a letter (TFDS names the "
                                     f"output files after it){suggestion}")
        if name in names:
            raise ConfigError(where, f"dataset name {name!r} appears twice")
        names.add(name)
        label = f"datasets.{name}"
        _choice(item["format"], FORMATS, where, f"{label}.format")
        _choice(item.get("domain", "real"), DOMAINS, where, f"{label}.domain")
        path = str(item["path"])
        if not is_remote(path):
            resolved = Path(path) if Path(path).is_absolute() or base_dir is None else base_dir / path
            resolved = resolved.resolve()
            if not resolved.exists():
                raise ConfigError(where, f"{label}.path {path!r} does not exist (resolved to {resolved})")
            path = str(resolved)
        weight = item.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
            raise ConfigError(where, f"{label}.weight must be a finite number > 0, got {weight!r}")
        if "split" in item and (not isinstance(item["split"], str) or not item["split"]):
            raise ConfigError(where, f"{label}.split must be a non-empty string, got {item['split']!r}")
        split, splits = _splits(item, where, label)
        action_key = _step_keys(item.get("action_key", "action"), item["format"], where, f"{label}.action_key")
        state_key = item.get("state_key")
        if state_key is not None:
            state_key = _step_keys(state_key, item["format"], where, f"{label}.state_key")
        image_keys = item.get("image_keys", []) or []
        if not isinstance(image_keys, list) or not all(isinstance(k, str) for k in image_keys):
            raise ConfigError(where, f"{label}.image_keys must be a list of strings")
        dims = {}
        for key in ("gripper_dims", "position_dims"):
            value = item.get(key, []) or []
            if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
                raise ConfigError(where, f"{label}.{key} must be a list of non-negative integers, got {value!r}")
            dims[key] = value
        transforms = item.get("transforms", []) or []
        if not isinstance(transforms, list) or not all(isinstance(t, dict) for t in transforms):
            raise ConfigError(where, f"{label}.transforms must be a list of mappings")
        max_frames = item.get("max_frames")
        if max_frames is not None:
            max_frames = _int(max_frames, where, f"{label}.max_frames", minimum=1)
            if item["format"] != "lerobot":
                raise ConfigError(where, f"{label}.max_frames applies to lerobot datasets; for rlds use a split "
                                         f"slice such as 'train[:10%]'")
        out.append(DatasetConfig(
            name=name, format=item["format"], path=path, split=split, splits=splits,
            weight=float(weight), domain=item.get("domain", "real"), action_key=action_key,
            state_key=state_key, image_keys=image_keys, transforms=transforms, max_frames=max_frames, **dims,
        ))
    return out


def _splits(item: dict, where: str, label: str) -> tuple[str, list[str]]:
    """``(statistics split, output splits)`` from ``split`` or ``splits`` (+ ``stats_split``).

    With ``splits``, the statistics split is ``stats_split`` (or ``split``, as a resolved config
    records it), default the first; an empty ``splits`` means just ``split``.
    """
    if not item.get("splits"):
        if "splits" in item and item["splits"] not in (None, []):
            raise ConfigError(where, f"{label}.splits must be a non-empty list of split names, got {item['splits']!r}")
        if "stats_split" in item:
            raise ConfigError(where, f"{label}.stats_split needs splits: [...] (it picks one of them)")
        return item.get("split", "train"), []
    splits = item["splits"]
    if not isinstance(splits, list) or not all(isinstance(x, str) and x for x in splits):
        raise ConfigError(where, f"{label}.splits must be a non-empty list of split names, got {splits!r}")
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


def _step_keys(value: Any, fmt: str, where: str, label: str) -> str | list[str]:
    """One key, or (RLDS) a list of step keys whose values are concatenated in order."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and value and all(isinstance(k, str) and k for k in value):
        if len(set(value)) != len(value):
            raise ConfigError(where, f"{label} lists a key twice: {value}")
        if fmt != "rlds":
            raise ConfigError(where, f"{label}: a list of keys is supported for rlds datasets; give one {fmt} column")
        return value[0] if len(value) == 1 else list(value)
    raise ConfigError(where, f"{label} must be a non-empty string or (rlds) a list of them, got {value!r}")


def _no_unknown(raw: dict, allowed: set, where: str, prefix: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(where, f"unknown key {prefix}{unknown[0]} (allowed: {', '.join(sorted(allowed))})")


def _choice(value: Any, choices, where: str, key: str) -> None:
    if value not in choices:
        raise ConfigError(where, f"{key} must be one of {', '.join(choices)}, got {value!r}")


def _int(value: Any, where: str, key: str, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(where, f"{key} must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ConfigError(where, f"{key} must be at most {maximum}, got {value!r}")
    return value


def _bools(value: Any, where: str, key: str) -> list[bool]:
    if not isinstance(value, list) or not value or not all(isinstance(v, bool) for v in value):
        raise ConfigError(where, f"{key} must be a non-empty list of true/false, got {value!r}")
    return value
