"""robomimic: per-position normalization of action chunks, beside robomimic's own ``[1, D]`` one.

robomimic (v0.5) keeps one offset/scale row per action key and its ``normalize_dict`` applies row 0
to every action (an ``[H, D]`` array is reduced to position 0; ``unnormalize_dict`` asserts on
``[B, H, D]``). So ``stepnorm export --format robomimic`` writes only ``[1, D]`` from the
artifact's ``[D]`` block. A policy that predicts action chunks (e.g. a diffusion policy with an
action sequence of ``H`` steps) and was trained on per-timestep-normalized chunks (the
``steps/action_chunk`` field of ``stepnorm normalize``'s output, with robomimic's own action
normalization off) unnormalizes its ``[H, D]`` (or ``[B, H, D]``) prediction with
``ChunkNormalizer.unnormalize`` before executing it: every executed step gets the statistics of
its own chunk position, whatever the number of steps executed per prediction.

The numbers are the artifact's decision and stepnorm's one normalizer (``stepnorm.normalize``):
the same as ``stepnorm normalize`` and the numpy/torch/jax adapters.
"""

from __future__ import annotations

import numpy as np

from stepnorm.normalize import Normalizer


class ChunkNormalizer:
    """Normalize / unnormalize action chunks ``[h, D]`` or ``[B, h, D]`` (``h <= H``) per position.

    Build with ``from_artifact``; ``normalize``/``unnormalize`` accept numpy arrays or torch
    tensors (returned as numpy float arrays; convert with ``torch.from_numpy`` if needed).
    """

    def __init__(self, normalizer: Normalizer):
        self.normalizer = normalizer

    @classmethod
    def from_artifact(cls, artifact, dataset: str | None = None, **kwargs) -> "ChunkNormalizer":
        """From a stats artifact: its decision, mode, mask and clip (overridable as for ``Normalizer``)."""
        return cls(Normalizer.from_artifact(artifact, "action", dataset, **kwargs))

    @property
    def horizon(self) -> int | None:
        """``H`` of the per-timestep statistics (None when the decision is off: one ``[D]`` vector)."""
        return self.normalizer.horizon

    def _chunk(self, x) -> np.ndarray:
        x = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
        if x.ndim not in (2, 3):
            raise ValueError(f"expected a chunk [h, D] or a batch of chunks [B, h, D], got shape {list(x.shape)}")
        return x

    def normalize(self, chunk) -> np.ndarray:
        """Training targets: a chunk of raw actions, normalized per position."""
        x = self._chunk(chunk)
        return self.normalizer.normalize(x, chunked=self.horizon is not None)

    def unnormalize(self, chunk) -> np.ndarray:
        """A predicted chunk back to robot units, each position with its own statistics."""
        y = self._chunk(chunk)
        return self.normalizer.unnormalize(y, chunked=self.horizon is not None)


def unnormalize_chunk(chunk, artifact, dataset: str | None = None, **kwargs) -> np.ndarray:
    """One-off ``ChunkNormalizer.from_artifact(artifact, ...).unnormalize(chunk)``."""
    return ChunkNormalizer.from_artifact(artifact, dataset, **kwargs).unnormalize(chunk)
