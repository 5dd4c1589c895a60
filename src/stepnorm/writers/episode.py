"""One episode -> its normalized fields and its serialized ``tf.train.Example`` (no Beam).

``EpisodeNormalizer`` adds, per step, the normalized action chunk, its validity and (optionally)
the normalized state, from an artifact and a config: what ``stepnorm normalize`` writes, and what a
user's own loader (dlimp, Octo, a torch Dataset) can apply to episodes it reads itself.
``ExampleEncoder`` turns an episode into the exact bytes ``stepnorm normalize`` writes for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from stepnorm.artifact import Artifact
from stepnorm.chunks import action_chunks
from stepnorm.config import Config, DatasetConfig
from stepnorm.errors import InputDataError
from stepnorm.normalize import Normalizer
from stepnorm.sources.base import Episode
from stepnorm.writers.features import ACTION_CHUNK, ACTION_CHUNK_VALID, STATE_NORMALIZED, feature_from_json
from stepnorm.writers.lerobot import deep_merge, lerobot_example

__all__ = ["EpisodeNormalizer", "ExampleEncoder"]


@dataclass
class EpisodeNormalizer:
    """Normalizes one dataset's episodes: the action chunks and (optionally) the state."""

    horizon: int
    delta_mask: Sequence[bool] | None
    action: Normalizer
    state: Normalizer | None

    @classmethod
    def build(cls, cfg: Config, artifact: Artifact, dataset: str) -> "EpisodeNormalizer":
        """From the config's normalization specs and the combined (or the dataset's) statistics."""
        source = None if cfg.normalize_with == "combined" else dataset
        spec = cfg.normalization["action"]
        # The artifact's decision (checked fresh for cfg, so it is cfg's) picks the statistics block.
        action = Normalizer.from_artifact(artifact, "action", source, mode=spec.mode, mask=spec.mask, clip=spec.clip,
                                          allow_empty_positions=True)
        state = None
        if "state" in cfg.normalization:
            spec = cfg.normalization["state"]
            state = Normalizer(artifact.stats("state", "global", source), None, mode=spec.mode, mask=spec.mask,
                               clip=spec.clip)
        return cls(cfg.horizon, cfg.delta_mask, action, state)

    def added_fields(self, episode: Episode) -> dict:
        """The step fields the writer adds, nested as in the features: ``{"steps": {...}}``."""
        try:
            chunk, valid = action_chunks(episode.action, episode.state, self.horizon, self.delta_mask)
            # [T, H, D]: per position under a per-timestep decision, else the decision's [D] vector.
            steps = {ACTION_CHUNK: self.action.normalize(chunk).astype(np.float32),
                     ACTION_CHUNK_VALID: valid}
            if self.state is not None:
                if episode.state is None:
                    raise ValueError("normalization.state is configured but the dataset has no state_key")
                normalized = self.state.normalize(np.asarray(episode.state, np.float64), chunked=False)
                steps["observation"] = {STATE_NORMALIZED: normalized.astype(np.float32)}
        except ValueError as exc:  # dims that disagree with the statistics
            raise InputDataError(episode.source, f"cannot normalize episode: {exc}") from None
        return {"steps": steps}


class ExampleEncoder:
    """Serializes episodes as the written dataset's ``tf.train.Example`` records.

    RLDS: the source record (``episode.extra["serialized"]``, read with ``keep_serialized=True``)
    with the added fields merged in, so images and every original feature keep their bytes.
    LeRobot (``lerobot_layout`` given): the whole RLDS example, built from the raw episode.
    Map keys are serialized sorted: the same episode always gives the same bytes.
    """

    def __init__(self, ds: DatasetConfig, normalizer: EpisodeNormalizer, features_json: dict, added_json: dict,
                 lerobot_layout: dict | None = None):
        from tensorflow_datasets.core import example_serializer

        self.ds, self.normalizer = ds, normalizer
        self.layout = None if lerobot_layout is None else {k: tuple(v) for k, v in lerobot_layout.items()}
        # LeRobot examples are encoded whole; RLDS examples only get the added fields encoded.
        self.features = feature_from_json(features_json if self.layout is not None else added_json)
        self.serializer = example_serializer.ExampleSerializer(self.features.get_serialized_info())

    def encode(self, episode: Episode, raw: Episode | None = None) -> bytes:
        """The record of ``episode`` (transforms applied); LeRobot needs ``raw`` too (every column)."""
        added = self.normalizer.added_fields(episode)
        if self.layout is None:
            # TFDS's own copy of the Example proto, the class its serializer builds.
            from tensorflow_datasets.proto import tf_example_pb2

            example = tf_example_pb2.Example.FromString(episode.extra["serialized"])
            example.MergeFrom(self.serializer.get_tf_example(self.features.encode_example(added)))
            return example.SerializeToString(deterministic=True)
        nested = deep_merge(lerobot_example(self.ds, self.layout, raw), added)
        return self.serializer.get_tf_example(self.features.encode_example(nested)).SerializeToString(deterministic=True)
