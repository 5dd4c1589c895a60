"""openpi: per-timestep ``Normalize`` / ``Unnormalize`` data transforms (dict in, dict out).

openpi's own loader (``_load_norm_stats``) reads only ``norm_stats.json`` and its ``Normalize``
broadcasts one ``[D]`` vector over the whole action chunk. This module loads both files that
``stepnorm export --format openpi`` writes into an asset directory and applies the per-timestep
``[H, D]`` action statistics row by row (the normalizer in ``stepnorm.normalize``), keeping
openpi's transform protocol and conventions:

- ``__call__(data) -> data`` on a possibly nested dict (keys flattened with ``/`` as in openpi's
  ``apply_tree``), unbatched ``actions [h, D]`` as openpi's data loader gives them, or batched
  ``[B, h, D]``; ``state [Ds]`` (or ``[B, Ds]``) uses the ``[D]`` statistics;
- an ``action_horizon`` ``h`` shorter than the statistics' ``H`` uses their first ``h`` rows; a
  longer one is an error (the last row is never reused);
- actions padded to the model's action dim (openpi's ``PadStatesAndActions``, e.g. 32): the dims
  beyond the statistics pass through untouched (openpi pads mean 0 / std 1); fewer dims than the
  statistics use the first ones (openpi slices the statistics to the input);
- ``use_quantiles`` picks q01/q99 (pi0-FAST, pi0.5) or mean/std, as in openpi.

The formula is stepnorm's (no epsilon; degenerate dims normalize to 0 instead of exploding; no
mask and no clipping unless asked for, like openpi), so these transforms give the numbers
``stepnorm normalize`` and the other adapters give.

Usage in an openpi ``TrainConfig`` (see docs/integrations.md)::

    from stepnorm.integrations import openpi as stepnorm_openpi
    normalize, unnormalize = stepnorm_openpi.transforms_from_assets(assets_dir / asset_id, use_quantiles=True)
    # data transforms: ... -> DeltaActions -> normalize -> model transforms (padding) ...
    # output transforms: unnormalize -> AbsoluteActions -> ...
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from stepnorm.errors import ArtifactError
from stepnorm.exporters.openpi import GLOBAL_FILE, PER_TIMESTEP_FILE
from stepnorm.normalize import Normalizer

ACTIONS = "actions"


@dataclass(frozen=True)
class NormStats:
    """openpi's ``NormStats`` fields (``mean, std, q01, q99``), float64 arrays ``[D]`` or ``[H, D]``."""

    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray | None = None
    q99: np.ndarray | None = None

    def as_stats(self) -> dict[str, np.ndarray]:
        """The fields present, as a stepnorm STATS mapping."""
        return {k: v for k, v in (("mean", self.mean), ("std", self.std), ("q01", self.q01), ("q99", self.q99))
                if v is not None}


def _read(path: Path) -> dict[str, NormStats]:
    try:
        doc = json.loads(path.read_text())["norm_stats"]
        return {key: NormStats(**{f: None if v is None else np.asarray(v, np.float64) for f, v in stats.items()})
                for key, stats in doc.items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(str(path), f"not an openpi norm_stats file ({exc})") from None


def load_norm_stats(assets_dir: str | Path) -> tuple[dict[str, NormStats], NormStats | None]:
    """``(norm_stats.json entries, per-timestep actions or None)`` from an asset directory.

    The per-timestep file is optional (a config whose decision is off has none); when present
    its ``H`` must equal the ``actions`` rows it replaces.
    """
    directory = Path(assets_dir)
    if not (directory / GLOBAL_FILE).exists():
        raise ArtifactError(str(directory / GLOBAL_FILE), "no openpi norm stats here (run `stepnorm export "
                                                           "--format openpi --out DIR` into the asset directory)")
    stats = _read(directory / GLOBAL_FILE)
    per_timestep = None
    if (directory / PER_TIMESTEP_FILE).exists():
        per_timestep = _read(directory / PER_TIMESTEP_FILE).get(ACTIONS)
        if per_timestep is None or np.ndim(per_timestep.mean) != 2:
            raise ArtifactError(str(directory / PER_TIMESTEP_FILE), "needs [H, D] 'actions' statistics")
    return stats, per_timestep


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, path + "/"))
        else:
            out[path] = value
    return out


