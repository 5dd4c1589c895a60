"""jax ``normalize`` / ``unnormalize``: pure functions of a parameter pytree, with the numpy
``Normalizer``'s semantics (per-timestep rows for chunks, mask pass-through, degenerate dims to 0,
clipping, no reuse of the last row for longer chunks).

The pytree is ``{"global": P, "per_timestep": P or None, "clip_bound": scalar}`` with
``P = {"center", "scale", "active", "degenerate", "empty"}`` (``[D]`` or ``[H, D]``); the clip
setting lives in the tree (``inf`` when off), so the functions jit without static arguments::

    params = params_from_artifact(read_artifact("stats_dir"))
    y = jax.jit(normalize)(params, actions)          # actions [B, H, D]

``chunked`` selects the statistics from the tree's structure and the input's shape, both static
under jit (the rules are the numpy module's ``select_rows``; the formula is its ``affine``, with
jax's array operations); pass it as a static argument if you set it. ``params_from_artifact``
follows the artifact's per-timestep decision.

Non-finite input: a jitted function cannot raise on values, so here NaN/Inf go through the formula
(NaN stays NaN; Inf is clipped to the bound when clipping is on), as the numpy ``Normalizer`` does
with ``allow_nonfinite=True``. Check inputs with ``jnp.isfinite`` (or ``jax.experimental.checkify``)
where that matters.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from stepnorm.normalize import ArrayOps, NormParams, Normalizer, affine, pick

_FIELDS = ("center", "scale", "active", "degenerate", "empty")
_OPS = ArrayOps(jnp.where, jnp.clip)


def _tree(params: NormParams, dtype) -> dict:
    return {n: jnp.asarray(getattr(params, n), dtype=bool if n in ("active", "degenerate", "empty") else dtype)
            for n in _FIELDS}


def params_from_normalizer(normalizer: Normalizer, dtype=jnp.float32) -> dict[str, Any]:
    """The parameter pytree of a numpy ``Normalizer`` (floating leaves in ``dtype``)."""
    pt = normalizer.per_timestep_params
    return {
        "global": _tree(normalizer.global_params, dtype),
        "per_timestep": None if pt is None else _tree(pt, dtype),
        "clip_bound": jnp.asarray(normalizer.clip_bound if normalizer.clip else np.inf, dtype=dtype),
    }


def params_from_stats(global_stats: Mapping[str, np.ndarray], per_timestep: Mapping[str, np.ndarray] | None = None,
                      dtype=jnp.float32, **normalizer_kwargs) -> dict[str, Any]:
    """The pytree from STATS blocks; keyword arguments as for ``Normalizer`` (mode, mask, clip, ...)."""
    return params_from_normalizer(Normalizer(global_stats, per_timestep, **normalizer_kwargs), dtype)


def params_from_artifact(artifact, key: str = "action", dataset: str | None = None,
                         per_timestep: bool | None = None, dtype=jnp.float32, **normalizer_kwargs) -> dict[str, Any]:
    """The pytree from an ``Artifact``, as ``Normalizer.from_artifact`` (``per_timestep`` None
    follows the artifact's decision; mode, mask and clip default to its config)."""
    return params_from_normalizer(Normalizer.from_artifact(artifact, key, dataset, per_timestep, **normalizer_kwargs),
                                  dtype)


def _select(params: Mapping[str, Any], x, chunked: bool | None) -> NormParams:
    pt = params["per_timestep"]
    return pick(NormParams(**params["global"]), None if pt is None else NormParams(**pt), x.shape, chunked)


def _dtypes(params, x):
    base = params["global"]["center"].dtype
    out = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else base
    return jnp.promote_types(out, base), out


def _apply(params: Mapping[str, Any], x, chunked: bool | None, inverse: bool):
    x = jnp.asarray(x)
    p = _select(params, x, chunked)
    dtype, out = _dtypes(params, x)
    p = NormParams(p.center.astype(dtype), p.scale.astype(dtype), p.active, p.degenerate, p.empty)
    return affine(x.astype(dtype), p, jnp.asarray(params["clip_bound"], dtype), inverse, _OPS).astype(out)


def normalize(params: Mapping[str, Any], x, chunked: bool | None = None):
    """Normalize ``x`` (shapes as for the numpy ``Normalizer``: ``[..., B, h, D]`` per position when
    the tree has per-timestep statistics, ``[B, D]`` then needs ``chunked``)."""
    return _apply(params, x, chunked, inverse=False)


def unnormalize(params: Mapping[str, Any], y, chunked: bool | None = None):
    """Inverse of ``normalize`` on unclipped values; degenerate dims give the center, empty NaN."""
    return _apply(params, y, chunked, inverse=True)
