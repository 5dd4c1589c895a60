"""The numeric core: mergeable per-timestep chunk statistics with exact quantiles (pure numpy)."""

from stepnorm.stats.accumulator import AccumulatorSpec, ChunkStatsAccumulator
from stepnorm.stats.combine import WEIGHTINGS, CellStats, FinalStats, combine, quantile_key
from stepnorm.stats.moments import Moments
from stepnorm.stats.exact import DEFAULT_SAMPLE_K as DEFAULT_SKETCH_K

__all__ = [
    "AccumulatorSpec",
    "CellStats",
    "ChunkStatsAccumulator",
    "DEFAULT_SKETCH_K",
    "FinalStats",
    "Moments",
    "WEIGHTINGS",
    "combine",
    "quantile_key",
]
