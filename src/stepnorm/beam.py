"""stepnorm's public Beam PTransforms, to compose in a Beam pipeline of one's own.

- ``ComputeChunkStats(spec, quantiles, weighting, weights)``: PCollection of episodes -> one dict
  of every dataset's and the mixture's per-timestep statistics, quantiles exact
  (stepnorm.pipelines.ptransforms);
- ``ReadIntoCache(cfg, cache_root)``: ``(cache key, ReadTask)`` pairs -> the values cache, stage 1
  of ``stepnorm stats`` (stepnorm.pipelines.stats_beam);
- ``WriteNormalized(cfg, artifact, plans, staging)``: the shard writer of ``stepnorm normalize``,
  with ``plan_datasets`` before and ``finish_datasets`` after it (stepnorm.pipelines.normalize).

Example::

    import apache_beam as beam
    from stepnorm.beam import ComputeChunkStats
    from stepnorm.stats import AccumulatorSpec

    with beam.Pipeline() as p:
        (p | beam.Create(episodes)            # Episode objects, or (dataset, (action, state))
           | ComputeChunkStats(AccumulatorSpec(horizon=16), quantiles=(0.01, 0.99))
           | beam.Map(lambda s: print(s["combined"]["action"]["per_timestep"]["q99"])))
"""

from stepnorm.pipelines.normalize import WriteNormalized, finish_datasets, plan_datasets, prepare_staging
from stepnorm.pipelines.ptransforms import ComputeChunkStats, chunk_statistics
from stepnorm.pipelines.stats_beam import ReadIntoCache

__all__ = ["ComputeChunkStats", "ReadIntoCache", "WriteNormalized", "chunk_statistics", "finish_datasets",
           "plan_datasets", "prepare_staging"]
