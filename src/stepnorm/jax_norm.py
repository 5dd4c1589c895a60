"""jax ``normalize`` / ``unnormalize``: pure functions of a parameter pytree, with the numpy
``Normalizer``'s semantics (per-timestep rows for chunks, mask pass-through, degenerate dims to 0,
clipping, no reuse of the last row for longer chunks).

The pytree is ``{"global": P, "per_timestep": P or None, "clip_bound": scalar}`` with
``P = {"center", "scale", "active", "degenerate", "empty"}`` (``[D]`` or ``[H, D]``); the clip
setting lives in the tree (``inf`` when off), so the functions jit without static arguments::

    params = params_from_artifact(read_artifact("stats_dir"), mode="q01_q99")
    y = jax.jit(normalize)(params, actions)          # actions [B, H, D]

``chunked`` (None: per-timestep when the tree has it) selects the statistics from the tree's
structure and the input's shape, both static under jit; pass it as a static argument if you set it.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from stepnorm.normalize import NormParams, Normalizer

_FIELDS = ("center", "scale", "active", "degenerate", "empty")


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


def params_from_artifact(artifact, key: str = "action", dataset: str | None = None, per_timestep: bool = True,
                         dtype=jnp.float32, **normalizer_kwargs) -> dict[str, Any]:
    """The pytree from an ``Artifact``, as ``Normalizer.from_artifact``."""
    return params_from_normalizer(Normalizer.from_artifact(artifact, key, dataset, per_timestep, **normalizer_kwargs),
                                  dtype)


def _select(params: Mapping[str, Any], x, chunked: bool | None) -> dict:
    dim = params["global"]["center"].shape[-1]
    if x.shape[-1:] != (dim,):
        raise ValueError(f"last axis of x must be {dim} dims, got shape {list(x.shape)}")
    pt = params["per_timestep"]
    if chunked is None:
        chunked = pt is not None
    if not chunked:
        return params["global"]
    if pt is None:
        raise ValueError("chunked input needs per-timestep statistics; these parameters have only global ones")
    if x.ndim < 2:
        raise ValueError(f"chunked input must be [..., h, D], got shape {list(x.shape)}")
    h, horizon = x.shape[-2], pt["center"].shape[0]
    if h > horizon:
        raise ValueError(f"chunk horizon {h} is longer than the statistics' horizon {horizon}")
    return {n: v[:h] for n, v in pt.items()}


def _dtypes(params, x):
    base = params["global"]["center"].dtype
    out = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else base
    return jnp.promote_types(out, base), out


def normalize(params: Mapping[str, Any], x, chunked: bool | None = None):
    """Normalize ``x`` (``[..., h, D]`` per-timestep, or ``[..., D]`` global with ``chunked=False``)."""
    x = jnp.asarray(x)
    p = _select(params, x, chunked)
    dtype, out = _dtypes(params, x)
    xf = x.astype(dtype)
    bound = jnp.asarray(params["clip_bound"], dtype)
    y = jnp.clip((xf - p["center"].astype(dtype)) / p["scale"].astype(dtype), -bound, bound)
    y = jnp.where(p["active"], y, xf)
    y = jnp.where(p["degenerate"] | p["empty"], jnp.zeros((), dtype), y)
    return y.astype(out)


def unnormalize(params: Mapping[str, Any], y, chunked: bool | None = None):
    """Inverse of ``normalize`` on unclipped values; degenerate dims give the center, empty NaN."""
    y = jnp.asarray(y)
    p = _select(params, y, chunked)
    dtype, out = _dtypes(params, y)
    yf = y.astype(dtype)
    center = p["center"].astype(dtype)
    x = jnp.where(p["active"], yf * p["scale"].astype(dtype) + center, yf)
    x = jnp.where(p["degenerate"], center, x)
    x = jnp.where(p["empty"], jnp.full((), jnp.nan, dtype), x)
    return x.astype(out)
