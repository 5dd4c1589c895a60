"""torch ``Normalize`` / ``Unnormalize`` modules with the semantics of the numpy ``Normalizer``.

The affine parameters (``NormParams``: center, scale, active/degenerate/empty masks) of the
global ``[D]`` and per-timestep ``[H, D]`` statistics are buffers, so they travel with
``state_dict`` and move with ``.to(device)``. Everything is elementwise over broadcast
parameters: a chunk ``[..., h, D]`` uses the first ``h`` rows at once (no loop over timesteps),
``h > H`` is an error, degenerate dims never divide, and dims the mask leaves off pass through.
The shape rules and the formula are the numpy module's (``select_rows``, ``affine``); this module
supplies only torch's array operations. ``from_artifact`` follows the artifact's per-timestep
decision.

Floating buffers are created in ``dtype`` (default: torch's default dtype, float32, which every
device supports) and follow ``.to(dtype)``; each call computes in the wider of the input's and the
buffers' dtype and returns the input's floating dtype. Build with ``dtype=torch.float64`` to match
the numpy ``Normalizer`` bit for bit (float32 statistics round them to 7 digits).

Example::

    from stepnorm.artifact import read_artifact
    from stepnorm.torch_norm import Normalize, Unnormalize

    art = read_artifact("stats_dir")
    normalize = Normalize.from_artifact(art)      # mode, mask, clip and decision from the artifact
    unnormalize = Unnormalize.from_artifact(art)
    y = normalize(actions)            # actions [B, H, D] -> the decision's statistics
    x = unnormalize(model_output)
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

from stepnorm.normalize import ArrayOps, NormParams, Normalizer, affine, pick

_FIELDS = ("center", "scale", "active", "degenerate", "empty")
_OPS = ArrayOps(torch.where, torch.clamp)


class _AffineNorm(nn.Module):
    """Shared buffers and parameter selection; subclasses implement ``forward``."""

    def __init__(self, global_params: NormParams, per_timestep_params: NormParams | None = None, *,
                 clip: bool = False, clip_bound: float = 1.0, dtype: torch.dtype | None = None,
                 allow_nonfinite: bool = False):
        super().__init__()
        # As the numpy Normalizer: NaN/Inf input raises (a check that synchronizes with the device
        # once per call) unless allowed, so an Inf never passes as the clip bound.
        self.allow_nonfinite = bool(allow_nonfinite)
        dtype = dtype or torch.get_default_dtype()
        self._register("global", global_params, dtype)
        self.has_per_timestep = per_timestep_params is not None
        if per_timestep_params is not None:
            self._register("per_timestep", per_timestep_params, dtype)
        # The clip bound is a buffer (inf when off) so that state_dict carries the setting too.
        self.register_buffer("clip_bound", torch.tensor(float(clip_bound) if clip else float("inf"), dtype=dtype))

    def _register(self, prefix: str, params: NormParams, dtype: torch.dtype) -> None:
        for name in _FIELDS:
            value = np.asarray(getattr(params, name))
            self.register_buffer(f"{prefix}_{name}",
                                 torch.as_tensor(value.copy(), dtype=torch.bool if value.dtype == bool else dtype))

    @classmethod
    def from_normalizer(cls, normalizer: Normalizer, dtype: torch.dtype | None = None):
        """The module equivalent of a numpy ``Normalizer`` (same parameters, clip and horizon)."""
        return cls(normalizer.global_params, normalizer.per_timestep_params, clip=normalizer.clip,
                   clip_bound=normalizer.clip_bound, dtype=dtype, allow_nonfinite=normalizer.allow_nonfinite)

    @classmethod
    def from_stats(cls, global_stats: Mapping[str, np.ndarray], per_timestep: Mapping[str, np.ndarray] | None = None,
                   dtype: torch.dtype | None = None, **normalizer_kwargs):
        """From STATS blocks; keyword arguments as for ``Normalizer`` (mode, mask, clip, ...)."""
        return cls.from_normalizer(Normalizer(global_stats, per_timestep, **normalizer_kwargs), dtype)

    @classmethod
    def from_artifact(cls, artifact, key: str = "action", dataset: str | None = None,
                      per_timestep: bool | None = None, dtype: torch.dtype | None = None, **normalizer_kwargs):
        """From an ``Artifact`` (combined or one dataset's statistics), as ``Normalizer.from_artifact``:
        ``per_timestep`` None follows the artifact's decision; mode, mask and clip default to its config."""
        return cls.from_normalizer(Normalizer.from_artifact(artifact, key, dataset, per_timestep, **normalizer_kwargs),
                                   dtype)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor]):
        """Rebuild a module from its ``state_dict`` alone (e.g. at inference, without the artifact)."""
        def params(prefix):
            return NormParams(*(state_dict[f"{prefix}_{n}"].cpu().numpy() for n in _FIELDS))

        pt = params("per_timestep") if "per_timestep_center" in state_dict else None
        bound = float(state_dict["clip_bound"])
        module = cls(params("global"), pt, clip=bool(np.isfinite(bound)), clip_bound=bound,
                     dtype=state_dict["global_center"].dtype)
        module.load_state_dict(state_dict)
        return module

    @property
    def dim(self) -> int:
        return int(self.global_center.shape[-1])

    @property
    def horizon(self) -> int | None:
        """``H`` of the per-timestep statistics, or None."""
        return int(self.per_timestep_center.shape[0]) if self.has_per_timestep else None

    def _params(self, x: torch.Tensor, chunked: bool | None) -> NormParams:
        def params(prefix):
            return NormParams(*(getattr(self, f"{prefix}_{n}") for n in _FIELDS))

        return pick(params("global"), params("per_timestep") if self.has_per_timestep else None, x.shape, chunked)

    def _affine(self, x: torch.Tensor, chunked: bool | None, inverse: bool) -> torch.Tensor:
        if not self.allow_nonfinite and x.is_floating_point() and not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x)).sum())
            raise ValueError(f"input holds {bad} non-finite value(s) (NaN/Inf); pass finite values or build the "
                             f"module with allow_nonfinite=True")
        p = self._params(x, chunked)
        dtype, out_dtype = self._compute_dtype(x)
        p = NormParams(p.center.to(dtype), p.scale.to(dtype), p.active, p.degenerate, p.empty)
        return affine(x.to(dtype), p, self.clip_bound.to(dtype), inverse, _OPS).to(out_dtype)

    def _compute_dtype(self, x: torch.Tensor) -> tuple[torch.dtype, torch.dtype]:
        """(dtype to compute in, dtype to return)."""
        out = x.dtype if x.is_floating_point() else self.global_center.dtype
        return torch.promote_types(out, self.global_center.dtype), out

    def extra_repr(self) -> str:
        clip = float(self.clip_bound)
        return f"dim={self.dim}, horizon={self.horizon}, clip={clip if np.isfinite(clip) else None}"


class Normalize(_AffineNorm):
    """``y = (x - center) / scale`` on active dims; see the module docstring.

    ``forward(x, chunked=None)``: shapes as for the numpy ``Normalizer`` (``select_rows``): chunks
    ``[..., B, h, D]`` per position when the module has per-timestep statistics, ``[B, D]`` needs
    ``chunked`` then (``chunked=False``: single actions with the ``[D]`` statistics).
    """

    def forward(self, x: torch.Tensor, chunked: bool | None = None) -> torch.Tensor:
        return self._affine(x, chunked, inverse=False)


class Unnormalize(_AffineNorm):
    """Inverse of ``Normalize`` on unclipped values; degenerate dims return the center, empty NaN."""

    def forward(self, y: torch.Tensor, chunked: bool | None = None) -> torch.Tensor:
        return self._affine(y, chunked, inverse=True)
