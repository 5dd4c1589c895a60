"""The episode type every reader yields."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Episode:
    """One episode as numpy arrays.

    Attributes:
        dataset: dataset name from the config.
        source: where the episode came from (file path, plus position), for error messages.
        index: ordinal of the episode within its dataset split, deterministic across runs.
        action: ``[T, D]`` actions, float32 or float64 as stored.
        state: ``[T, Ds]`` proprio state, or None when the dataset has no state key configured.
        images: per image key, the ``T`` encoded frames (bytes) when the reader was asked for them;
            readers never decode images.
        extra: any other fields a reader chose to keep (episode metadata, raw example bytes).
    """

    dataset: str
    source: str
    index: int
    action: np.ndarray
    state: np.ndarray | None = None
    images: dict[str, list[bytes]] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def length(self) -> int:
        """Number of steps ``T``."""
        return int(self.action.shape[0])
