"""The writer as a library: episode -> normalized fields -> ``tf.train.Example``, the TFDS features
and metadata of a written dataset, and the LeRobot -> RLDS layout. Imports no Beam.

``stepnorm normalize`` (stepnorm.pipelines.normalize) plans the shards and runs these in Beam; a
loader of one's own (dlimp, Octo, a torch Dataset) can apply ``EpisodeNormalizer`` directly::

    from stepnorm.artifact import read_artifact
    from stepnorm.config import load_config
    from stepnorm.writers import EpisodeNormalizer

    cfg, artifact = load_config("mix.yaml"), read_artifact("stats/")
    norm = EpisodeNormalizer.build(cfg, artifact, "bridge")
    fields = norm.added_fields(episode)  # {"steps": {"action_chunk": [T, H, D], "action_chunk_valid": [T, H], ...}}
"""

from stepnorm.writers.episode import EpisodeNormalizer, ExampleEncoder
from stepnorm.writers.features import (ACTION_CHUNK, ACTION_CHUNK_VALID, STATE_NORMALIZED, added_features,
                                       extend_features, feature_from_json, shard_name, write_metadata)
from stepnorm.writers.lerobot import deep_merge, lerobot_episodes, lerobot_example, lerobot_features, lerobot_layout

__all__ = ["ACTION_CHUNK", "ACTION_CHUNK_VALID", "STATE_NORMALIZED", "EpisodeNormalizer", "ExampleEncoder",
           "added_features", "deep_merge", "extend_features", "feature_from_json", "lerobot_episodes",
           "lerobot_example", "lerobot_features", "lerobot_layout", "shard_name", "write_metadata"]