def _unflatten(flat: Mapping[str, Any]) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        *parents, leaf = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


@dataclass
class _PerTimestepTransform:
    norm_stats: Mapping[str, NormStats]
    per_timestep_actions: NormStats | None = None
    use_quantiles: bool = False
    strict: bool = False
    mask: Any = None
    clip: bool = False
    _normalizers: dict = field(default_factory=dict, init=False, repr=False)

    inverse = False

    def _normalizer(self, key: str) -> Normalizer:
        if key not in self._normalizers:
            mode = "q01_q99" if self.use_quantiles else "mean_std"
            base = self.norm_stats[key].as_stats()
            per_t = self.per_timestep_actions.as_stats() if key == ACTIONS and self.per_timestep_actions else None
            # Only the action dims carry the config's mask; the state is normalized whole.
            mask = self.mask if key == ACTIONS else None
            self._normalizers[key] = Normalizer(base, per_t, mode=mode, mask=mask, clip=self.clip)
        return self._normalizers[key]

    def _apply(self, key: str, x) -> np.ndarray:
        norm = self._normalizer(key)
        x = np.asarray(x)
        dim = norm.dim
        width = x.shape[-1]
        # Pad to the statistics' width (openpi slices its statistics to the input), apply, then
        # keep the input's dims; dims beyond the statistics (model padding) pass through.
        head = x[..., :dim]
        if width < dim:
            head = np.concatenate([head, np.zeros(head.shape[:-1] + (dim - width,), head.dtype)], axis=-1)
        chunked = key == ACTIONS and norm.per_timestep_params is not None
        if chunked and head.ndim < 2:
            raise ValueError(f"openpi actions must be a chunk [h, D] (or [B, h, D]), got shape {list(x.shape)}")
        out = (norm.unnormalize if self.inverse else norm.normalize)(head, chunked=chunked)
        out = out[..., :width]
        if width > dim:
            out = np.concatenate([out, x[..., dim:].astype(out.dtype)], axis=-1)
        return out

    def __call__(self, data: dict) -> dict:
        flat = _flatten(data)
        missing = [k for k in self.norm_stats if k not in flat]
        if missing and (self.strict or self.inverse):
            raise ValueError(f"norm stats key(s) {missing} not found in the data (keys: {sorted(flat)})")
        return _unflatten({k: self._apply(k, v) if k in self.norm_stats else v for k, v in flat.items()})


class PerTimestepNormalize(_PerTimestepTransform):
    """openpi-style ``Normalize`` that normalizes ``actions`` chunks per position.

    Args:
        norm_stats: ``{key: NormStats}`` (``norm_stats.json``; keys as flattened data paths).
        per_timestep_actions: the ``[H, D]`` ``actions`` statistics, or None (one vector).
        use_quantiles: q01/q99 bounds instead of mean/std.
        strict: raise when a key of ``norm_stats`` is missing from the data (as openpi's).
        mask: action dims to normalize (False passes a dim through), e.g. the gripper.
        clip: clamp normalized values (openpi never clips).
    """


class PerTimestepUnnormalize(_PerTimestepTransform):
    """The inverse of ``PerTimestepNormalize``, for openpi's output transforms (always strict).

    Model outputs padded to the model's action dim keep their extra dims untouched.
    """

    inverse = True


def transforms_from_assets(assets_dir: str | Path, use_quantiles: bool = False, **kwargs
                           ) -> tuple[PerTimestepNormalize, PerTimestepUnnormalize]:
    """``(normalize, unnormalize)`` transforms from an openpi asset directory (both files)."""
    stats, per_timestep = load_norm_stats(assets_dir)
    return (PerTimestepNormalize(stats, per_timestep, use_quantiles, **kwargs),
            PerTimestepUnnormalize(stats, per_timestep, use_quantiles, **{k: v for k, v in kwargs.items()
                                                                          if k != "strict"}))
